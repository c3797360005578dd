"""textcam.export: trace a classifier into one ONNX graph with its Grad-CAM-family explanation.

Needs the ``[export]`` extra (torch, onnx, onnxscript). The main entry point is
:func:`export_bundle`; the CAM methods live in :mod:`textcam.export.cam_methods`.

The names below are imported on first use, so the torch-free parts of this package (the
reduced-precision rewrite in :mod:`textcam.export.precision`, TensorRT engine builds in
:mod:`textcam.export.engine_build`) work on a machine without torch, such as a GPU server that
only builds engines.
"""

from importlib import import_module

_LAZY = {
    "IMAGENET_MEAN": "textcam.export.bundle_export",
    "IMAGENET_STD": "textcam.export.bundle_export",
    "export_bundle": "textcam.export.bundle_export",
    "METHODS": "textcam.export.cam_methods",
    "load_model": "textcam.export.model_source",
}

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "METHODS", "export_bundle", "load_model"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textcam.export' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
