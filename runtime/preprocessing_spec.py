"""What ``textcam.runtime.images.preprocess`` does to an image, stated exactly, plus a reference.

``PREPROCESSING`` says it in words and formulas (JSON-able, for a bundle's manifest): a host in
another language that follows it gets the graph input textcam's Python runtime feeds, within one
grey level of the resized image per pixel. ``reference_resize`` and ``reference_preprocess``
implement that statement with numpy alone (no Pillow); the tests hold Pillow-based
``preprocess`` to them.

The resize is Pillow's (``Image.resize(size, BILINEAR, box=...)``, ``src/libImaging/Resample.c``),
described here from its source: a separable, antialiased triangle filter evaluated in double
precision, with 22-bit fixed-point weights for 8-bit images and an 8-bit intermediate image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

PREPROCESSING_VERSION = 1

PRECISION_BITS = 22
"""Fraction bits of Pillow's fixed-point weights for 8-bit images (32 - 8 - 2)."""

PREPROCESSING: dict[str, Any] = {
    "version": PREPROCESSING_VERSION,
    "summary": (
        "decode -> EXIF orientation -> 8-bit RGB -> crop box -> Pillow BILINEAR resize of the box to the "
        "input size (two separable 8-bit passes) -> float32 (v * scale - mean) / std -> CHW"
    ),
    "decode": {
        "frames": "multi-frame files (GIF, TIFF, WebP, MPO) use their first frame",
        "exif_orientation": (
            "the EXIF Orientation tag (0x0112) of a file or PIL image is applied to the decoded pixels: "
            "1 none, 2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose (mirror across the "
            "top-left to bottom-right diagonal), 6 rotate 90 degrees clockwise, 7 transverse (mirror across "
            "the other diagonal), 8 rotate 90 degrees counter-clockwise; any other value, or an EXIF block "
            "that cannot be read, counts as 1. Arrays carry no EXIF. Width and height below are those of "
            "the image after this step, and the heatmap is at that size. The colour conversion works pixel "
            "by pixel, so its order relative to this step does not matter."
        ),
        "max_pixels": "images with more than max_pixels pixels (width * height) are refused before decoding",
    },
    "color": {
        "result": "8-bit RGB, channel order R, G, B",
        "RGB": "unchanged (a tRNS transparent colour of an RGB PNG is ignored)",
        "L": "r = g = b = L (a tRNS transparent grey of an L PNG is ignored, as for RGB)",
        "1": "r = g = b = 0 or 255",
        "CMYK": "r = round_half_up((255 - c) * (255 - k) / 255), likewise g from m and b from y",
        "RGBA, LA, PA, and P": (
            "expand to RGBA (LA -> r = g = b = L; P -> the palette entry, alpha from the palette's transparency "
            "entries, 255 where there are none), then composite on opaque black: r = round_half_up(r * a / 255), "
            "likewise g and b"
        ),
        "I;16, I;16B, I;16L, I;16N, I": (
            "top = 65535 if the image's maximum value is > 255 else 255 (one value for the whole image); "
            "gray = clamp(floor(v / top * 255 + 0.5), 0, 255) in float64; r = g = b = gray"
        ),
        "F": "gray = clamp(floor(v * 255 + 0.5), 0, 255) in float64 (NaN is refused); r = g = b = gray",
        "other modes (YCbCr, LAB, HSV, ...)": "Pillow's Image.convert('RGB')",
    },
    "crop_box": {
        "meaning": (
            "(left, top, right, bottom) in source pixel coordinates, edges between pixels: the source "
            "pixel (i, j) covers [i, i + 1) x [j, j + 1); the box is resampled onto the W x H input"
        ),
        "stretch": "(0, 0, width, height): the whole image, aspect ratio not kept",
        "center_crop": (
            "s = max(W / width, H / height); box_w = W / s; box_h = H / s; left = (width - box_w) / 2; "
            "top = (height - box_h) / 2; right = left + box_w; bottom = top + box_h; then each of left and "
            "right clamped into [0, width] and each of top and bottom into [0, height] (rounding can put an "
            "edge a few 1e-15 outside). All in IEEE double, in this order."
        ),
        "precision": "the four values are then rounded to float32 (Pillow takes the box as C floats)",
    },
    "resize": {
        "filter": "Pillow Image.Resampling.BILINEAR with the crop box (Resample.c), no reducing_gap",
        "passes": (
            "two separable passes per channel: horizontal (source columns -> W) and vertical (source rows "
            "-> H). The vertical pass goes first when height > H and (height - H) > 2 * (width - W) (image "
            "sizes, not the box; Pillow >= 13), else the horizontal one (always, before Pillow 13); the "
            "order changes a pixel by at most 1 grey level. The "
            "horizontal pass is skipped when W == width and box left == 0 and box right == W; the vertical "
            "pass when H == height and box top == 0 and box bottom == H (comparisons on the float32 box). "
            "With both skipped the image is copied. A skipped pass is an identity, so a host may also run it."
        ),
        "coefficients": (
            "per axis, with in_size source pixels, box edges in0 and in1 (float32) and out_size outputs: "
            "scale = double(float32(in1 - in0)) / out_size (the difference is taken in float32); "
            "filterscale = max(scale, 1); support = 1.0 * filterscale (downscaling widens the filter: "
            "antialiasing); for output i: center = in0 + (i + 0.5) * scale; "
            "xmin = max(0, trunc(center - support + 0.5)); "
            "xmax = min(in_size, trunc(center + support + 0.5)); for source x in [xmin, xmax): "
            "w_x = triangle((x - center + 0.5) / filterscale) computed as ((x - center) + 0.5) * (1 / filterscale), "
            "triangle(t) = 1 - |t| for |t| < 1, else 0 (pixel centres at x + 0.5); "
            "then each weight divided by the sum of the output's weights (summed in order of x; skipped if the "
            "sum is 0). All in IEEE double."
        ),
        "fixed_point_8bit": (
            f"weights become integers k_x = trunc(0.5 + w_x * 2^{PRECISION_BITS}) (weights are >= 0); an output "
            f"value is (2^{PRECISION_BITS - 1} + sum_x v_x * k_x) >> {PRECISION_BITS} (an arithmetic shift, i.e. "
            "floor), clamped to [0, 255]: round half up of the weighted sum. Accumulation in 32-bit "
            "integers never overflows (255 * 2^22 * 1.0x)."
        ),
        "intermediate": (
            "the first pass writes 8-bit values (rounded and clamped as above); the second pass reads "
            "those, not the exact sums"
        ),
        "integer_box_shortcut": (
            "a box with integer left and top and exactly W x H pixels is cut out unchanged; the formulas "
            "above give the same pixels"
        ),
    },
    "normalize": {
        "formula": "x = float32(v) * float32(scale); x = (x - float32(mean[c])) / float32(std[c])",
        "arithmetic": "IEEE float32, each operation rounded to nearest, in this order",
        "scale_mean_std": "from the manifest's input section (scale is 1/255 unless it says otherwise)",
    },
    "layout": "float32 [3, H, W] per image (CHW, channels R, G, B), stacked into [B, 3, H, W]",
    "heatmap": (
        "the graph's cam [H, W] is resized (Pillow BILINEAR on float32: the same coefficients and pass order, "
        "no fixed point, sums in double stored as float32 after each pass) to width x height for stretch; "
        "for center_crop to the box with edges rounded half up (x0 = floor(left + 0.5), "
        "x1 = max(floor(right + 0.5), x0 + 1), likewise y) and placed there, zero outside; then clamped to [0, 1]"
    ),
    "tolerance": (
        "a host following this statement reproduces the resized 8-bit image within 1 grey level per pixel "
        "(exactly where its double arithmetic matches IEEE without fused multiply-add), i.e. each "
        "graph-input value within std / 255 of textcam's"
    ),
}


