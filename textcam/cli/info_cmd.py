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
    model, spec, layer = manifest["model"], opened.input, manifest["target_layer"]
    classes = opened.classes
    shown = ", ".join(classes[:8]) + (f", ... ({len(classes)} in all)" if len(classes) > 8 else "")
    outputs = ", ".join(o["name"] for o in manifest["graph"]["outputs"])
    check = manifest.get("verification") or {}
    trt = manifest.get("tensorrt") or {}
    lines = [
        f"bundle      {opened.path}",
        f"model       {model.get('source')}" + (f" (weights {model['weights']})" if model.get("weights") else ""),
        f"graph       {model['file']}, {model['size_bytes'] / 1e6:.1f} MB, sha256 {model['sha256'][:12]}...",
        f"input       {spec.height}x{spec.width} RGB, resize {spec.resize}, "
        f"mean {list(spec.mean)}, std {list(spec.std)}",
        f"layer       {layer['name']} ({layer['kind']}, {layer['channels']} channels, grid "
        f"{layer['grid'][0]}x{layer['grid'][1]})",
        f"method      {manifest['method']}",
        f"classes     {shown}",
        f"outputs     {outputs}",
        f"verified    logits rel err {check.get('logits_max_rel_err', float('nan')):.1e}, "
        f"cam abs err {check.get('cam_max_abs_err', float('nan')):.1e} (batches {check.get('batch_sizes')})",
        "tensorrt    " + ("compatible" if trt.get("compatible") else "no: " + "; ".join(trt.get("problems", []))),
        f"semantics   {_semantics(manifest.get('semantics'))}",
        f"engines     {_engines(manifest)}",
        f"producer    textcam {manifest['producer'].get('textcam')}, torch {manifest['producer'].get('torch')}",
    ]
    click.echo("\n".join(safe_text(line) for line in lines))  # names in the manifest are untrusted text


def _semantics(entry: dict | None) -> str:
    if not entry:
        return "none (heatmaps only; textcam semantics adds phrases)"
    details = [f"{entry.get('vocabulary_size', '?')} phrases", f"CLIP {entry.get('clip_model', '?')}",
               f"LDA {entry.get('lda', '?')}", f"M={entry.get('m', '?')}"]
    fused = " + fused ranking graph" if entry.get("fused_graph") else ""
    return f"{entry.get('file')}{fused} ({', '.join(details)})"


def _engines(manifest: dict) -> str:
    """'none', or one 'precision smXX TensorRT v batch a-b-c (file)' per engine."""
    from textcam.errors import TextcamError
    from textcam.runtime.engines import engine_entries

    try:
        entries = engine_entries(manifest)
    except TextcamError as exc:
        return f"unreadable ({exc})"
    if not entries:
        return "none (textcam build-engine adds TensorRT engines)"
    return "; ".join(f"{e.describe()} ({e.file})" for e in entries)
