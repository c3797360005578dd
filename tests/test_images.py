"""Image input, preprocessing, heatmap mapping and memory of the torch-free runtime.

References are independent of the code under test: numpy rotations for EXIF, Pillow's own float
resize for heatmaps, the numpy reference resize (``preprocessing_spec``) for preprocessing, the
old blend formula for small overlays, and a child process's peak RSS for memory.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textcam.errors import TextcamError
from textcam.runtime import Explainer
from textcam.runtime import images as images_module
from textcam.runtime.bundle import InputSpec
from textcam.runtime.explanation import MAX_OVERLAY_PIXELS, blend, overlay_size
from textcam.runtime.heatmap import map_to_original, resize_map
from textcam.runtime.images import (
    DEFAULT_MAX_PIXELS,
    MEMORY_BUDGET_BYTES,
    Geometry,
    crop_box,
    load_image,
    preprocess,
    to_rgb,
)
from textcam.runtime.preprocessing_spec import (
    PREPROCESSING,
    PREPROCESSING_VERSION,
    reference_crop_box,
    reference_preprocess,
    reference_resize,
)
from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

ROOT = Path(__file__).resolve().parents[1]
SPEC = InputSpec(height=64, width=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="stretch")


def random_image(seed: int, width: int = 90, height: int = 70) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def explainer():
    return Explainer(DEFAULT_BUNDLE, batch_size=4)


@pytest.fixture(scope="module")
def crop_explainer(make_bundle, tmp_path_factory):
    copy = make_bundle("default", copy=tmp_path_factory.mktemp("crop") / "crop.textcam")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["input"]["resize"] = "center_crop"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return Explainer(copy)


# --- EXIF orientation --------------------------------------------------------------------------

# what each EXIF orientation does to the stored pixels, written with numpy alone
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),  # rotate 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


def save_with_orientation(path: Path, pixels: np.ndarray, orientation: int, **options) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **options)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_to_files_and_pil_images(tmp_path, orientation):
    stored = random_image(orientation, 30, 20)
    path = tmp_path / "o.png"
    save_with_orientation(path, stored, orientation)
    expected = UPRIGHT[orientation](stored)
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)
    opened = Image.open(path)
    np.testing.assert_array_equal(np.asarray(images_module.decode(opened)), expected)
    assert opened.size == (30, 20)  # the caller's image is left as it was


def test_portrait_jpeg_is_explained_upright(explainer, tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (230, 20, 20)  # the stored left half is red: after rotating clockwise it is on top
    path = tmp_path / "portrait.jpg"
    save_with_orientation(path, stored, 6, quality=95)
    image = load_image(path)
    assert image.size == (40, 60)
    upright = np.asarray(image).astype(int)
    assert upright[:25, :, 0].mean() > 200 and upright[35:, :, 0].mean() < 30
    result = explainer.explain(path)
    assert result.heatmap.shape == (60, 40)
    from_pil = explainer.explain(Image.open(path))
    np.testing.assert_array_equal(from_pil.heatmap, result.heatmap)
    assert result.overlay(Image.open(path)).size == (40, 60)
    assert result.overlay(path).size == (40, 60)


def test_sideways_overlay_base_is_refused(explainer, tmp_path):
    path = tmp_path / "portrait.png"
    save_with_orientation(path, random_image(1, 60, 40), 6)
    result = explainer.explain(path)
    with Image.open(path) as raw:
        stored = np.asarray(raw)  # an array carries no EXIF: still the stored, sideways pixels
    with pytest.raises(TextcamError, match=r"overlay image 60x40 is the heatmap's 40x60 turned sideways"):
        result.overlay(stored)


def test_broken_exif_counts_as_no_rotation(tmp_path):
    path = tmp_path / "broken.jpg"
    Image.fromarray(random_image(2, 30, 20)).save(path, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller's own open may warn; textcam's calls must not
        opened = Image.open(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "Corrupt EXIF data" stays inside
        assert load_image(path).size == (30, 20)
        assert images_module.decode(opened).size == (30, 20)


# --- crop box ------------------------------------------------------------------------------------


def test_crop_box_stays_inside_the_image_for_every_size():
    spec = InputSpec(224, 224, (0.5,) * 3, (0.5,) * 3, "center_crop")
    for width in range(1, 601):
        for height in range(1, 601):
            left, top, right, bottom = crop_box(width, height, spec)
            assert 0.0 <= left <= right <= width and 0.0 <= top <= bottom <= height, (width, height)
    outside = len(_sizes_outside())
    print(f"unclamped centre-crop box outside the image for {outside} of 360,000 sizes")
    assert outside > 1000  # the unclamped formula really leaves the image for many sizes


def _sizes_outside(limit: int = 600, out: int = 224) -> list[tuple[int, int]]:
    """Sizes whose unclamped centre-crop box leaves the image (Pillow raised ValueError on them)."""
    found = []
    for width in range(1, limit + 1):
        for height in range(1, limit + 1):
            scale = max(out / width, out / height)
            left, top = (width - out / scale) / 2, (height - out / scale) / 2
            if left < 0 or top < 0 or left + out / scale > width or top + out / scale > height:
                found.append((width, height))
    return found


def test_preprocess_never_raises_for_any_size():
    spec = InputSpec(224, 224, (0.5,) * 3, (0.5,) * 3, "center_crop")
    outside = _sizes_outside()
    rng = np.random.default_rng(0)
    picked = [outside[i] for i in rng.choice(len(outside), 400, replace=False)]
    edges = [(w, h) for w in range(1, 601, 7) for h in (1, 2, 223, 224, 225, 600)]
    for width, height in picked + edges + [(h, w) for w, h in edges]:
        tensor, geometry = preprocess(Image.new("RGB", (width, height), (10, 200, 30)), spec)
        assert tensor.shape == (3, 224, 224) and np.isfinite(tensor).all()
        assert geometry.width == width and geometry.height == height


def test_unknown_resize_policy_is_refused():
    spec = InputSpec(64, 64, (0.5,) * 3, (0.5,) * 3, "letterbox")
    with pytest.raises(TextcamError, match=r"bundle input resize 'letterbox'.*'stretch' and 'center_crop'"):
        preprocess(Image.new("RGB", (10, 10)), spec)


# --- reference preprocessing ---------------------------------------------------------------------


def _random_cases(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for index in range(count):
        kind = index % 4
        if kind == 0:  # tiny images
            width, height = (int(v) for v in rng.integers(1, 8, 2))
        elif kind == 1:  # downscaling, up to ~1000
            width, height = (int(v) for v in rng.integers(100, 1001, 2))
        else:
            width, height = (int(v) for v in rng.integers(1, 400, 2))
        out_w, out_h = (int(v) for v in rng.integers(1, 300, 2))
        policy = ("stretch", "center_crop")[index % 2]
        yield index, width, height, out_w, out_h, policy


def test_reference_resize_matches_pillow():
    exact = total = 0
    worst = 0
    for index, width, height, out_w, out_h, policy in _random_cases(160, 7):
        pixels = random_image(index, width, height)
        box = reference_crop_box(width, height, out_w, out_h, policy)
        pillow = np.asarray(Image.fromarray(pixels).resize((out_w, out_h), Image.Resampling.BILINEAR, box=box))
        diff = np.abs(pillow.astype(int) - reference_resize(pixels, out_w, out_h, box).astype(int))
        worst = max(worst, int(diff.max()))
        exact += int((diff == 0).sum())
        total += diff.size
    print(f"reference_resize vs Pillow: {exact / total:.6f} of {total} values exact, worst {worst}")
    assert worst <= 1
    assert exact / total > 0.99  # the statement is meant to be exact; a broken detail shows here


@pytest.mark.parametrize("policy", ["stretch", "center_crop"])
def test_reference_preprocess_within_one_grey_level(policy):
    exact = total = 0
    for index, width, height, out_w, out_h, _ in _random_cases(80, 11 if policy == "stretch" else 13):
        spec = InputSpec(out_h, out_w, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), policy)
        pixels = random_image(100 + index, width, height)
        tensor, geometry = preprocess(Image.fromarray(pixels), spec)
        reference = reference_preprocess(pixels, spec)
        assert reference.shape == tensor.shape == (3, out_h, out_w) and reference.dtype == np.float32
        grey = np.abs(tensor - reference) * np.asarray(spec.std, np.float32)[:, None, None] * 255
        assert grey.max() <= 1 + 1e-4, (width, height, out_w, out_h)
        assert geometry.box == reference_crop_box(width, height, out_w, out_h, policy)
        exact += int((tensor == reference).sum())
        total += tensor.size
    print(f"reference_preprocess ({policy}): {exact / total:.6f} of {total} values exact")


def test_reference_preprocess_takes_a_manifest_input_section():
    manifest = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["input"]
    pixels = random_image(3, 50, 77)
    bundle_spec = Explainer(DEFAULT_BUNDLE).bundle.input
    np.testing.assert_array_equal(reference_preprocess(pixels, manifest), preprocess(Image.fromarray(pixels),
                                                                                     bundle_spec)[0])


def test_preprocessing_statement_is_json():
    data = json.loads(json.dumps(PREPROCESSING))
    assert data["version"] == PREPROCESSING_VERSION == 1
    for key in ("decode", "color", "crop_box", "resize", "normalize", "layout"):
        assert key in data
    for word in ("2^22", "trunc", "float32", "vertical pass goes first", "round_half_up"):
        assert word in json.dumps(data)


def test_runtime_imports_no_torch():
    code = "import sys, textcam.runtime.images, textcam.runtime.preprocessing_spec, textcam.runtime.explanation; " \
           "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- heatmap mapping -----------------------------------------------------------------------------


def test_resize_map_equals_pillow_float_resize():
    rng = np.random.default_rng(5)
    for _ in range(120):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        height, width = (int(v) for v in rng.integers(1, 500, 2))
        cam = rng.random((h, w), dtype=np.float32)
        pillow = np.asarray(Image.fromarray(cam).resize((width, height), Image.Resampling.BILINEAR), np.float32)
        np.testing.assert_array_equal(resize_map(cam, width, height), pillow)


def test_map_to_original_center_crop_and_clip():
    cam = np.full((8, 8), 1.5, np.float32)  # beyond 1: the result is clamped
    cam[0, 0] = -1.0
    geometry = Geometry(100, 40, (30.0, 0.0, 70.0, 40.0))
    full = map_to_original(cam, geometry)
    assert full.dtype == np.float32 and full.shape == (40, 100)
    assert full[:, :30].max() == 0 and full[:, 70:].max() == 0
    assert full.min() == 0.0 and full.max() == 1.0 and full[20, 50] == 1.0


@pytest.mark.parametrize("size", [(1000, 1), (1, 1000), (1, 1), (3, 500)])
def test_thin_images_map_back(crop_explainer, size):
    width, height = size
    result = crop_explainer.explain(random_image(9, width, height))
    assert result.heatmap.shape == (height, width)
    assert result.heatmap.max() <= 1.0 and result.heatmap.min() >= 0.0


# --- overlays ------------------------------------------------------------------------------------


def old_blend(heat: np.ndarray, image: np.ndarray, alpha: float) -> np.ndarray:
    """The pre-banding overlay formula: full-size Pillow float resize, float32 blend."""
    if heat.shape != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat).resize((image.shape[1], image.shape[0]),
                                                        Image.Resampling.BILINEAR), np.float32)
    index = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    from textcam.runtime.colormaps import lookup_table

    colours = lookup_table("jet")[index].astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("heat_shape, size", [((64, 64), (90, 70)), ((70, 90), (90, 70)), ((7, 5), (1500, 900))])
def test_small_overlay_unchanged(heat_shape, size):
    heat = np.random.default_rng(1).random(heat_shape, dtype=np.float32)
    image = random_image(4, *size)
    for alpha in (0.0, 0.35, 1.0):
        np.testing.assert_array_equal(np.asarray(blend(heat, image, alpha)), old_blend(heat, image, alpha))


def test_large_overlay_is_bounded_and_keeps_aspect():
    heat = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    image = Image.new("RGB", (4000, 3000), (40, 80, 120))
    overlay = blend(heat, image, 0.5, max_pixels=1_000_000)
    assert overlay.width * overlay.height <= 1_000_000
    assert abs(overlay.width / overlay.height - 4 / 3) < 0.01
    assert overlay.size == overlay_size(4000, 3000, 1_000_000) == (1154, 866)
    # the colour ramp runs left to right, as in the map
    pixels = np.asarray(overlay).astype(int)
    assert pixels[433, 10, 2] > pixels[433, 1140, 2]
    assert MAX_OVERLAY_PIXELS == 16_000_000


@pytest.mark.parametrize("size", [(10**7, 3), (3, 10**7), (5000, 5000), (16_000_001, 1)])
def test_overlay_size_never_exceeds_the_cap(size):
    width, height = overlay_size(*size)
    assert width >= 1 and height >= 1 and width * height <= MAX_OVERLAY_PIXELS


def test_overlay_of_explained_file_is_capped(explainer, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (5000, 1000), (0, 128, 0)).save(path)
    result = explainer.explain(path)
    overlay = result.overlay(load_image(path), alpha=0.5)
    assert overlay.size == overlay_size(5000, 1000) and overlay.width * overlay.height <= 5_000_000


# --- Pillow's decompression-bomb warning ------------------------------------------------------------


def test_no_decompression_bomb_warning_escapes(explainer, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 80x80 = 6400 pixels: Pillow would warn
    path = tmp_path / "big.png"
    Image.fromarray(random_image(5, 80, 80)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller's own Image.open warns; textcam's calls must not
        lazy, lazy_again = Image.open(path), Image.open(path)
        rgba = Image.open(path).convert("RGBA")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = explainer.explain(path)
        explainer.explain(lazy)  # lazily opened: decoded inside textcam
        explainer.explain(random_image(5, 80, 80))
        list(explainer.explain_files([path]))
        result.overlay(lazy_again)
        result.overlay(path)
        to_rgb(rgba)


# --- bad inputs ----------------------------------------------------------------------------------


def _closed_image():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    image = Image.open(io.BytesIO(buffer.getvalue()))
    image.close()
    return image


def _truncated_pil():
    buffer = io.BytesIO()
    Image.fromarray(random_image(0, 200, 200)).save(buffer, format="JPEG")
    return Image.open(io.BytesIO(buffer.getvalue()[:3000]))


def _nan_f_image():
    array = np.zeros((4, 4), np.float32)
    array[1, 1] = np.nan
    return Image.fromarray(array, mode="F")


BAD_IMAGES = {
    # arrays: dtypes
    "float64 HxWx3": (lambda: np.zeros((10, 10, 3)), r"image array of dtype float64: .*floats: scale to 0-255"),
    "float32 HxWx3": (lambda: np.zeros((10, 10, 3), np.float32), r"dtype float32: expected uint8"),
    "float16 HxW": (lambda: np.zeros((10, 10), np.float16), r"dtype float16"),
    "bool HxW": (lambda: np.zeros((10, 10), bool), r"dtype bool: .*\(array \* 255\)\.astype\(np\.uint8\)"),
    "int64 HxWx3": (lambda: np.zeros((10, 10, 3), np.int64), r"dtype int64: .*astype\(np\.uint8\)"),
    "uint16 HxW": (lambda: np.zeros((10, 10), np.uint16), r"dtype uint16"),
    "int8 HxWx3": (lambda: np.zeros((10, 10, 3), np.int8), r"dtype int8"),
    "object array": (lambda: np.array([[None, 1], [2, 3]], dtype=object), r"dtype object"),
    "complex array": (lambda: np.zeros((4, 4, 3), np.complex64), r"dtype complex64"),
    "string array": (lambda: np.array([["a", "b"]]), r"dtype <U1"),
    "structured array": (lambda: np.zeros((4, 4), dtype=[("r", "u1"), ("g", "u1")]), r"image array of dtype"),
    # arrays: shapes
    "0-d uint8": (lambda: np.array(5, np.uint8), r"shape \(\): expected HxW"),
    "numpy scalar": (lambda: np.uint8(5), r"image of type uint8: pass a path"),
    "1-d uint8": (lambda: np.zeros(10, np.uint8), r"shape \(10,\): expected HxW"),
    "5-d uint8": (lambda: np.zeros((1, 1, 4, 4, 3), np.uint8), r"shape \(1, 1, 4, 4, 3\)"),
    "HxWx2": (lambda: np.zeros((10, 10, 2), np.uint8), r"shape \(10, 10, 2\): expected HxW, HxWx1, HxWx3"),
    "HxWx5": (lambda: np.zeros((10, 10, 5), np.uint8), r"shape \(10, 10, 5\)"),
    "channels first": (lambda: np.zeros((3, 32, 40), np.uint8), r"shape \(3, 32, 40\): looks channels-first"),
    "0x0": (lambda: np.zeros((0, 0), np.uint8), r"shape \(0, 0\).*0x0 image has no pixels"),
    "0xN": (lambda: np.zeros((0, 5, 3), np.uint8), r"5x0 image has no pixels"),
    "Nx0": (lambda: np.zeros((5, 0, 3), np.uint8), r"0x5 image has no pixels"),
    "0x0x4": (lambda: np.zeros((0, 0, 4), np.uint8), r"has no pixels"),
    "0-size float": (lambda: np.zeros((0, 3), np.float32), r"dtype float32"),
    # PIL images
    "PIL 0x0": (lambda: Image.new("RGB", (0, 0)), r"PIL image \(RGB\): 0x0 image has no pixels"),
    "PIL 0xN": (lambda: Image.new("L", (0, 7)), r"PIL image \(L\): 0x7 image has no pixels"),
    "PIL Nx0 RGBA": (lambda: Image.new("RGBA", (7, 0)), r"7x0 image has no pixels"),
    "PIL closed": (_closed_image, r"PIL image \(RGB, 8x8\): cannot read its pixels"),
    "PIL truncated": (_truncated_pil, r"PIL image \(RGB, 200x200\): cannot read its pixels"),
    "PIL F with NaN": (_nan_f_image, r"float \(mode F\) image 4x4: holds NaN values"),
    # other types
    "None": (lambda: None, r"image of type NoneType: pass a path, a PIL image"),
    "int": (lambda: 7, r"image of type int"),
    "float": (lambda: 0.5, r"image of type float"),
    "dict": (lambda: {"image": 1}, r"image of type dict"),
    "bytes": (lambda: b"\x89PNG....", r"image of type bytes: .*io\.BytesIO"),
    "bytearray": (lambda: bytearray(b"abc"), r"image of type bytearray"),
    "memoryview": (lambda: memoryview(b"abc"), r"image of type memoryview"),
    "nested list": (lambda: [[0, 1], [2, 3]], r"image of type list"),
    "batch in a list": (lambda: [np.zeros((1, 3, 64, 64), np.float32)], r"inside a list: pass a float"),
    "empty path": (lambda: "", r"image path '': empty"),
    "blank path": (lambda: "   ", r"image path '   ': empty"),
    "NUL in path": (lambda: "a\x00b.png", r"contains a NUL character"),
    "missing file": (lambda: "/nonexistent/x.png", r"/nonexistent/x.png: no such file"),
    "directory": (lambda: "/", r"/: is a directory"),
}

BAD_BATCHES = {
    "NaN batch": (lambda: np.full((2, 3, 64, 64), np.nan, np.float32), r"float batch holds NaN or Inf values"),
    "one NaN": (lambda: _with(np.zeros((3, 3, 64, 64), np.float32), (1, 0, 5, 5), np.nan),
                r"NaN or Inf values \(image 1 of 3\)"),
    "+Inf": (lambda: _with(np.zeros((1, 3, 64, 64), np.float32), (0, 2, 0, 0), np.inf), r"NaN or Inf"),
    "-Inf float64": (lambda: _with(np.zeros((1, 3, 64, 64)), (0, 0, 0, 0), -np.inf), r"NaN or Inf"),
    "float64 overflow": (lambda: _with(np.zeros((2, 3, 64, 64)), (1, 1, 1, 1), 1e300), r"NaN or Inf values \(image 1"),
    "float16 NaN": (lambda: _with(np.zeros((1, 3, 64, 64), np.float16), (0, 0, 3, 3), np.nan), r"NaN or Inf"),
    "wrong size": (lambda: np.zeros((2, 3, 32, 32), np.float32), r"float batch of shape \(2, 3, 32, 32\)"),
    "channels last": (lambda: np.zeros((2, 64, 64, 3), np.float32), r"shape \(2, 64, 64, 3\).*expected float32"),
    "uint8 batch": (lambda: np.zeros((2, 3, 64, 64), np.uint8), r"dtype uint8: expected float32"),
    "int batch": (lambda: np.zeros((2, 3, 64, 64), np.int32), r"dtype int32"),
    "bool batch": (lambda: np.zeros((2, 3, 64, 64), bool), r"dtype bool"),
    "complex batch": (lambda: np.zeros((1, 3, 64, 64), np.complex64), r"dtype complex64"),
    "object batch": (lambda: np.zeros((1, 3, 64, 64), object), r"dtype object"),
    "one channel": (lambda: np.zeros((1, 1, 64, 64), np.float32), r"shape \(1, 1, 64, 64\)"),
}


def _with(array, index, value):
    array[index] = value
    return array


def assert_one_line(error: TextcamError) -> None:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_inputs(explainer, name):
    make, message = BAD_IMAGES[name]
    item = make()
    several = isinstance(item, list) or (isinstance(item, np.ndarray) and item.ndim == 4)
    try:
        explainer.explain_batch(item) if several else explainer.explain(item)
    except TextcamError as error:
        assert_one_line(error)
        assert re.search(message, str(error)), str(error)
    else:
        pytest.fail(f"{name}: no error")


@pytest.mark.parametrize("name", sorted(BAD_BATCHES))
def test_bad_batches(explainer, name):
    make, message = BAD_BATCHES[name]
    with pytest.raises(TextcamError, match=message) as info:
        explainer.explain_batch(make())
    assert_one_line(info.value)


@pytest.mark.parametrize("name", ["0x0", "bool HxW", "float64 HxWx3", "channels first", "None", "PIL 0x0"])
def test_bad_images_inside_a_list(explainer, name):
    make, message = BAD_IMAGES[name]
    with pytest.raises(TextcamError, match=message) as info:
        explainer.explain_batch([random_image(0), make()])
    assert_one_line(info.value)


def test_nan_batch_never_returns_a_label(explainer):
    batch = np.zeros((2, 3, 64, 64), np.float32)
    batch[1, 0, 0, 0] = np.nan
    with pytest.raises(TextcamError):
        explainer.explain_batch(batch)
    assert len(explainer.explain_batch(batch[:1])) == 1  # the finite image alone is fine


BAD_FILES = {
    "empty": (b"", r"empty file"),
    "text": (b"not an image at all", r"not an image"),
    "png header only": (b"\x89PNG\r\n\x1a\n", r"not an image|cannot decode"),
    "truncated png": (None, r"cannot decode the image"),
    "zeros": (b"\x00" * 1000, r"not an image"),
    "gif header": (b"GIF89a\x10\x00\x10\x00", r"not an image|cannot decode"),
    "bmp header": (b"BM" + b"\x00" * 60, r"not an image|cannot decode"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files(explainer, tmp_path, name):
    content, message = BAD_FILES[name]
    if content is None:
        buffer = io.BytesIO()
        Image.fromarray(random_image(1, 120, 120)).save(buffer, format="PNG")
        content = buffer.getvalue()[:300]
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    for call in (lambda: load_image(path), lambda: explainer.explain(path)):
        with pytest.raises(TextcamError, match=message) as info:
            call()
        assert str(path) in str(info.value)
        assert_one_line(info.value)
    (found, error), = list(explainer.explain_files([path]))
    assert found == path and isinstance(error, TextcamError)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images_module.Image, "open", refuse)  # chmod does not stop root, who runs CI here
    with pytest.raises(TextcamError, match=r"secret.png: permission denied; make the file readable"):
        load_image(path)


@pytest.mark.parametrize(
    "max_pixels, message",
    [(0, r"max_pixels=0: expected a positive"), (-5, r"max_pixels=-5"), (1.5, r"max_pixels=1.5"),
     (None, r"max_pixels=None"), (True, r"max_pixels=True"), (99, r"10x10 is larger than the 99-pixel limit")],
)
def test_bad_max_pixels(tmp_path, max_pixels, message):
    path = tmp_path / "x.png"
    Image.new("RGB", (10, 10)).save(path)
    with pytest.raises(TextcamError, match=message):
        load_image(path, max_pixels)


@pytest.mark.parametrize("kind", ["array", "pil", "file"])
def test_pixel_cap_applies_to_every_input(tmp_path, kind):
    small = Explainer(DEFAULT_BUNDLE, max_pixels=1000)
    pixels = random_image(2, 50, 40)
    item = {"array": pixels, "pil": Image.fromarray(pixels), "file": tmp_path / "p.png"}[kind]
    Image.fromarray(pixels).save(tmp_path / "p.png")
    with pytest.raises(TextcamError, match=r"50x40 is larger than the 1,000-pixel limit; downscale it or raise"):
        small.explain(item)


@pytest.mark.parametrize(
    "heat, alpha, colormap, message",
    [
        (np.zeros((4, 4)), 1.5, "jet", r"alpha 1.5: expected a value between 0 and 1"),
        (np.zeros((4, 4)), -0.1, "jet", r"alpha -0.1"),
        (np.zeros((4, 4)), float("nan"), "jet", r"alpha nan"),
        (np.zeros((4, 4)), "0.5", "jet", r"alpha '0.5'"),
        (np.zeros((4, 4)), None, "jet", r"alpha None"),
        (np.zeros((4, 4)), 0.5, "viridis", r"colormap 'viridis': choose one of"),
        (np.zeros((4, 4, 1)), 0.5, "jet", r"heatmap of shape \(4, 4, 1\)"),
        (np.zeros((0, 4)), 0.5, "jet", r"heatmap of shape \(0, 4\)"),
        (np.zeros(4), 0.5, "jet", r"heatmap of shape \(4,\)"),
        (np.array([["a"]]), 0.5, "jet", r"heatmap of shape \(1, 1\) and dtype <U1"),
        (np.full((4, 4), np.nan), 0.5, "jet", r"heatmap of shape \(4, 4\): holds NaN values"),
    ],
)
def test_bad_blend_arguments(heat, alpha, colormap, message):
    with pytest.raises(TextcamError, match=message) as info:
        blend(heat, random_image(0, 8, 8), alpha, colormap)
    assert_one_line(info.value)


@pytest.mark.parametrize(
    "image, message",
    [
        (None, r"overlay image of type NoneType: pass the PIL image, uint8 array or path"),
        (42, r"overlay image of type int"),
        (np.zeros((8, 8, 3), np.float32), r"image array of dtype float32"),
        (np.zeros((0, 8, 3), np.uint8), r"has no pixels"),
        (Image.new("RGB", (0, 3)), r"0x3 image has no pixels"),
        ("/nonexistent/o.png", r"/nonexistent/o.png: no such file"),
    ],
)
def test_bad_overlay_images(explainer, image, message):
    result = explainer.explain(random_image(0))
    with pytest.raises(TextcamError, match=message) as info:
        result.overlay(image)
    assert_one_line(info.value)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "PA", "1", "CMYK", "I;16", "I", "F", "YCbCr", "RGBX"])
def test_every_mode_converts_like_the_statement(mode):
    base = Image.fromarray(random_image(6, 1500, 800))  # over BAND_PIXELS: the banded path
    image = {"I;16": lambda: Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257),
             "I": lambda: base.convert("L").convert("I"),
             "F": lambda: Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255),
             "PA": lambda: base.convert("RGBA").convert("PA")}.get(mode, lambda: base.convert(mode))()
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == image.size
    corner = image.crop((0, 0, 40, 30))  # small: converted whole, no bands
    np.testing.assert_array_equal(np.asarray(converted)[:30, :40], np.asarray(to_rgb(corner)))
    if mode == "RGBA":
        rgba = np.asarray(image).astype(np.int64)
        expected = np.floor(rgba[..., :3] * rgba[..., 3:] / 255 + 0.5)  # composite on black, as stated
        np.testing.assert_array_equal(np.asarray(converted), expected)


# --- files that cannot be decoded ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"not an image at all", "not an image")],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(TextcamError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(random_image(6, 300, 300)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(TextcamError, match=r"cut\.jpg: cannot decode"):
        load_image(path)


def test_huge_image_refused_without_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (20000, 20000)).save(path, optimize=False)  # compresses to a small file
    with pytest.raises(TextcamError, match=r"huge.png: .*limit"):
        load_image(path)


# --- memory -------------------------------------------------------------------------------------

MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    from textcam.runtime import Explainer
    from textcam.runtime.images import load_image
    from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

    explainer = Explainer(DEFAULT_BUNDLE, backend_options={"intra_op_threads": 1})
    explainer.explain(np.zeros((32, 32, 3), np.uint8))
    open("/proc/self/clear_refs", "w").write("5")  # restart the high-water mark from here
    baseline = rss("VmRSS")
    result = explainer.explain(sys.argv[1])
    overlay = result.overlay(load_image(sys.argv[1]))
    print(json.dumps({"extra": rss("VmHWM") - baseline, "heatmap": list(result.heatmap.shape),
                      "overlay": list(overlay.size)}))
    """
)

