"""The native core (libtextcam through ``textcam_native``), when it is installed.

``pip install ./native`` builds the C++ core and its bindings; :class:`~textcam.runtime.Explainer`
then runs each explanation in it (decode of JPEG and PNG, preprocessing, the ONNX Runtime graph,
output checks, concept selection, the map back and channel groups) with the GIL released, and
falls back to the numpy path otherwise. ``TEXTCAM_NATIVE=0`` forces the numpy path
for every Explainer that does not ask; ``Explainer(..., native=True)`` insists on the core (one line
when it is missing) and ``native=False`` never uses it.

The core gives the same answers as the numpy path (same classes and phrase ids in the same order,
numbers within float rounding) and the same one-line errors: ``tests/test_native.py`` holds it
to that. Images in other formats than JPEG and PNG are decoded by Pillow and handed over as
pixels, so every input the numpy path takes works here too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from textcam.errors import TextcamError
from textcam.runtime.explanation import Concept, Explanation, Group

ENV_SWITCH = "TEXTCAM_NATIVE"
NATIVE_BACKENDS = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt")
"""Backends the core runs itself (the ``tensorrt`` backend stays on the Python runner)."""
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def native_module(force: bool = False) -> ModuleType | None:
    """``textcam_native`` when installed and (unless ``force``) not switched off by ``TEXTCAM_NATIVE=0``."""
    if not force and os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        return importlib.import_module("textcam_native")
    except ImportError:
        return None


def onnxruntime_library() -> str:
    """The ``libonnxruntime.so`` of the installed onnxruntime wheel (the core loads it at run time)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return ""
    folder = Path(next(iter(spec.submodule_search_locations))) / "capi"
    found = sorted(folder.glob("libonnxruntime.so*"))
    return str(found[-1]) if found else ""


def decodes_natively(path: str | Path) -> bool:
    """True for files the core decodes itself (JPEG, PNG, told by their first bytes). Paths that are
    empty or hold a NUL are left to the numpy path, which refuses them with its own line."""
    text = str(path)
    if not text.strip() or "\x00" in text:
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return True  # the core reports a missing or unreadable file with the same line as Pillow's path
    return any(head.startswith(magic) for magic in _MAGIC)


class NativeCore:
    """One ``textcam_native.Explainer``, and the conversion of its answers to :class:`Explanation`."""

    def __init__(self, module: ModuleType, bundle_path: Path, backend: str, options: dict, settings: dict,
                 batch_size: int, max_pixels: int, use_fused: bool):
        threads = options.get("intra_op_threads")
        if threads is not None and threads < 1:  # as the Python runner says it
            raise TextcamError(f"intra_op_threads={threads}: expected a positive number")
        self.core = module.Explainer(
            str(bundle_path), backend=backend, intra_op_threads=int(threads or 0),
            allow_spinning=bool(options.get("allow_spinning", True)), onnxruntime_library=onnxruntime_library(),
            batch_size=int(batch_size), max_pixels=int(max_pixels), use_fused=bool(use_fused),
            verify_checksums=False,  # the Python Bundle already checked every file it named
            concepts=settings,
        )
        self.fused = bool(self.core.summary["fused"])

    def explain_paths(self, paths: Sequence[Path], classes: np.ndarray, groups: bool) -> list:
        """Per path, its Explanation or the TextcamError that kept it out (in order)."""
        results = self.core.explain_files([str(p) for p in paths], [int(c) for c in classes], groups)
        return [self._explanation(found) if found is not None else TextcamError(error)
                for _path, found, error in results]

    def explain_arrays(self, arrays: Sequence[np.ndarray], classes: np.ndarray, groups: bool,
                       sources: Sequence[str | None]) -> list[Explanation]:
        results = self.core.explain_images([np.ascontiguousarray(a, dtype=np.uint8) for a in arrays],
                                           [int(c) for c in classes], groups)
        explanations = [self._explanation(found) for found in results]
        for explanation, source in zip(explanations, sources, strict=True):
            explanation.source = source
        return explanations

    def explain_floats(self, batch: np.ndarray, classes: np.ndarray, groups: bool) -> list[Explanation]:
        results = self.core.explain_batch(np.ascontiguousarray(batch, dtype=np.float32), [int(c) for c in classes],
                                          groups)
        return [self._explanation(found) for found in results]

    def selftest(self, bundle_path: Path, backend: str):
        from textcam.runtime.comparison import Comparison
        from textcam.runtime.selftest import SelftestReport

        images, found = self.core.selftest()
        rows = tuple(Comparison(output, measure, value, tolerance, group=stage)
                     for stage, output, measure, value, tolerance, _passed in found)
        return SelftestReport(str(bundle_path), backend, "fp32", images, rows)

    @staticmethod
    def _explanation(found: dict) -> Explanation:
        return Explanation(
            class_index=int(found["class_index"]),
            label=found["label"],
            score=float(found["score"]),
            logits=found["logits"],
            heatmap=found["heatmap"],
            channel_weights=found["channel_weights"],
            channel_activation=found["channel_activation"],
            source=found["source"],
            concepts=[Concept(phrase, float(score), weight=float(weight)) for phrase, _id, score, weight
                      in found["concepts"]],
            groups=[Group(g["phrase"], int(g["phrase_id"]), g["channels"], float(g["share"]), g["saliency"],
                          g["heatmap"]) for g in found["groups"]],
        )
