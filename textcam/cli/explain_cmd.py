"""``textcam explain``: one line per image (file, label, score), JSON lines, overlays."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from textcam.cli.backend_options import FiniteFloatRange, backend_option, backend_settings, precision_option
from textcam.cli.bundle_arg import BUNDLE_HELP, resolve_bundle
from textcam.cli.safe_text import json_text, safe_name, safe_text
from textcam.errors import TextcamError

PROGRESS_THRESHOLD = 8  # more images than this get a progress bar


@click.command("explain", epilog=BUNDLE_HELP)
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@click.option("--class-index", type=click.IntRange(min=0), default=None, metavar="N",
              help="Explain class N instead of the predicted class.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per graph call.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image (JSON Lines).")
@click.option("--out", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write heatmap overlays (PNG) into DIR.")
@click.option("--alpha", type=FiniteFloatRange(0, 1), default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--groups", is_flag=True,
              help="Split each map by phrase and write one overlay per group into --out (needs semantics and a "
                   "bundle exported with --with-activations).")
@backend_option
@precision_option
def explain_command(bundle, images, class_index, batch_size, as_json, out, alpha, threads, groups, backend,
                    precision):
    """Explain images with a bundle: predicted label, score and heatmap for each.

    With channel semantics in the bundle (`textcam semantics`), each line also names the top
    three phrases for the evidence.

    Directories are expanded to the images they contain. A file that cannot be read is reported
    on stderr and the others are still explained; the exit status is 1 if any failed. With --json,
    a failed image is a {"source": ..., "error": ...} record in its place (input order).

    \b
    Examples:
      textcam explain resnet50.textcam cat.jpg dog.png
      textcam explain resnet50.textcam photos/ --out overlays/ --json > results.jsonl
      textcam explain resnet50.textcam cat.jpg --groups --out overlays/
      textcam explain resnet50.textcam photos/ --backend tensorrt --precision fp16
    """
    from tqdm import tqdm

    from textcam.runtime import Explainer
    from textcam.runtime.images import list_images

    if groups and not out:
        raise TextcamError("--groups writes one overlay per group: give --out DIR")
    explainer = Explainer(resolve_bundle(bundle), batch_size=batch_size,
                          **backend_settings(backend, precision, threads))
    if class_index is not None:
        explainer.check_class_index(class_index, 1)  # range check before any work
    if groups:
        explainer.check_groups()
    paths = list_images(list(images))
    out_dir = Path(out) if out else None
    if out_dir:
        if out_dir.exists() and not out_dir.is_dir():
            raise TextcamError(f"--out {out_dir}: exists and is not a directory")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TextcamError(f"--out {out_dir}: cannot create it ({exc.strerror or exc}); choose a writable "
                               "directory") from None
    used_names: set[str] = set()
    failures = 0
    # results come back batched (a file that cannot be read is reported at once, the batch it would
    # have joined later): lines are printed in input order as soon as every earlier one is known
    slots: dict[Path, list[int]] = {}
    for index, path in enumerate(paths):
        slots.setdefault(Path(path), []).append(index)
    ready: dict[int, str | None] = {}  # None: failed, reported on stderr only (text mode)
    printed = 0
    progress = tqdm(total=len(paths), unit="img", file=sys.stderr, disable=len(paths) <= PROGRESS_THRESHOLD)
    # with --out, each file's decoded image comes back with its result for the overlay (decoded once)
    for path, result, *kept in explainer.explain_files(paths, class_index, groups=groups,
                                                        with_images=out_dir is not None):
        progress.update(1)
        index = slots[Path(path)].pop(0)
        if isinstance(result, TextcamError):
            failures += 1
            progress.write(safe_text(f"error: {result}"), file=sys.stderr)
            ready[index] = json_text({"source": str(path), "error": str(result)})[0] if as_json else None
        else:
            overlay_path, group_paths = (_write_overlays(out_dir, path, result, kept.pop(), alpha, used_names)
                                         if out_dir else (None, []))
            if as_json:
                record = result.to_dict()
                record["overlay"] = str(overlay_path) if overlay_path else None
                if groups:
                    record["group_overlays"] = group_paths
                ready[index], ok = json_text(record)
                if not ok:
                    failures += 1
                    progress.write(safe_text(f"error: {path}: the result holds a non-finite number"),
                                   file=sys.stderr)
            else:
                concepts = ", ".join(c.phrase for c in result.concepts[:3])
                fields = [str(path), result.label, f"{result.score:.4f}", *([concepts] if concepts else [])]
                ready[index] = "\t".join(safe_text(f) for f in fields)  # names and phrases are untrusted text
        while printed in ready:
            line = ready.pop(printed)
            if line is not None:
                progress.write(line, file=sys.stdout)
            printed += 1
    progress.close()
    if out_dir:
        click.echo(safe_text(f"overlays written to {out_dir}"), err=True)
    if failures:
        click.echo(f"{failures} of {len(paths)} image(s) could not be explained", err=True)
        sys.exit(1)


def _write_overlays(out_dir: Path, path: Path, result, original, alpha: float, used_names: set[str]):
    """Write the heatmap overlay (and one per group) of ``path`` over ``original`` (its decoded image);
    return (overlay path, group paths)."""
    overlay_path = out_dir / _unique_name(path, used_names)
    group_paths = []
    target = overlay_path
    try:
        result.overlay(original, alpha=alpha).save(overlay_path)
        stem = overlay_path.name.removesuffix(".cam.png")
        for number, group in enumerate(result.groups, 1):
            target = out_dir / f"{stem}.group{number}-{_slug(group.phrase)}.png"
            group.overlay(original, alpha=alpha).save(target)
            group_paths.append(str(target))
    except OSError as exc:
        raise TextcamError(f"--out {target}: cannot write it ({exc.strerror or exc}); check the disk space and "
                           "permissions of --out") from None
    return overlay_path, group_paths


def _slug(phrase: str, limit: int = 40) -> str:
    """A phrase as a safe file-name part: letters and digits, the rest as single dashes."""
    slug = "".join(c if c.isalnum() else "-" for c in phrase.lower())
    return "-".join(part for part in slug.split("-") if part)[:limit] or "group"


def _unique_name(path: Path, used: set[str]) -> str:
    """``STEM.cam.png``, unique among ``used``; control characters in the stem become '_'."""
    stem = safe_name(path.stem)
    name = f"{stem}.cam.png"
    counter = 2
    while name in used:
        name = f"{stem}-{counter}.cam.png"
        counter += 1
    used.add(name)
    return name
