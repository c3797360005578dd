"""``textcam demo``: the main job on the built-in default, offline, without torch, in seconds.

The default bundle (``textcam.shapes_world.artifacts``) is a small CNN trained to name the colour
of the largest object in a synthetic scene, with channel semantics from a tiny CLIP trained on the
same world; both were built by ``python -m textcam.shapes_world.build`` and ship with the package.
The demo draws fresh held-out scenes, explains each (label, score, heatmap, phrases, channel
groups), writes overlays and one self-contained HTML report, and says where.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click
from PIL import Image

from textcam.cli.bundle_arg import resolve_bundle
from textcam.cli.safe_text import safe_text
from textcam.errors import TextcamError

DISPLAY_SCALE = 4
"""Scenes are drawn at the model's 64x64 and saved 4x larger (nearest neighbour) for viewing."""


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="textcam-demo", show_default=True,
              help="Directory for the images, overlays and report.html.")
@click.option("--count", type=click.IntRange(1, 200), default=6, show_default=True, help="Scenes to explain.")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Draw a different set of scenes (default: the demo split).")
@click.option("--bundle", type=click.Path(file_okay=False), default=None,
              help="Explain with this bundle instead of the built-in default (64x64 colour classifier); "
                   "'default' names the built-in one (a directory named default: ./default).")
def demo_command(out, count, seed, bundle):
    """Explain generated scenes with the built-in default bundle: where the model looked and what it saw.

    \b
    No downloads, no GPU, no torch. Prints one line per scene:
      IMAGE  LABEL  SCORE  TOP PHRASES (semicolon-separated)
    and writes OUT/overlays/*.cam.png, OUT/groups/*.png and OUT/report.html.

    \b
    Examples:
      textcam demo
      textcam demo --count 20 --seed 7 --out /tmp/demo
    """
    from textcam.runtime import Explainer
    from textcam.runtime.html_report import write_html_report
    from textcam.shapes_world import ShapesWorld, artifacts, splits

    out_dir = Path(out)
    bundle_path = resolve_bundle(bundle) if bundle else artifacts.require(artifacts.DEFAULT_BUNDLE)
    explainer = Explainer(bundle_path)
    try:  # channel groups where the bundle allows them (semantics, a channel-weight method, activations)
        explainer.check_groups()
        groups = True
    except TextcamError:
        groups = False
    spec = explainer.bundle.input
    world = ShapesWorld(min(spec.height, spec.width), seed=splits.DEMO if seed is None else seed)
    try:
        for folder in ("images", "overlays", "groups"):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TextcamError(f"--out {out_dir}: cannot create it ({exc.strerror}); choose a writable directory") \
            from None
    items = _explain_scenes(explainer, world, out_dir, count, groups)
    report_path = out_dir / "report.html"
    with _writing(report_path):
        report = write_html_report(
            report_path, items, title="textcam demo: the built-in shapes-world default",
            intro=f"bundle {bundle_path}" + ("; model label = colour of the largest object" if bundle is None else "")
                  + "; phrases: what the channels behind the decision responded to, in CLIP's words; groups: the "
                  "part of the map each phrase explains.",
        )
    click.echo(safe_text(f"overlays: {out_dir / 'overlays'}"), err=True)
    click.echo(safe_text(f"report: {report}"), err=True)


@contextmanager
def _writing(path: Path):
    """A failed write under --out (full disk, permissions) as one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise TextcamError(f"--out {path}: cannot write it ({exc.strerror or exc}); choose a writable directory "
                           "with free space") from None


def _explain_scenes(explainer, world, out_dir: Path, count: int, groups: bool) -> list:
    """Draw, save and explain ``count`` scenes; print one line per scene; return the report items."""
    from textcam.runtime.html_report import ReportItem

    items = []
    for index in range(count):
        scene = world.scene(index)
        name = f"{index:03d}_{scene.largest.color}"
        image = Image.fromarray(scene.image)
        image = image.resize((image.width * DISPLAY_SCALE, image.height * DISPLAY_SCALE), Image.Resampling.NEAREST)
        path = out_dir / "images" / f"{name}.png"
        with _writing(path):
            image.save(path)
        result = explainer.explain(image, groups=groups)  # the image in hand, not read back from disk
        overlay_path = out_dir / "overlays" / f"{name}.cam.png"
        with _writing(overlay_path):
            result.overlay(image).save(overlay_path)
        for rank, group in enumerate(result.groups):
            group_path = out_dir / "groups" / f"{name}.{rank}.png"
            with _writing(group_path):
                group.overlay(image).save(group_path)
        phrases = "; ".join(c.phrase for c in result.concepts[:3]) or "(no semantics)"
        fields = (path, result.label, f"{result.score:.3f}", phrases)
        click.echo("\t".join(safe_text(f) for f in fields))  # names and phrases are untrusted text
        items.append(ReportItem(name, image, result, note=f"scene: {scene.caption()}"))
    return items
