"""Graph runners: one small class per backend, all with the same ``run`` call.

A runner takes the preprocessed float batch and the requested classes and returns the joint
graph's outputs by name. ``Explainer`` only talks to this interface, so a backend is one module.
Runners are registered by import path and imported on first use: importing ``textcam.runtime``
never imports TensorRT, CUDA bindings or onnxruntime-gpu specifics.

=======================  ==========================================================  =============
backend                  what runs the graph                                         needs
=======================  ==========================================================  =============
``onnxruntime``          ONNX Runtime, CPU (or any providers= you pass)               base install
``onnxruntime-cuda``     ONNX Runtime's CUDA execution provider, I/O binding           ``[gpu]``
``onnxruntime-tensorrt`` ONNX Runtime's TensorRT execution provider (engine cache)     ``[gpu]``
``tensorrt``             the bundle's own TensorRT engine (``textcam build-engine``)   ``[tensorrt]``
``openvino``             OpenVINO, CPU, float32 pinned (``precision="bf16"`` asks)     ``[openvino]``
=======================  ==========================================================  =============
"""

from __future__ import annotations

import importlib
import inspect

from textcam.errors import TextcamError, did_you_mean
from textcam.runtime.backends.availability import available_backends, unavailable_reason
from textcam.runtime.backends.base import GraphRunner
from textcam.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner  # the default, light to import
from textcam.runtime.bundle import Bundle

BACKENDS: dict[str, str] = {
    "onnxruntime": "textcam.runtime.backends.onnxruntime_runner:OnnxRuntimeRunner",
    "onnxruntime-cuda": "textcam.runtime.backends.onnxruntime_gpu:OnnxRuntimeCudaRunner",
    "onnxruntime-tensorrt": "textcam.runtime.backends.onnxruntime_gpu:OnnxRuntimeTensorRTRunner",
    "tensorrt": "textcam.runtime.backends.tensorrt_runner:TensorRTRunner",
    "openvino": "textcam.runtime.backends.openvino_runner:OpenVinoRunner",
}
ONNXRUNTIME_BACKENDS = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt")


def runner_class(backend: str) -> type[GraphRunner]:
    module, _, name = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), name)


def check_backend(backend: str) -> str:
    """``backend`` if it can run here; else one line naming why and the backends that can."""
    if backend not in BACKENDS:
        raise TextcamError(
            f"backend {backend!r}: unknown; choose one of {', '.join(BACKENDS)}{did_you_mean(str(backend), BACKENDS)}"
        )
    reason = unavailable_reason(backend)
    if reason:
        raise TextcamError(
            f"backend {backend!r}: not available here ({reason}); available here: "
            f"{', '.join(available_backends(BACKENDS))}"
        )
    return backend


def check_options(backend: str, options: dict) -> type[GraphRunner]:
    """The runner class for ``backend``, after a one-line TextcamError for an option it does not take."""
    cls = runner_class(check_backend(backend))
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "bundle")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise TextcamError(f"backend {backend!r} has no option {unknown[0]!r}; its options: {', '.join(accepted)}")
    return cls


def create_runner(backend: str, bundle: Bundle, **options) -> GraphRunner:
    """The runner for ``backend`` on ``bundle`` (its ``model_path``: see :meth:`Bundle.with_graph`); options are
    the runner's keyword arguments (``Explainer``'s ``backend_options``)."""
    return check_options(backend, options)(bundle, **options)


__all__ = [
    "BACKENDS",
    "ONNXRUNTIME_BACKENDS",
    "GraphRunner",
    "OnnxRuntimeRunner",
    "available_backends",
    "check_backend",
    "check_options",
    "create_runner",
]
