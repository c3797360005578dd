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
from textcam.runtime.images import (
    BAND_PIXELS,
    MAX_OVERLAY_PIXELS,
    Geometry,
    array_to_image,
    from_pil,
    load_image,
)
from textcam.runtime.preprocessing_spec import filter_weights, vertical_first

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
        heat_band = _resize_rows(heat, out_w, out_h, y0, y1)
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


def resize_map(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """float32 [height, width]: Pillow's BILINEAR resize of a float32 map, computed in row bands.

    Gives the same values as ``Image.fromarray(map).resize((width, height), BILINEAR)`` without
    its full-size copies (a PIL image plus the bytes numpy reads it through).
    """
    source = np.asarray(heatmap, dtype=np.float32)
    out = np.empty((height, width), dtype=np.float32)
    _resize_into(source, out)
    return out


def _resize_into(source: np.ndarray, out: np.ndarray) -> None:
    height, width = out.shape
    rows = max(1, BAND_PIXELS // max(width, source.shape[1]) // max(1, math.ceil(source.shape[0] / height)))
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        out[y0:y1] = _resize_rows(source, width, height, y0, y1)


def _resize_rows(source: np.ndarray, width: int, height: int, y0: int, y1: int) -> np.ndarray:
    """Rows [y0, y1) of ``source`` resized to ``width`` x ``height``, as Pillow's float resize does.

    Pillow's passes (``PREPROCESSING["resize"]`` without the fixed point): each output value is a
    double-precision sum over its taps, in tap order, stored as float32 after each pass.
    """
    source = np.asarray(source, dtype=np.float32)
    in_h, in_w = source.shape
    if (in_h, in_w) == (height, width):
        return source[y0:y1].copy()
    v_starts, v_weights = filter_weights(in_h, 0.0, float(in_h), height)
    v_starts, v_weights = v_starts[y0:y1], v_weights[y0:y1]
    need_vertical = height != in_h
    if need_vertical and vertical_first(in_w, in_h, width, height):
        band = _taps(source, v_starts, v_weights, axis=0)
        return _taps(band, *filter_weights(in_w, 0.0, float(in_w), width), axis=1) if width != in_w else band
    if need_vertical:
        # the horizontal pass only on the source rows these output rows read
        first = int(v_starts[0])
        band, v_starts = source[first:min(in_h, int(v_starts[-1]) + v_weights.shape[1])], v_starts - first
    else:
        band = source[y0:y1]
    if width != in_w:
        band = _taps(band, *filter_weights(in_w, 0.0, float(in_w), width), axis=1)
    return _taps(band, v_starts, v_weights, axis=0) if need_vertical else band


def _taps(values: np.ndarray, starts: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One pass along ``axis``: float32 result of double sums in tap order (as Pillow's C loop)."""
    size = values.shape[axis]
    total = None
    for tap in range(weights.shape[1]):
        index = np.minimum(starts + tap, size - 1)  # taps past the edge carry weight 0
        gathered = np.take(values, index, axis=axis).astype(np.float64)
        k = weights[:, tap][:, None] if axis == 0 else weights[:, tap][None, :]
        term = gathered * k
        total = term if total is None else total + term
    return total.astype(np.float32)


def map_to_original(cam: np.ndarray, geometry: Geometry | None) -> np.ndarray:
    """Map the graph's [H, W] heatmap back onto the original image through the resize/crop box.

    Builds the full-size map once, in place (no full-size temporaries; see the memory note at
    ``textcam.runtime.images.DEFAULT_MAX_PIXELS``).
    """
    if geometry is None:
        return np.asarray(cam, dtype=np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    left, top, right, bottom = geometry.box
    if (left, top, right, bottom) == (0.0, 0.0, float(geometry.width), float(geometry.height)):
        full = resize_map(cam, geometry.width, geometry.height)
    else:
        # centre crop: the map covers the box (edges rounded half up, at least one pixel);
        # outside it the model saw nothing
        full = np.zeros((geometry.height, geometry.width), dtype=np.float32)
        x0 = min(math.floor(left + 0.5), geometry.width - 1)
        y0 = min(math.floor(top + 0.5), geometry.height - 1)
        x1 = min(max(math.floor(right + 0.5), x0 + 1), geometry.width)
        y1 = min(max(math.floor(bottom + 0.5), y0 + 1), geometry.height)
        _resize_into(cam, full[y0:y1, x0:x1])
    np.clip(full, 0.0, 1.0, out=full)
    return full


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
