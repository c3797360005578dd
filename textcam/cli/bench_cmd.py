"""``textcam bench``: explanation latency as a ratio to plain inference, on this machine.

The three contenders run in one process, interleaved, with the same threads and (ONNX Runtime)
spinning off: a pool that busy-waits after its call starves the next contender's, which once made
the explanation measure faster than the graph it contains. A row whose numbers still contradict
each other is refused (:func:`textcam.runtime.timing.contradiction`) rather than printed.
"""

from __future__ import annotations

import os
import sys

import click

from textcam.cli.backend_options import backend_option, backend_settings, precision_option
from textcam.cli.bundle_arg import BUNDLE_HELP, resolve_bundle
from textcam.cli.safe_text import json_text, safe_text
from textcam.errors import TextcamError


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


CONTAINS = (("explain", "graph"), ("graph", "plain"), ("explain", "plain"))
"""(outer, inner): ``outer`` does all of ``inner``'s work and more, on the same engine; a row where it
measures faster beyond the noise is refused."""


def thread_settings(backend: str, threads: int | None) -> str:
    """What every contender runs with, for the header: the same threads, spinning off."""
    from textcam.runtime.backends import ONNXRUNTIME_BACKENDS

    if backend in ONNXRUNTIME_BACKENDS:
        count = f"{threads} (ONNX Runtime intra-op)" if threads else "ONNX Runtime's default (one per physical core)"
        return f"threads per contender: {count}, spinning off"
    if backend == "openvino":
        return f"threads per contender: {threads or 'the OpenVINO CPU plugin default'} (OpenVINO)"
    return "contenders on TensorRT engines (no CPU thread pools)"


def bench_row(batch: int, stats: dict, checked: bool) -> dict:
    """One result row: medians and interquartile ranges per contender, the ratios, and ``noise`` (the
    widest interquartile range as a share of its contender's median: ratios nearer 1 than that are
    not resolved); or, when the timings contradict each other, ``refused`` with the reason and no ratios."""
    from textcam.runtime.timing import contradiction

    row: dict = {"batch": batch}
    for name, s in stats.items():
        row[f"{name}_ms"] = round(s["median_ms"], 3)
        row[f"{name}_iqr_ms"] = round(s["q3_ms"] - s["q1_ms"], 3)
    refused = contradiction(stats, CONTAINS) if checked else None
    base = stats["plain"]["median_ms"]
    row["graph_over_plain"] = None if refused else round(stats["graph"]["median_ms"] / base, 3)
    row["explain_over_plain"] = None if refused else round(stats["explain"]["median_ms"] / base, 3)
    row["noise"] = round(max((s["q3_ms"] - s["q1_ms"]) / s["median_ms"] for s in stats.values()), 3)
    row["refused"] = refused
    return row


def row_text(row: dict) -> str:
    """The table line of one row, or the line that says why it is refused."""
    if row["refused"]:
        return f"{row['batch']:>5} refused: {row['refused']}"
    return (f"{row['batch']:>5} {row['plain_ms']:>10.2f} {row['graph_ms']:>10.2f} {row['explain_ms']:>11.2f} "
            f"{row['graph_over_plain']:>12.3f} {row['explain_over_plain']:>14.3f} {row['noise']:>7.1%}")


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
              help="Timed repetitions per contender and batch size (interleaved; 3 or more to check the rows).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads of every contender (ONNX Runtime; OpenVINO's threads).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@backend_option
@precision_option
def bench_command(bundle, batch_sizes, rounds, threads, as_json, backend, precision):
    """Time plain inference vs the joint graph vs the full Explainer call, interleaved.

    "plain" is the bundle's own graph pruned to the nodes that compute the logits: same weights,
    same backend, no gradient. "graph" is the joint graph call; "explain" adds the runtime's
    post-processing (softmax, heatmap mapping). Ratios are medians of the same rounds. All three
    run with the same threads and with ONNX Runtime's thread spinning off.

    "noise" is the row's widest interquartile range over the rounds, as a share of its median.
    Since explain contains graph and graph contains plain, a row where one measures faster than
    what it contains by more than that noise (and by over 2%) is refused: it says why, and the
    command exits 1 after the table. Fewer than 3 rounds are not checked.

    With --backend, all three run on that backend (for tensorrt, "plain" is an engine of the
    pruned graph built first, with the explaining engine's precision and batch profile).
    """
    import numpy as np

    from textcam.runtime import Explainer
    from textcam.runtime.backends import ONNXRUNTIME_BACKENDS
    from textcam.runtime.plain_baseline import plain_inference
    from textcam.runtime.timing import MIN_CHECKED_ROUNDS, interleaved_medians

    settings = backend_settings(backend, precision, threads)
    if backend in ONNXRUNTIME_BACKENDS:
        # spinning pools starve each other when interleaved (docs/performance.md, "How textcam bench measures")
        settings["backend_options"]["allow_spinning"] = False
    explainer = Explainer(resolve_bundle(bundle), batch_size=max(batch_sizes), **settings)
    warning = load_warning()  # after the checks, so that a bad option is still one line
    if warning:
        click.echo(warning, err=True)
    checked = rounds >= MIN_CHECKED_ROUNDS
    if not checked:
        click.echo(f"warning: {rounds} round(s) are too few to tell noise from a contradiction; the rows are "
                   f"not checked for one (use --rounds {MIN_CHECKED_ROUNDS} or more)", err=True)
    spec = explainer.bundle.input
    if backend == "tensorrt":
        click.echo("building the plain-inference engine (logits only) for the baseline", err=True)
    plain_run, release = plain_inference(explainer, threads, allow_spinning=False)
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
        rows.append(bench_row(batch, stats, checked))
    release()
    native = explainer.native  # before close(), which lets the core go
    explainer.close()
    refused = sum(bool(r["refused"]) for r in rows)
    if as_json:
        text, ok = json_text({"bundle": str(bundle), "backend": backend, "rounds": rounds, "threads": threads,
                              "allow_spinning": False if backend in ONNXRUNTIME_BACKENDS else None,
                              "native": native, "checked": checked, "results": rows}, indent=2)
        click.echo(text)
        if not ok:
            click.echo("error: a timing is not a finite number; rerun the benchmark", err=True)
            sys.exit(1)
    else:
        click.echo(safe_text(f"{explainer.bundle.manifest['model'].get('source')} @ {explainer.bundle.layer} "
                             f"({explainer.bundle.method}), backend {backend}, {rounds} interleaved rounds, medians"))
        # the native core runs explain in a session of its own, with the same settings
        click.echo(f"{thread_settings(backend, threads)}; all in one process"
                   + ("; explain in the native core" if native else ""))
        header = ("batch", "plain ms", "graph ms", "explain ms", "graph/plain", "explain/plain", "noise")
        click.echo(" ".join(f"{h:>{w}}" for h, w in zip(header, (5, 10, 10, 11, 12, 14, 7), strict=True)))
        for r in rows:
            click.echo(row_text(r))
    if refused:
        raise TextcamError(f"{refused} of {len(rows)} row(s) refused: their timings contradict each other")
