"""ONNX Runtime on the CPU (or any execution provider the installed onnxruntime offers)."""

from __future__ import annotations

import numpy as np

from textcam.errors import TextcamError, first_line
from textcam.runtime.backends.base import GraphRunner
from textcam.runtime.bundle import Bundle


def session_options(intra_op_threads: int | None, allow_spinning: bool, prepack_weights: bool = True):
    """ONNX Runtime session options shared by every ORT backend (quiet logs, threads, spinning, and
    whether matrix-product weights get a second, pre-packed copy)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise TextcamError(f"intra_op_threads={intra_op_threads}: expected a positive number")
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if not isinstance(prepack_weights, bool):
        raise TextcamError(f"prepack_weights={prepack_weights!r}: expected True or False")
    if not prepack_weights:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


class OnnxRuntimeRunner(GraphRunner):
    """One ``InferenceSession``; ``run`` is thread-safe (ONNX Runtime guarantees it for sessions).

    ``allow_spinning=False`` stops the intra-op threads from busy-waiting after each call, which
    otherwise starves other thread pools in the same process (seen: eager torch ~40x slower).
    ``prepack_weights=False`` keeps one copy of the weights: by default ONNX Runtime stores each
    matrix-product weight once more in its kernels' packed layout (faster products; VGG-16 +0.5 GB).
    It loads ``bundle.model_path``: ``OnnxRuntimeRunner(bundle.with_graph(path))`` runs another graph.
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, providers=None, intra_op_threads: int | None = None,
                 allow_spinning: bool = True, prepack_weights: bool = True):
        import onnxruntime as ort

        options = session_options(intra_op_threads, allow_spinning, prepack_weights)
        available = ort.get_available_providers()
        providers = list(providers or ["CPUExecutionProvider"])
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if unknown:
            raise TextcamError(f"providers {unknown}: not in this onnxruntime; available: {', '.join(available)}")
        try:
            self.session = ort.InferenceSession(str(bundle.model_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for corrupt files
            raise TextcamError(
                f"{bundle.model_path}: ONNX Runtime cannot load it ({first_line(exc)}); re-run `textcam export`"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        expected = [i.name for i in bundle.info.graph.inputs]
        if self.input_names != expected:
            raise TextcamError(
                f"{bundle.model_path}: graph inputs {self.input_names} differ from the manifest's {expected}; "
                "re-run `textcam export`"
            )

    def run(self, images: np.ndarray, target_class: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {self.input_names[0]: images, self.input_names[1]: target_class}
        return dict(zip(self.output_names, self.session.run(None, feeds), strict=True))
