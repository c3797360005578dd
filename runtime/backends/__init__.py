"""Graph runners: one small class per backend, all with the same ``run`` call.

A runner takes the preprocessed float batch and the requested classes and returns the joint
graph's outputs by name. ``Explainer`` only talks to this interface, so a backend is one module.
"""

from __future__ import annotations

from textcam.errors import TextcamError
from textcam.runtime.backends.base import GraphRunner
from textcam.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
from textcam.runtime.bundle import Bundle

BACKENDS = {"onnxruntime": OnnxRuntimeRunner}


def create_runner(backend: str, bundle: Bundle, **options) -> GraphRunner:
    if backend not in BACKENDS:
        raise TextcamError(f"backend {backend!r}: not available here; available: {', '.join(BACKENDS)}")
    return BACKENDS[backend](bundle, **options)


__all__ = ["BACKENDS", "GraphRunner", "create_runner"]
