"""textcam.export: trace a classifier into one ONNX graph with its Grad-CAM-family explanation.

Needs the ``[export]`` extra (torch, onnx, onnxscript). The main entry point is
:func:`export_bundle`; the CAM methods live in :mod:`textcam.export.cam_methods`.

The torch-free stages that follow an export (the reduced-precision rewrite, TensorRT engine
builds and their parity check) live in :mod:`textcam.engines`, so a GPU server that only builds
engines needs no torch.
"""

from textcam.export.bundle_export import IMAGENET_MEAN, IMAGENET_STD, ExportResult, export_bundle
from textcam.export.cam_methods import METHODS
from textcam.export.model_source import load_model

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "METHODS", "ExportResult", "export_bundle", "load_model"]
