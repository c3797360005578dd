"""The answer for one image: the prediction, where the model looked, and (with semantics) what it saw."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from textcam.errors import TextcamError
from textcam.runtime.colormaps import colorize
from textcam.runtime.images import Geometry, to_rgb


@dataclass
class Concept:
    """A phrase describing the evidence, with its score (filled in when the bundle has semantics)."""

    phrase: str
    score: float
    """The phrase's cosine with the image's evidence direction q (plain ranking score)."""
    weight: float = 0.0
    """Its share of the diverse-selection weights alpha (the list's order); 0.0 for a phrase listed
    after the selected ones only to fill top_k."""


@dataclass
class Group:
    """Channels that one phrase describes, and the part of the map they make (``explain(groups=True)``)."""

    phrase: str
    phrase_id: int
    channels: np.ndarray
    """int64 channel indices, largest contribution first."""
    share: float
    """This group's part of the total positive contribution sum_j ReLU(w_j a_j)."""
    saliency: np.ndarray
    """float32 [h, w]: sum_{j in group} w_j A_j, before ReLU, at the layer's resolution."""
    heatmap: np.ndarray
    """float32 [H, W] in [0, 1]: ReLU of ``saliency`` normalized and mapped like the main heatmap."""

    def to_dict(self) -> dict[str, Any]:
        return {"phrase": self.phrase, "channels": [int(c) for c in self.channels], "share": float(self.share)}

    def overlay(self, image: Image.Image | np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """This group's map blended over ``image`` (the original, at any size)."""
        return blend(self.heatmap, image, alpha, colormap)


@dataclass
class Explanation:
    class_index: int
    label: str
    score: float
    """Softmax probability of ``class_index``."""
    logits: np.ndarray
    heatmap: np.ndarray
    """float32 [H, W] in [0, 1], at the original image's resolution."""
    channel_weights: np.ndarray
    channel_activation: np.ndarray
    source: str | None = None
    """The file the image came from, when it came from a file."""
    concepts: list[Concept] = field(default_factory=list)
    """Top phrases for the evidence; empty until the bundle carries channel semantics. In selection
    order, not score order: the phrases the diverse selection chose, by ``weight`` (alpha share)
    descending, then fill-ins (weight 0.0) by ``score`` descending; see :mod:`textcam.runtime.concepts`."""
    groups: list[Group] = field(default_factory=list)
    """The map split by phrase; filled by ``explain(..., groups=True)``."""

    def to_dict(self, include_heatmap: bool = False) -> dict[str, Any]:
        """JSON-safe summary; the heatmap (large) only when asked for."""
        result: dict[str, Any] = {
            "source": self.source,
            "class_index": int(self.class_index),
            "label": self.label,
            "score": float(self.score),
            "heatmap_shape": list(self.heatmap.shape),
            "heatmap_peak_xy": list(self.peak()),
            "concepts": [{"phrase": c.phrase, "score": float(c.score), "weight": float(c.weight)}
                         for c in self.concepts],
            "groups": [g.to_dict() for g in self.groups],
            "logits": [float(v) for v in self.logits],
        }
        if include_heatmap:
            result["heatmap"] = np.round(self.heatmap, 4).tolist()
        return result

    def peak(self) -> tuple[int, int]:
        """(x, y) of the heatmap's maximum in original-image pixels."""
        y, x = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(x), int(y)

    def overlay(self, image: Image.Image | np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The heatmap blended over ``image`` (the original, at any size), as an RGB PIL image."""
        return blend(self.heatmap, image, alpha, colormap)


def blend(heat: np.ndarray, image: Image.Image | np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """A [0, 1] map colorized and blended over ``image`` (resized to the image when sizes differ)."""
    if not 0.0 <= alpha <= 1.0:
        raise TextcamError(f"alpha {alpha}: expected a value between 0 and 1")
    base = to_rgb(Image.fromarray(image) if isinstance(image, np.ndarray) else image)
    if (base.height, base.width) != heat.shape:
        heat = resize_map(heat, base.width, base.height)
    colours = colorize(heat, colormap).astype(np.float32)
    blended = (1.0 - alpha) * np.asarray(base, dtype=np.float32) + alpha * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def resize_map(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def map_to_original(cam: np.ndarray, geometry: Geometry | None) -> np.ndarray:
    """Map the graph's [H, W] heatmap back onto the original image through the resize/crop box."""
    if geometry is None:
        return np.asarray(cam, dtype=np.float32)
    left, top, right, bottom = geometry.box
    if (left, top, right, bottom) == (0.0, 0.0, float(geometry.width), float(geometry.height)):
        return np.clip(resize_map(cam, geometry.width, geometry.height), 0.0, 1.0)
    # centre crop: the map covers the box; outside it the model saw nothing
    full = np.zeros((geometry.height, geometry.width), dtype=np.float32)
    x0, y0 = round(left), round(top)
    x1, y1 = round(right), round(bottom)
    full[y0:y1, x0:x1] = resize_map(cam, x1 - x0, y1 - y0)
    return np.clip(full, 0.0, 1.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
