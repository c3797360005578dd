"""The heatmap math, in one place: the graph's map finish and the map back onto the original image.

The joint graph turns a CAM method's pre-ReLU saliency [h, w] into ``cam`` [H, W] in [0, 1] as
pytorch-grad-cam does: ReLU, min-max normalization with :data:`NORMALIZE_EPS`, bilinear resize
with half-pixel centers (:func:`linear_resize_matrix`, as two constant matrix products), ReLU and
min-max again. :func:`finish_map` is that pipeline in numpy (channel-group maps go through it);
the export's torch twin (:func:`textcam.export.joint_graph.finish_map`) imports the resize matrix
and the epsilon from here, so the two cannot drift apart.

:func:`map_to_original` then maps a graph-resolution map back onto the original image through the
preprocessing's resize/crop box, with Pillow's float BILINEAR resize computed in row bands
(:func:`resize_map`, :func:`resize_rows`). Numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from textcam.runtime.images import BAND_PIXELS, Geometry
from textcam.runtime.preprocessing_spec import filter_weights, vertical_first

NORMALIZE_EPS = 1e-7
"""The map normalization's epsilon: (x - min) / (eps + max(x - min)), pytorch-grad-cam's scale_cam_image."""


def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] bilinear weights, half-pixel centers, clamped edges: the joint graph's resize."""
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    left = np.floor(src).astype(np.int64)
    frac = src - left
    low, high = left < 0, left >= in_size - 1
    left = np.where(low, 0, np.where(high, in_size - 1, left))
    frac = np.where(low | high, 0.0, frac)
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, left), 1.0 - frac)
    np.add.at(matrix, (rows, np.minimum(left + 1, in_size - 1)), frac)
    return matrix


def finish_map(saliency: np.ndarray, input_hw: tuple[int, int] | None) -> np.ndarray:
    """[h, w] pre-ReLU map -> [H, W] in [0, 1] at the graph's input size, as the joint graph maps ``cam``."""

    def normalize(x):
        shifted = x - x.min()
        return shifted / (NORMALIZE_EPS + shifted.max())

    heat = normalize(np.maximum(np.asarray(saliency, np.float64), 0.0))
    if input_hw is not None:
        rows = linear_resize_matrix(heat.shape[0], input_hw[0])
        cols = linear_resize_matrix(heat.shape[1], input_hw[1])
        heat = normalize(np.maximum(np.einsum("Hh,hw,Ww->HW", rows, heat, cols), 0.0))
    return heat.astype(np.float32)


def resize_map(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """float32 [height, width]: Pillow's BILINEAR resize of a float32 map, computed in row bands.

    Gives the same values as ``Image.fromarray(map).resize((width, height), BILINEAR)`` without
    its full-size copies (a PIL image plus the bytes numpy reads it through).
    """
    source = np.asarray(heatmap, dtype=np.float32)
    out = np.empty((height, width), dtype=np.float32)
    resize_into(source, out)
    return out


def resize_into(source: np.ndarray, out: np.ndarray) -> None:
    height, width = out.shape
    rows = max(1, BAND_PIXELS // max(width, source.shape[1]) // max(1, math.ceil(source.shape[0] / height)))
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        out[y0:y1] = resize_rows(source, width, height, y0, y1)


def resize_rows(source: np.ndarray, width: int, height: int, y0: int, y1: int) -> np.ndarray:
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
        resize_into(cam, full[y0:y1, x0:x1])
    np.clip(full, 0.0, 1.0, out=full)
    return full