MAKE_PNG = textwrap.dedent(
    """
    import sys
    import numpy as np
    from PIL import Image
    width, height = int(sys.argv[2]), int(sys.argv[3])
    image = Image.new("RGB", (width, height))
    band = np.random.default_rng(0).integers(0, 256, (512, width, 3), dtype=np.uint8)
    for top in range(0, height, 512):
        image.paste(Image.fromarray(band[: min(512, height - top)]), (0, top))
    image.save(sys.argv[1], compress_level=1)
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_explain_and_overlay_stay_within_the_memory_budget(tmp_path):
    width, height = 6400, 4700  # ~30 MP
    path = tmp_path / "big.png"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, "-c", MAKE_PNG, str(path), str(width), str(height)], check=True, env=env)
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    pixels = width * height
    allowed = MEMORY_BUDGET_BYTES * pixels / DEFAULT_MAX_PIXELS
    print(f"explain + overlay of {pixels:,} pixels: {report['extra'] / 1e6:.0f} MB, allowed {allowed / 1e6:.0f} MB")
    assert report["heatmap"] == [height, width]
    assert report["overlay"][0] * report["overlay"][1] <= MAX_OVERLAY_PIXELS
    assert report["extra"] <= allowed


def test_default_cap_follows_from_the_budget():
    per_pixel = images_module.BYTES_PER_PIXEL
    fixed = 4 * MAX_OVERLAY_PIXELS + images_module.OVERLAY_WORKSPACE_BYTES
    assert DEFAULT_MAX_PIXELS * per_pixel + fixed <= MEMORY_BUDGET_BYTES
    assert (DEFAULT_MAX_PIXELS + 10**6) * per_pixel + fixed > MEMORY_BUDGET_BYTES
    assert math.isclose(DEFAULT_MAX_PIXELS, 72e6)
