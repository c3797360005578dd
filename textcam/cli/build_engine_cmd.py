"""``textcam build-engine``: a TensorRT engine for this GPU, checked against ONNX Runtime, added to the bundle."""

from __future__ import annotations

import click

from textcam.cli.backend_options import PRECISION_NAMES, FiniteFloatRange
from textcam.cli.bundle_arg import BUNDLE_HELP, resolve_bundle
from textcam.cli.safe_text import json_text, safe_text


@click.command("build-engine", epilog=BUNDLE_HELP + " It writes into the bundle, so default is refused.")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True,
              help="fp16/bf16 reduce the forward pass only; gradients and the map stay fp32.")
@click.option("--min-batch", type=int, default=None, metavar="N", help="Smallest batch the engine takes [1].")
@click.option("--opt-batch", type=int, default=None, metavar="N", help="Batch the engine is tuned for [8].")
@click.option("--max-batch", type=int, default=None, metavar="N",
              help="Largest batch per engine call [32]; the runtime splits larger ones.")
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True, metavar="N",
              help="Execution contexts that may run at once (one optimization profile each).")
@click.option("--workspace-gb", type=FiniteFloatRange(min=0, min_open=True), default=None, metavar="GB",
              help="Limit TensorRT's build workspace (default: TensorRT's own, the device memory).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Read and update a timing cache file (faster rebuilds on the same GPU and TensorRT).")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index.")
@click.option("--json", "as_json", is_flag=True, help="Print the engine's manifest entry as JSON.")
def build_engine_command(bundle, precision, min_batch, opt_batch, max_batch, concurrency, workspace_gb, timing_cache,
                         device, as_json):
    """Build a TensorRT engine for this GPU from the bundle's graph and record it in the bundle.

    The engine is checked against ONNX Runtime (CPU) on fresh random inputs right after the
    build; only an engine that passes is saved, as engines/<precision>-sm<arch>-trt<version>.plan,
    and listed in the manifest with this GPU's compute capability, the TensorRT version, the
    precision and the batch profile. Needs the [tensorrt] extra and an NVIDIA GPU.

    \b
    Examples:
      textcam build-engine resnet50.textcam
      textcam build-engine resnet50.textcam --precision fp16 --max-batch 64 --timing-cache trt.cache
    """
    from textcam.engines.entries import BatchProfile, check_precision

    bundle = resolve_bundle(bundle, writes=True)
    check_precision(precision)
    BatchProfile.resolve(min_batch, opt_batch, max_batch)  # bad profiles fail before TensorRT loads
    from textcam.engines.build import ParityFailure, build_engine

    try:
        result = build_engine(bundle, precision, min_batch, opt_batch, max_batch, workspace_gb, timing_cache,
                              concurrency, device, progress=lambda message: click.echo(safe_text(message), err=True))
    except ParityFailure as failure:
        click.echo(failure.report.table(), err=True)
        raise
    if as_json:
        click.echo(json_text(result.entry.to_dict(), indent=2)[0])
        return
    click.echo(result.parity.table())
    if result.precision_report:
        click.echo(safe_text(f"graph   {result.precision_report.describe()}"))
    entry = result.entry
    click.echo(safe_text(f"wrote {result.path} ({entry.size_bytes / 1e6:.1f} MB) in {result.build_s:.1f}s: "
                         f"{entry.describe()}, {entry.concurrency} context(s)"))

