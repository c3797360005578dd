"""``textcam selftest``: hold a backend to the bundle's conformance self-test."""

from __future__ import annotations

import sys

import click

from textcam.cli.backend_options import backend_option, backend_settings, precision_option
from textcam.cli.bundle_arg import BUNDLE_HELP, resolve_bundle
from textcam.cli.safe_text import json_text, safe_text


@click.command("selftest", epilog=BUNDLE_HELP)
@click.argument("bundle", type=click.Path(file_okay=False))
@backend_option
@precision_option
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--triton", "triton_url", default=None, metavar="HOST:PORT",
              help="Check a Triton server serving the repository `textcam triton` wrote (its HTTP address) "
                   "instead of a local backend.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object instead of the table.")
def selftest_command(bundle, backend, precision, threads, triton_url, as_json):
    """Check that a backend reproduces the bundle's self-test: PASS or FAIL, exit status 0 or 1.

    Every bundle carries a few images and the outputs the reference host (ONNX Runtime on the
    CPU) computed for them, with a tolerance per output. This runs the stored images through
    the chosen backend twice: the stored preprocessed tensor through the graph (rows 'graph':
    the graph alone), and the raw images end to end (row 'preprocess': this runtime's resize and
    normalization; rows 'end-to-end': the whole answer). Each row shows the worst difference
    and its tolerance.

    fp16/bf16 (--precision) are held to the engine parity limits (2e-2, 5e-2) instead of the
    fp32 ones; predicted classes and phrases must still match exactly.

    \b
    Examples:
      textcam selftest resnet50.textcam
      textcam selftest resnet50.textcam --backend onnxruntime-cuda
      textcam selftest resnet50.textcam --backend tensorrt --precision fp16 --json
      textcam selftest resnet50.textcam --triton 127.0.0.1:8000
    """
    from textcam.runtime import Explainer

    if triton_url is not None:
        from textcam.serving.triton_client import triton_selftest

        report = triton_selftest(resolve_bundle(bundle), triton_url)
    else:
        explainer = Explainer(resolve_bundle(bundle), **backend_settings(backend, precision, threads))
        try:
            report = explainer.selftest()
        finally:
            explainer.close()
    if as_json:
        text, ok = json_text(report.to_dict())  # strict JSON; a non-finite number becomes an error record
        click.echo(text)
        if not ok:
            sys.exit(1)
    else:
        click.echo(safe_text(f"{report.bundle}: {report.images} images, backend {report.backend} "
                             f"({report.precision})"))
        click.echo("\n".join(safe_text(line) for line in report.table().splitlines()))
        click.echo("PASS" if report.passed else f"FAIL ({len(report.failed)} of {len(report.rows)} checks)")
    if not report.passed:
        sys.exit(1)
