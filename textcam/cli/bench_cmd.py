"""``textcam bench``: explanation latency as a ratio to plain inference, on this machine."""

from __future__ import annotations

import os
import sys

import click

from textcam.cli.backend_options import backend_option, backend_settings, precision_option
from textcam.cli.bundle_arg import BUNDLE_HELP, resolve_bundle
from textcam.cli.safe_text import json_text, safe_text


def load_warning() -> str | None:
    """A warning when the machine is busier than its cores (timings, and so ratios, then mislead)."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):  # no load average on this platform
        return None
    if load <= cores:
        return None
    return (f"warning: the 1-minute load average is {load:.1f} on {cores} CPU core(s); other work competes for "
            "the cores, so the timings and ratios below may mislead")


def _batch_sizes(_ctx, _param, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise click.BadParameter("expected positive integers separated by commas, e.g. 1,8,32")
    return sizes


@click.command("bench", epilog=BUNDLE_HELP)
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--batch-sizes", default="1,8", callback=_batch_sizes, show_default=True, metavar="B,B,...")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed repetitions per contender and batch size (interleaved).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@backend_option
@precision_option
def bench_command(bundle, batch_sizes, rounds, threads, as_json, backend, precision):
    """Time plain inference vs the joint graph vs the full Explainer call, interleaved.

    "plain" is the bundle's own graph pruned to the nodes that compute the logits: same weights,
    same backend, no gradient. "graph" is the joint graph call; "explain" adds the runtime's
    post-processing (softmax, heatmap mapping). Ratios are medians of the same rounds.

    With --backend, all three run on that backend (for tensorrt, "plain" is an engine of the
    pruned graph built first, with the explaining engine's precision and batch profile).
    """
    import numpy as np

    from textcam.runtime import Explainer
    from textcam.runtime.plain_baseline import plain_inference
    from textcam.runtime.timing import interleaved_medians

    explainer = Explainer(resolve_bundle(bundle), batch_size=max(batch_sizes),
                          **backend_settings(backend, precision, threads))
    warning = load_warning()  # after the checks, so that a bad option is still one line
    if warning:
        click.echo(warning, err=True)
    spec = explainer.bundle.input
    if backend == "tensorrt":
        click.echo("building the plain-inference engine (logits only) for the baseline", err=True)
    plain_run, release = plain_inference(explainer, threads)
    rows = []
    for batch in batch_sizes:
        images = np.random.default_rng(batch).standard_normal((batch, 3, spec.height, spec.width)).astype(np.float32)
        classes = np.full(batch, -1, dtype=np.int64)
        stats = interleaved_medians(
            {
                "plain": lambda images=images: plain_run(images),
                "graph": lambda images=images, classes=classes: explainer.runner.run(images, classes),
                "explain": lambda images=images: explainer.explain_batch(images),
            },
            rounds=rounds,
        )
        base = stats["plain"]["median_ms"]
        rows.append({
            "batch": batch,
            **{f"{name}_ms": round(s["median_ms"], 3) for name, s in stats.items()},
            "graph_over_plain": round(stats["graph"]["median_ms"] / base, 3),
            "explain_over_plain": round(stats["explain"]["median_ms"] / base, 3),
        })
    release()
    explainer.close()
    if as_json:
        text, ok = json_text({"bundle": str(bundle), "backend": backend, "rounds": rounds, "results": rows},
                             indent=2)
        click.echo(text)
        if not ok:
            click.echo("error: a timing is not a finite number; rerun the benchmark", err=True)
            sys.exit(1)
        return
    click.echo(safe_text(f"{explainer.bundle.manifest['model'].get('source')} @ {explainer.bundle.layer} "
                         f"({explainer.bundle.method}), backend {backend}, {rounds} interleaved rounds, medians"))
    header = ("batch", "plain ms", "graph ms", "explain ms", "graph/plain", "explain/plain")
    click.echo(" ".join(f"{h:>{w}}" for h, w in zip(header, (5, 10, 10, 11, 12, 14), strict=True)))
    for r in rows:
        click.echo(f"{r['batch']:>5} {r['plain_ms']:>10.2f} {r['graph_ms']:>10.2f} {r['explain_ms']:>11.2f} "
                   f"{r['graph_over_plain']:>12.3f} {r['explain_over_plain']:>14.3f}")
