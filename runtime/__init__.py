"""textcam.runtime: load a bundle and explain images with numpy and ONNX Runtime (never torch)."""

from textcam.runtime.bundle_files import FORMAT_VERSION, MANIFEST_FILE, MODEL_FILE

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "MODEL_FILE"]
