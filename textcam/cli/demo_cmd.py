"""``textcam demo``: the whole flow on a built-in default, offline, in under a minute.

Provisional default until the shapes-world bundle ships: a randomly initialized torchvision
ResNet-18 is exported (so this needs the ``[export]`` extra), then a few generated images are
explained with the torch-free runtime and their overlays written.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from textcam.errors import TextcamError

DEMO_CLASSES = ["circle", "square", "triangle", "bar", "ring"]


def demo_images(count: int, size: int = 160, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Simple generated scenes: one coloured shape on a noisy background."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        background = rng.integers(30, 120, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        color = tuple(int(c) for c in rng.integers(120, 256, 3))
        x, y = (int(v) for v in rng.integers(20, size - 70, 2))
        side = int(rng.integers(35, 60))
        shape = DEMO_CLASSES[index % len(DEMO_CLASSES)]
        if shape == "circle":
            draw.ellipse((x, y, x + side, y + side), fill=color)
        elif shape == "square":
            draw.rectangle((x, y, x + side, y + side), fill=color)
        elif shape == "triangle":
            draw.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)], fill=color)
        elif shape == "bar":
            draw.rectangle((x, y + side // 3, x + side, y + 2 * side // 3), fill=color)
        else:
            draw.ellipse((x, y, x + side, y + side), outline=color, width=8)
        images.append((f"{index:02d}_{shape}", image))
    return images


def _demo_bundle(out: Path) -> Path:
    bundle = out / "resnet18-demo.textcam"
    if (bundle / "manifest.json").is_file():
        return bundle
    try:
        import torch
        import torchvision

        from textcam.export import export_bundle
    except ImportError:
        raise TextcamError("the provisional demo exports a model and needs: pip install 'textcam[export]'") from None
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(DEMO_CLASSES))
    click.echo("exporting a demo model (random-weight ResNet-18, layer4, Grad-CAM)...", err=True)
    return export_bundle(model, "layer4", bundle, input_size=(128, 128), class_names=DEMO_CLASSES,
                         progress=lambda m: click.echo(f"  {m}", err=True))


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="textcam-demo", show_default=True,
              help="Directory for the demo bundle, images and overlays.")
@click.option("--count", type=click.IntRange(1, 50), default=5, show_default=True, help="Images to explain.")
def demo_command(out, count):
    """Run the main job on the built-in default: export, then explain generated images.

    No downloads and no GPU. The model's weights are random until the trained default ships,
    so its labels are arbitrary; the heatmaps, scores and files are real outputs of the pipeline.
    """
    from textcam.runtime import Explainer

    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise TextcamError(f"--out {out_dir}: exists and is not a directory")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(exist_ok=True)
    bundle = _demo_bundle(out_dir)
    explainer = Explainer(bundle)
    for name, image in demo_images(count):
        path = out_dir / "images" / f"{name}.png"
        image.save(path)
        result = explainer.explain(path)
        overlay_path = out_dir / "overlays" / f"{name}.cam.png"
        result.overlay(image).save(overlay_path)
        x, y = result.peak()
        click.echo(f"{path}\t{result.label}\t{result.score:.3f}\tpeak at ({x}, {y})")
    click.echo(f"bundle: {bundle}\noverlays: {out_dir / 'overlays'}", err=True)
