"""``textcam info``: the manifest in human form."""

from __future__ import annotations

import sys

import click

from textcam.cli.bundle_arg import BUNDLE_HELP, resolve_bundle
from textcam.cli.safe_text import json_text, safe_text


@click.command("info", epilog=BUNDLE_HELP)
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
def info_command(bundle, as_json):
    """Describe a bundle: model, layer, method, classes, and what it contains.

    \b
    Examples:
      textcam info default
      textcam info resnet50.textcam --json
    """
    from textcam.runtime.bundle import Bundle

    opened = Bundle.open(resolve_bundle(bundle))
    manifest = opened.manifest
    if as_json:
        text, ok = json_text(manifest, indent=2)
        click.echo(text)
        if not ok:
            click.echo(f"error: {safe_text(opened.path)}: the manifest holds a non-finite number", err=True)
            sys.exit(1)
        return
    info = opened.info
    model, spec, layer = info.model, info.input, info.target_layer
    classes = opened.classes
    shown = ", ".join(classes[:8]) + (f", ... ({len(classes)} in all)" if len(classes) > 8 else "")
    outputs = ", ".join(o.name for o in info.graph.outputs)
    errors = info.verification.errors if info.verification else {}
    trt = info.tensorrt
    weights = model.details.get("weights")
    lines = [
        f"bundle      {opened.path}",
        f"model       {model.source}" + (f" (weights {weights})" if weights else ""),
        f"graph       {model.graph.file}, {model.graph.size_bytes / 1e6:.1f} MB, sha256 {model.graph.sha256[:12]}..."
        + (f" (weights in {model.external_data.file}, {model.external_data.size_bytes / 1e6:.1f} MB)"
           if model.external_data else ""),
        f"input       {spec.height}x{spec.width} RGB, resize {spec.resize}, "
        f"mean {list(spec.mean)}, std {list(spec.std)}"
        + (f", preprocessing recorded (v{spec.preprocessing.get('version', '?')})" if spec.preprocessing else ""),
        f"layer       {layer.name} ({layer.kind}, {layer.channels} channels, grid {layer.grid[0]}x{layer.grid[1]})",
        f"method      {info.method}",
        f"classes     {shown}",
        f"outputs     {outputs}",
        f"verified    logits rel err {_number(errors.get('logits_max_rel_err'))}, "
        f"cam abs err {_number(errors.get('cam_max_abs_err'))} "
        f"(batches {list(info.verification.batch_sizes) if info.verification else '?'}"
        + (f"; eager float32: {_number(errors['eager_float32'].get('logits_max_rel_err'))}, "
           f"{_number(errors['eager_float32'].get('cam_max_abs_err'))}"
           if isinstance(errors.get("eager_float32"), dict) else "") + ")",
        "tensorrt    " + ("compatible" if trt.get("compatible") else "no: " + "; ".join(map(str, trt.get("problems") or
                                                                                          ["not checked"]))),
        f"semantics   {_semantics(info)}",
        f"selftest    {_selftest(info)}",
        f"engines     {_engines(manifest)}",
        f"producer    textcam {info.producer.get('textcam', '?')}, torch {info.producer.get('torch', '?')}",
        f"runtime     {_runtime()}",
    ]
    click.echo("\n".join(safe_text(line) for line in lines))  # names in the manifest are untrusted text


def _runtime() -> str:
    """Which path `textcam explain` takes here (textcam.runtime.native)."""
    from textcam.runtime.native import native_module

    module = native_module()
    if module is not None:
        return f"native core libtextcam {module.__version__} (TEXTCAM_NATIVE=0: the numpy path)"
    if native_module(force=True) is not None:
        return "numpy path (the native core is installed but TEXTCAM_NATIVE=0 switched it off)"
    return "numpy path (pip install ./native for the C++ core)"


def _number(value) -> str:
    return f"{value:.1e}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _semantics(info) -> str:
    entry = info.semantics
    if not entry:
        return "none (heatmaps only; textcam semantics adds phrases)"
    details = [f"{entry.vocabulary_size} phrases", f"CLIP {entry.clip_model}", f"LDA {entry.lda}", f"M={entry.m}"]
    fused = f" + fused ranking graph {info.fused_graph.graph.file}" if info.fused_graph else ""
    return f"{entry.store.file}{fused} ({', '.join(details)})"


def _selftest(info) -> str:
    if not info.selftest:
        return "none (re-export to add one; `textcam selftest` needs it)"
    kind = "outputs and phrases" if info.selftest.concepts else "outputs"
    return f"{info.selftest.data.file} ({info.selftest.images} images, expected {kind}; run `textcam selftest`)"


def _engines(manifest: dict) -> str:
    """'none', or one 'precision smXX TensorRT v batch a-b-c (file)' per engine."""
    from textcam.engines.entries import engine_entries
    from textcam.errors import TextcamError

    try:
        entries = engine_entries(manifest)
    except TextcamError as exc:
        return f"unreadable ({exc})"
    if not entries:
        return "none (textcam build-engine adds TensorRT engines)"
    return "; ".join(f"{e.describe()} ({e.file})" for e in entries)
