"""The ``--backend`` / ``--precision`` options shared by ``textcam explain`` and ``textcam bench``."""

from __future__ import annotations

import click

from textcam.errors import TextcamError

backend_option = click.option(
    "--backend", default="onnxruntime", show_default=True, metavar="NAME",
    help="What runs the graph: onnxruntime (CPU), onnxruntime-cuda, onnxruntime-tensorrt, or tensorrt "
         "(the engine from `textcam build-engine`).",
)
precision_option = click.option(
    "--precision", default=None, metavar="fp32|fp16|bf16",
    help="GPU backends: which engine (tensorrt) or graph copy (onnxruntime-*) to run; default fp32 where built.",
)


def backend_settings(backend: str, precision: str | None, threads: int | None) -> dict:
    """Explainer keyword arguments for the chosen backend; one-line errors for options that do not apply."""
    from textcam.runtime.backends import ONNXRUNTIME_BACKENDS, check_backend
    from textcam.runtime.engines import check_precision

    check_backend(backend)
    options: dict = {}
    if precision is not None:
        check_precision(precision)
        if backend == "onnxruntime" and precision != "fp32":
            raise TextcamError(f"--precision {precision}: the onnxruntime (CPU) backend runs the fp32 graph; "
                               "choose a GPU --backend")
        if backend != "onnxruntime":
            options["precision"] = precision
    if threads is not None and backend not in ONNXRUNTIME_BACKENDS:
        raise TextcamError(f"--threads: sets ONNX Runtime's threads; backend {backend!r} does not use them")
    return {"backend": backend, "intra_op_threads": threads, "backend_options": options}
