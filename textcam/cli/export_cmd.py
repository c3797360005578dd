"""``textcam export``: a model spec in, a verified bundle directory out."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from textcam.cli.safe_text import safe_text
from textcam.errors import TextcamError

METHOD_NAMES = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "cam")
"""``textcam.export.cam_methods.METHODS``' names, spelled out so that a bad --method is a usage error
before torch is imported (a test keeps the two in step)."""


def _input_size(_ctx, _param, value: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not all(p > 0 for p in parts):
        raise click.BadParameter("expected H or HxW, e.g. 224 or 224x288")
    return (parts[0], parts[-1])


def _floats(name: str, value: str | None):
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != 3:
        raise TextcamError(f"{name} {value!r}: expected three comma-separated numbers, e.g. 0.485,0.456,0.406")
    if not all(math.isfinite(n) for n in numbers):
        raise TextcamError(f"{name} {value!r}: expected three finite numbers, e.g. 0.485,0.456,0.406")
    return numbers


def _class_names(path: str | None) -> list[str] | None:
    if path is None:
        return None
    if not Path(path).exists():
        raise TextcamError(f"--class-names {path}: file not found; expected one class name per line")
    from textcam.semantics_store.vocabulary import read_text_file

    text = read_text_file(Path(path), "--class-names")  # a regular file of bounded size, UTF-8
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise TextcamError(f"--class-names {path}: the file is empty; expected one class name per line")
    return names


@click.command("export")
@click.option("--model", "model_spec", required=True, metavar="SPEC",
              help="torchvision:NAME[:WEIGHTS], timm:NAME, or package.module:factory.")
@click.option("--layer", default=None, metavar="NAME",
              help="Dotted module name whose output is explained (default: the last spatial layer).")
@click.option("--method", type=click.Choice(METHOD_NAMES), default="gradcam", show_default=True,
              help="gradcam, gradcam++, xgradcam, hirescam, layercam, or cam (global-pool + linear heads).")
@click.option("--input-size", default="224", callback=_input_size, show_default=True, metavar="H[xW]",
              help="Input height and width the graph is built for.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, metavar="STATE_DICT.pt",
              help="A state dict to load into the model.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, metavar="K",
              help="Build the architecture with K outputs (must match --weights).")
@click.option("--class-names", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="One class name per line, in logit order.")
@click.option("--mean", default=None, metavar="R,G,B", help="Normalization mean (default: ImageNet).")
@click.option("--std", default=None, metavar="R,G,B", help="Normalization std (default: ImageNet).")
@click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc", "tokens"]), default="auto", show_default=True,
              help="How the layer's output maps to a grid; auto knows CNNs, ViTs and Swin.")
@click.option("--with-activations", is_flag=True, help="Also output the layer's activation maps.")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False), metavar="BUNDLE",
              help="Bundle directory to write (e.g. resnet50.textcam).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at the output path.")
def export_command(model_spec, layer, method, input_size, weights, num_classes, class_names, mean, std,
                   layout, with_activations, out, force):
    """Export a model into a bundle: ONE ONNX graph computing logits, gradients and the heatmap.

    The graph is run in ONNX Runtime on fresh random inputs and compared with eager PyTorch
    before the bundle is written; if they disagree, nothing is written. An existing bundle at
    the output path is replaced only with --force.

    --model package.module:factory imports the module from the Python path: run textcam from the
    folder that holds it, or set PYTHONPATH.

    \b
    Examples:
      textcam export --model torchvision:resnet50 --layer layer4 -o resnet50.textcam
      textcam export --model torchvision:vit_b_16 --method gradcam++ -o vit.textcam
      textcam export --model mypkg.models:build --weights ckpt.pt --num-classes 10 -o mine.textcam
    """
    try:
        from textcam.export import IMAGENET_MEAN, IMAGENET_STD, export_bundle, load_model
    except ImportError as exc:
        raise TextcamError(f"textcam export needs the export extra: pip install 'textcam[export]' ({exc})") from None
    from textcam.export.cam_methods import get_method
    from textcam.runtime.bundle_files import check_output_dir

    get_method(method)
    check_output_dir(Path(out), overwrite=force)  # before the model loads
    mean_values = _floats("--mean", mean) or IMAGENET_MEAN
    std_values = _floats("--std", std) or IMAGENET_STD
    names = _class_names(class_names)
    started = time.perf_counter()
    click.echo(safe_text(f"loading {model_spec}"), err=True)
    loaded = load_model(model_spec, num_classes=num_classes, weights=weights)
    source = {"source": loaded.spec, "weights": loaded.weights, "weights_sha256": loaded.weights_sha256}
    result = export_bundle(
        loaded.module, layer, out, method=method, input_size=input_size,
        class_names=names or loaded.class_names, mean=mean_values, std=std_values,
        layout=layout, with_activations=with_activations, source=source, force=force,
        progress=lambda message: click.echo(safe_text(f"  {message}"), err=True),
    )
    manifest = result.manifest
    check = result.verification
    trt = manifest.get("tensorrt") or {}
    click.echo(safe_text(
        f"wrote {result.path} in {time.perf_counter() - started:.1f}s: layer {result.layer}, "
        f"method {result.method}, {manifest['model']['size_bytes'] / 1e6:.1f} MB; verified on batches "
        f"{check.get('batch_sizes')} against float64: "
        f"logits rel err {check.get('logits_max_rel_err', float('nan')):.1e}, "
        f"cam abs err {check.get('cam_max_abs_err', float('nan')):.1e}{_eager_note(check)}; TensorRT-compatible: "
        f"{'yes' if trt.get('compatible') else 'no'}"
    ))
    for problem in trt.get("problems", []):
        click.echo(safe_text(f"  TensorRT: {problem}"), err=True)
    for warning in check.get("warnings", []):
        click.echo(safe_text(f"  warning: {warning}"), err=True)


def _eager_note(check: dict) -> str:
    """Eager float32's own error on the same inputs: the yardstick the graph's is held to."""
    eager = check.get("eager_float32")
    if not isinstance(eager, dict) or "cam_max_abs_err" not in eager:
        return ""
    return f" (eager float32: {eager.get('logits_max_rel_err', float('nan')):.1e}, {eager['cam_max_abs_err']:.1e})"
