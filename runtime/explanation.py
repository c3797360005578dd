"""The answer for one image: the prediction, where the model looked, and (with semantics) what it saw."""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from textcam.errors import TextcamError
from textcam.runtime.colormaps import colorize, lookup_table
from textcam.runtime.heatmap import resize_rows
from textcam.runtime.images import (
    BAND_PIXELS,
    MAX_OVERLAY_PIXELS,
    array_to_image,
    from_pil,
    load_image,
)

OverlayBase = Image.Image | np.ndarray | str | Path


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

    def overlay(self, image: OverlayBase, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """This group's map blended over ``image``, as :meth:`Explanation.overlay` does."""
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

    def overlay(self, image: OverlayBase, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The heatmap blended over ``image`` (the original, at any size), as an RGB PIL image.

        ``image``: the PIL image, uint8 array or path the explanation came from (its EXIF
        orientation is applied, as when it was explained). The overlay has the image's size, but
        never more than ``MAX_OVERLAY_PIXELS`` (16 MP) pixels: a larger image is downscaled first,
        aspect ratio kept (to the pixel), so writing an overlay costs bounded memory.
        """
        return blend(self.heatmap, image, alpha, colormap)


def blend(
    heat: np.ndarray, image: OverlayBase, alpha: float = 0.5, colormap: str = "jet",
    max_pixels: int = MAX_OVERLAY_PIXELS,
) -> Image.Image:
    """A [0, 1] map colorized and blended over ``image``, as an RGB PIL image.

    The map is resized to the image when sizes differ. Images over ``max_pixels`` pixels are
    downscaled (aspect kept) so the result has at most ``max_pixels``; the work runs in row bands,
    so memory beyond the result stays small whatever the image size.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise TextcamError(f"alpha {alpha!r}: expected a value between 0 and 1")
    lookup_table(colormap)  # an unknown name fails before any work
    heat = np.asarray(heat)
    if heat.ndim != 2 or heat.size == 0 or heat.dtype.kind not in "fiu":
        raise TextcamError(f"heatmap of shape {heat.shape} and dtype {heat.dtype}: expected a non-empty [H, W] map")
    base = _overlay_base(image)
    width, height = base.size
    if heat.shape == (width, height) and width != height:
        raise TextcamError(
            f"overlay image {width}x{height} is the heatmap's {heat.shape[1]}x{heat.shape[0]} turned sideways: "
            "pass the image the explanation came from (a file or PIL image with its EXIF orientation)"
        )
    out_w, out_h = overlay_size(width, height, max_pixels)
    result = Image.new("RGB", (out_w, out_h))
    rows = max(1, BAND_PIXELS // out_w)
    for y0 in range(0, out_h, rows):
        y1 = min(out_h, y0 + rows)
        if (out_w, out_h) == (width, height):
            band = base.resize((width, y1 - y0), Image.Resampling.NEAREST, box=(0, y0, width, y1))  # a plain cut
        else:
            box = (0.0, y0 * height / out_h, float(width), min(height, y1 * height / out_h))
            band = base.resize((out_w, y1 - y0), Image.Resampling.BILINEAR, box=box)
        heat_band = resize_rows(heat, out_w, out_h, y0, y1)
        if np.isnan(heat_band).any():
            raise TextcamError(f"heatmap of shape {heat.shape}: holds NaN values")
        colours = colorize(heat_band, colormap).astype(np.float32)
        blended = (1.0 - alpha) * np.asarray(band, dtype=np.float32) + alpha * colours
        result.paste(Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8)), (0, y0))
    return result


def overlay_size(width: int, height: int, max_pixels: int = MAX_OVERLAY_PIXELS) -> tuple[int, int]:
    """(width, height) of an overlay of a ``width`` x ``height`` image: the same, or scaled down
    to at most ``max_pixels`` pixels with the aspect ratio kept (each side at least 1)."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    out_w = max(1, math.floor(width * scale))
    out_h = max(1, min(math.floor(height * scale), max_pixels // out_w))
    return min(out_w, max_pixels // out_h), out_h


def _overlay_base(image: OverlayBase) -> Image.Image:
    # the caller already holds the image, so no pixel limit; only an empty image is refused
    if isinstance(image, Image.Image):
        return from_pil(image, sys.maxsize)
    if isinstance(image, np.ndarray):
        return array_to_image(image, sys.maxsize)
    if isinstance(image, (str, Path)):
        return load_image(image, sys.maxsize)
    raise TextcamError(
        f"overlay image of type {type(image).__name__}: pass the PIL image, uint8 array or path that was explained"
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