def _triangle(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1.0, 1.0 - t, 0.0)


def filter_weights(in_size: int, in0: float, in1: float, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: the first source index and the normalized weights (float64 [out, taps]).

    Unused taps (past the image edge or the support) have weight 0. ``in0``/``in1`` are the box
    edges; they are rounded to float32 here, as Pillow's C code receives them.
    """
    in0_f, in1_f = np.float32(in0), np.float32(in1)
    scale = float(np.float32(in1_f - in0_f)) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    taps = math.ceil(support) * 2 + 1
    centers = float(in0_f) + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    starts = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    stops = np.minimum(np.trunc(centers + support + 0.5), in_size).astype(np.int64)
    offsets = np.arange(taps, dtype=np.int64)
    positions = starts[:, None] + offsets[None, :]
    weights = _triangle(((positions.astype(np.float64) - centers[:, None]) + 0.5) * (1.0 / filterscale))
    weights[positions >= stops[:, None]] = 0.0
    total = np.zeros(out_size)
    for tap in range(taps):  # in order, as the C loop adds them (numpy's sum would pair them)
        total += weights[:, tap]
    nonzero = total != 0.0
    weights[nonzero] /= total[nonzero, None]
    return starts, weights


def _fixed_point(weights: np.ndarray) -> np.ndarray:
    return np.trunc(0.5 + weights * float(1 << PRECISION_BITS)).astype(np.int64)


def _pass_8bit(pixels: np.ndarray, starts: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One separable pass along ``axis`` (0 rows, 1 columns) of an int64 [H, W, C] image."""
    k = _fixed_point(weights)
    size = pixels.shape[axis]
    total = np.full((len(starts), *np.delete(pixels.shape, axis)), 1 << (PRECISION_BITS - 1), np.int64)
    for tap in range(k.shape[1]):
        index = np.minimum(starts + tap, size - 1)  # clipped taps carry weight 0
        source = np.take(pixels, index, axis=axis)
        source = np.moveaxis(source, axis, 0)
        total += source * k[:, tap].reshape((-1,) + (1,) * (source.ndim - 1))
    result = np.clip(total >> PRECISION_BITS, 0, 255)
    return np.moveaxis(result, 0, axis)


def vertical_first(width: int, height: int, out_w: int, out_h: int) -> bool:
    """Pillow 13's pass order: vertical first when the height shrinks by more than twice the width."""
    return height > out_h and (height - out_h) > 2 * (width - out_w)


def reference_resize(
    pixels: np.ndarray, out_w: int, out_h: int, box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """``PREPROCESSING["resize"]`` in numpy: uint8 [H, W, C] (or [H, W]) -> uint8 [out_h, out_w, C]."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or 0 in pixels.shape[:2]:
        raise ValueError("reference_resize expects a non-empty uint8 [H, W] or [H, W, C] array")
    flat = pixels.ndim == 2
    image = (pixels[:, :, None] if flat else pixels).astype(np.int64)
    height, width = image.shape[:2]
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(width), float(height))
    f_left, f_top, f_right, f_bottom = (np.float32(v) for v in (left, top, right, bottom))
    need_horizontal = out_w != width or f_left != 0 or f_right != out_w
    need_vertical = out_h != height or f_top != 0 or f_bottom != out_h
    passes = []
    if need_horizontal:
        passes.append((1, filter_weights(width, left, right, out_w)))
    if need_vertical:
        passes.append((0, filter_weights(height, top, bottom, out_h)))
    if vertical_first(width, height, out_w, out_h):
        passes.reverse()
    for axis, (starts, weights) in passes:
        image = _pass_8bit(image, starts, weights, axis)
    result = image.astype(np.uint8)
    return result[:, :, 0] if flat else result


def reference_crop_box(width: int, height: int, out_w: int, out_h: int, policy: str) -> tuple[float, ...]:
    """``PREPROCESSING["crop_box"]``: the box for an image of ``width`` x ``height``."""
    if policy == "stretch":
        return (0.0, 0.0, float(width), float(height))
    if policy != "center_crop":
        raise ValueError(f"unknown resize policy {policy!r}")
    s = max(out_w / width, out_h / height)
    box_w, box_h = out_w / s, out_h / s
    left, top = (width - box_w) / 2, (height - box_h) / 2
    right, bottom = left + box_w, top + box_h
    return (min(max(left, 0.0), width), min(max(top, 0.0), height),
            min(max(right, 0.0), width), min(max(bottom, 0.0), height))


def _field(spec: Any, name: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(name, default)
    return getattr(spec, name, default)


def reference_preprocess(rgb_uint8: np.ndarray, input_spec: Any) -> np.ndarray:
    """``PREPROCESSING`` from 8-bit RGB on: float32 [3, H, W].

    ``input_spec``: an ``InputSpec`` or the manifest's ``input`` mapping (height, width, mean,
    std, resize, scale).
    """
    rgb = np.asarray(rgb_uint8)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("reference_preprocess expects uint8 [H, W, 3] RGB")
    out_h, out_w = int(_field(input_spec, "height")), int(_field(input_spec, "width"))
    policy = str(_field(input_spec, "resize", "stretch"))
    box = reference_crop_box(rgb.shape[1], rgb.shape[0], out_w, out_h, policy)
    resized = reference_resize(rgb, out_w, out_h, box)
    scale = np.float32(_field(input_spec, "scale", 1 / 255))
    mean = np.asarray(_field(input_spec, "mean"), np.float32)
    std = np.asarray(_field(input_spec, "std"), np.float32)
    values = (resized.astype(np.float32) * scale - mean) / std
    return np.ascontiguousarray(values.transpose(2, 0, 1))
