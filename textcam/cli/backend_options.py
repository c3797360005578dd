"""The ``--backend`` / ``--precision`` options shared by ``textcam explain`` and ``textcam bench``."""

from __future__ import annotations

import click

from textcam.errors import TextcamError

BACKEND_NAMES = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "openvino")
"""``textcam.runtime.backends.BACKENDS``' keys, spelled out so that ``--help`` and usage errors need no
runtime import (a test keeps the two in step)."""
PRECISION_NAMES = ("fp32", "fp16", "bf16")
"""``textcam.engines.entries.PRECISIONS`` (a test keeps the two in step)."""

backend_option = click.option(
    "--backend", type=click.Choice(BACKEND_NAMES), default="onnxruntime", show_default=True,
    help="What runs the graph: onnxruntime (CPU), onnxruntime-cuda, onnxruntime-tensorrt, tensorrt "
         "(the engine from `textcam build-engine`), or openvino (CPU, float32; the [openvino] extra).",
)
precision_option = click.option(
    "--precision", type=click.Choice(PRECISION_NAMES), default=None,
    help="GPU backends: which engine (tensorrt) or graph copy (onnxruntime-*) to run; openvino: bf16 lets its "
         "CPU plugin use bfloat16 (held to the self-test's reduced-precision tolerances). Default fp32.",
)


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses nan and inf (which pass its comparisons)."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def backend_settings(backend: str, precision: str | None, threads: int | None) -> dict:
    """Explainer keyword arguments for the chosen backend; one-line errors for options that do not apply."""
    from textcam.engines.entries import check_precision
    from textcam.runtime.backends import ONNXRUNTIME_BACKENDS, check_backend

    check_backend(backend)
    options: dict = {}
    if precision is not None:
        check_precision(precision)
        if backend == "onnxruntime" and precision != "fp32":
            raise TextcamError(f"--precision {precision}: the onnxruntime (CPU) backend runs the fp32 graph; "
                               "choose a GPU --backend")
        if backend == "openvino" and precision == "fp16":
            raise TextcamError("--precision fp16: the openvino backend runs fp32 or bf16")
        if backend != "onnxruntime":
            options["precision"] = precision
    if threads is not None and backend == "openvino":
        options["threads"] = threads
    elif threads is not None and backend not in ONNXRUNTIME_BACKENDS:
        raise TextcamError(f"--threads: sets ONNX Runtime's threads; backend {backend!r} does not use them")
    elif threads is not None:
        options["intra_op_threads"] = threads
    return {"backend": backend, "backend_options": options}
