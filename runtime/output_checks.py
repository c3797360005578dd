"""What a graph returns, checked before it becomes an answer.

Whatever runs the graph (ONNX Runtime, TensorRT, a remote server), the runtime only labels an
image after checking the outputs it got: every required output present, of the shape the bundle
declares for this batch, a class index in range, finite logits and weights, a map in [0, 1]. A
graph that was swapped, damaged or miscompiled then fails in one line instead of answering
"red" with score NaN or labelling class -5 by negative indexing.
"""

from __future__ import annotations

import numpy as np

from textcam.errors import TextcamError
from textcam.runtime.bundle import Bundle

_MAP_SLACK = 1e-3  # reduced-precision engines may overshoot [0, 1] by rounding


def check_outputs(bundle: Bundle, outputs: dict[str, np.ndarray], batch: int) -> None:
    """Raise a one-line TextcamError unless ``outputs`` is a well-formed answer for ``batch`` images."""
    where = f"{bundle.path}: the graph"
    classes, channels = len(bundle.classes), bundle.channels
    height, width = bundle.input.height, bundle.input.width
    expected = {
        "logits": (batch, classes),
        "class_index": (batch,),
        "cam": (batch, height, width),
        "channel_weights": (batch, channels),
        "channel_activation": (batch, channels),
    }
    for name, shape in expected.items():
        if name not in outputs:
            raise TextcamError(f"{where} returned no {name!r} output; re-export the bundle")
        got = np.shape(outputs[name])
        if got != shape:
            raise TextcamError(f"{where} returned {name} of shape {list(got)}, expected {list(shape)}; "
                               "re-export the bundle")
    index = np.asarray(outputs["class_index"])
    if not np.issubdtype(index.dtype, np.integer) or (index.size and (index.min() < 0 or index.max() >= classes)):
        raise TextcamError(f"{where} returned class index {index.tolist()} outside 0..{classes - 1}; "
                           "re-export the bundle")
    for name in ("logits", "channel_weights", "channel_activation", "cam"):
        values = np.asarray(outputs[name])
        if not np.isfinite(values).all():
            rows = np.flatnonzero(~np.isfinite(values.reshape(batch, -1)).all(axis=1))
            raise TextcamError(f"{where} returned NaN or Inf in {name} for image(s) {rows[:5].tolist()} of the "
                               "batch (non-finite input, or a numerically broken graph/engine)")
    cam = np.asarray(outputs["cam"])
    if cam.size and (cam.min() < -_MAP_SLACK or cam.max() > 1 + _MAP_SLACK):
        raise TextcamError(f"{where} returned a heatmap outside [0, 1] ({cam.min():.3g}..{cam.max():.3g}); "
                           "re-export the bundle")
    if "activations" in outputs:
        got = np.shape(outputs["activations"])
        if len(got) != 4 or got[:2] != (batch, channels):
            raise TextcamError(f"{where} returned activations of shape {list(got)}; re-export the bundle")
