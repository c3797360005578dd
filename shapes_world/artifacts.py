"""Where the committed shapes-world artifacts live (package data, rebuilt by
``python -m textcam.shapes_world.build``). Paths only, no heavy imports: ``textcam demo`` uses it
on the torch-free runtime."""

from __future__ import annotations

from pathlib import Path

from textcam.errors import TextcamError

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DEFAULT_BUNDLE = ARTIFACTS / "color.textcam"
"""The built-in default: the colour classifier with the tiny CLIP's semantics (``textcam demo``)."""
SPURIOUS_BUNDLE = ARTIFACTS / "spurious.textcam"
"""The classifier that learned the background colour (the quality benchmark's spurious task)."""
CLIP_CHECKPOINT = ARTIFACTS / "tiny_clip.safetensors"
CLIP_MODEL = "textcam-tiny-clip"
REPORT = ARTIFACTS / "build_report.json"
BUNDLES = {"color": DEFAULT_BUNDLE, "spurious": SPURIOUS_BUNDLE}
REBUILD_HINT = "rebuild the shapes-world artifacts with: python -m textcam.shapes_world.build"


def classifier_weights(task: str, folder: Path = ARTIFACTS) -> Path:
    return folder / f"{task}_cnn.safetensors"


def require(path: Path) -> Path:
    """``path`` if it exists, else a TextcamError saying how to rebuild it."""
    if not path.exists():
        raise TextcamError(f"{path}: the built-in shapes-world artifact is missing; {REBUILD_HINT}")
    return path
