"""Image decoding and preprocessing, implemented once for every input type.

Accepted inputs: a path, a PIL image, a uint8 HxWx3 (or HxW) array, or a float [B,3,H,W] batch
that is already preprocessed. Every decoded image becomes RGB, is resized to the graph's input
size by the bundle's policy, scaled and normalized. A :class:`Geometry` records where the graph
input came from in the original image so the heatmap can be mapped back.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from textcam.errors import TextcamError, first_line
from textcam.runtime.bundle import InputSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# Memory: explaining one image and writing its overlay (``textcam explain --out``) should fit in
# MEMORY_BUDGET_BYTES. What scales with the image's pixel count, per pixel:
#   4 B  the decoded image (Pillow keeps RGB as 4 bytes a pixel)
#   4 B  a second decoded copy while decoding: the EXIF rotation, or the mode conversion (RGBA,
#        16-bit, palette ...; done in row bands, so only the RGB result is whole)
#   4 B  the heatmap, float32 at the image's resolution
# = 12 B. The overlay is built at most MAX_OVERLAY_PIXELS large (4 B a pixel for the RGB result)
# in row bands (OVERLAY_WORKSPACE_BYTES of temporaries), whatever the image size. So the cap is
# (1 GB - 16 MP * 4 B - 64 MB) / 12 B = 72.7 MP, rounded down to a whole megapixel. Channel groups
# (``explain(groups=True)``) add 4 B per pixel per group on top.
MEMORY_BUDGET_BYTES = 1_000_000_000
BYTES_PER_PIXEL = 12
MAX_OVERLAY_PIXELS = 16_000_000
OVERLAY_WORKSPACE_BYTES = 64_000_000
DEFAULT_MAX_PIXELS = (
    (MEMORY_BUDGET_BYTES - 4 * MAX_OVERLAY_PIXELS - OVERLAY_WORKSPACE_BYTES) // BYTES_PER_PIXEL // 10**6 * 10**6
)
BAND_PIXELS = 1 << 18
"""Row bands of about this many pixels bound the temporaries of conversions and overlays."""

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class Geometry:
    """The original image size and the box (left, top, right, bottom) the graph input shows."""

    width: int
    height: int
    box: tuple[float, float, float, float]


def check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    """Refuse images without pixels or with more than ``max_pixels``, naming ``what``."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise TextcamError(f"max_pixels={max_pixels!r}: expected a positive whole number of pixels")
    if width < 1 or height < 1:
        raise TextcamError(f"{what}: {width}x{height} image has no pixels")
    if width * height > max_pixels:
        raise TextcamError(
            f"{what}: {width}x{height} is larger than the {max_pixels:,}-pixel limit; "
            "downscale it or raise max_pixels"
        )


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None) -> Image.Image:
    """Decode ``path`` to an upright RGB PIL image, or raise a one-line TextcamError naming the file.

    With ``data``, those bytes are decoded instead of the file and ``path`` only names them in
    messages (a member of a probe shard, read without unpacking it to disk).

    The EXIF orientation is applied, so a portrait photo comes out portrait (and its heatmap too).
    """
    if isinstance(path, str) and not path.strip():
        raise TextcamError(f"image path {path!r}: empty; pass a file name")
    path = Path(path)
    if "\x00" in str(path):
        raise TextcamError(f"image path {str(path)!r}: contains a NUL character")
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise TextcamError(f"{path}: empty file")
        # Pillow warns above MAX_IMAGE_PIXELS (textcam's own max_pixels decides instead) and about
        # corrupt metadata or palette transparency, which the conversion below handles: none of it
        # is the caller's to act on
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                check_size(image.width, image.height, max_pixels, str(path))
                image.load()
                orientation = exif_orientation(image)
                rgb = to_rgb(image)
                if rgb is not image:
                    image.close()  # frees the decoded pixels before the rotation copies
                return upright(rgb, orientation)
    except TextcamError:
        raise
    except FileNotFoundError:
        raise TextcamError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TextcamError(f"{path}: is a directory") from None
    except PermissionError:
        raise TextcamError(f"{path}: permission denied; make the file readable") from None
    except Image.DecompressionBombError:
        raise TextcamError(
            f"{path}: larger than Pillow's decompression-bomb limit ({2 * Image.MAX_IMAGE_PIXELS:,} pixels); "
            "downscale it"
        ) from None
    except UnidentifiedImageError:
        raise TextcamError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except MemoryError:
        raise TextcamError(f"{path}: not enough memory to decode it; downscale it or lower max_pixels") from None
    except Exception as exc:  # corrupt files make Pillow raise many types
        raise TextcamError(
            f"{path}: cannot decode the image ({type(exc).__name__}: {first_line(exc)}); is it truncated or corrupt?"
        ) from None


def decode(item: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """One image input (path, PIL image, uint8 array) to an upright RGB PIL image."""
    if isinstance(item, (str, Path)):
        return load_image(item, max_pixels)
    if isinstance(item, Image.Image):
        return from_pil(item, max_pixels)
    if isinstance(item, np.ndarray):
        if item.ndim == 4:
            raise TextcamError(
                f"image array of shape {item.shape} inside a list: pass a float [B,3,H,W] batch on its own, "
                "not in a list"
            )
        return array_to_image(item, max_pixels)
    if isinstance(item, (bytes, bytearray, memoryview)):
        raise TextcamError(
            f"image of type {type(item).__name__}: for encoded file bytes pass PIL.Image.open(io.BytesIO(data))"
        )
    raise TextcamError(
        f"image of type {type(item).__name__}: pass a path, a PIL image, a uint8 HxWx3 array or a "
        "float [B,3,H,W] batch"
    )


def from_pil(image: Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A caller's PIL image as upright RGB; the caller's image is never changed."""
    check_size(image.width, image.height, max_pixels, f"PIL image ({image.mode})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as in load_image
            image.load()  # a lazily opened file decodes here
            return upright(to_rgb(image), exif_orientation(image))
    except TextcamError:
        raise
    except MemoryError:
        raise TextcamError("PIL image: not enough memory to convert it; downscale it") from None
    except Exception as exc:  # a lazily opened, corrupt or closed file fails here
        raise TextcamError(
            f"PIL image ({image.mode}, {image.width}x{image.height}): cannot read its pixels "
            f"({type(exc).__name__}: {first_line(exc)}); is its file closed, truncated or corrupt?"
        ) from None


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1-8), or 1 when there is none or the EXIF block cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF; unreadable means no rotation
            value = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: show the pixels as stored, as viewers do
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned as its EXIF ``orientation`` says (a new image; the same one for 1).

    The turned image no longer carries the orientation (Pillow copies the metadata): decoding it
    again, e.g. as an overlay's base, must not turn it a second time.
    """
    method = _TRANSPOSE.get(orientation)
    if method is None:
        return image
    turned = image.transpose(method)
    for key in ("exif", "xmp", "XML:com.adobe.xmp"):
        turned.info.pop(key, None)
    return turned


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (grayscale, 16-bit, palette, RGBA, CMYK) to 8-bit RGB; alpha composited on black.

    Large images are converted in row bands: the result is the same, and only the RGB result is
    held whole (see the memory note at ``DEFAULT_MAX_PIXELS``).
    """
    if image.mode == "RGB":
        return image
    top = None
    if image.mode in _SIXTEEN_BIT:
        # one scale for the whole image, whichever band a pixel is in
        top = 65535.0 if (image.getextrema()[1] or 0) > 255 else 255.0
    width, height = image.size
    if width * height <= BAND_PIXELS:
        return _convert(image, top)
    result = Image.new("RGB", image.size)
    rows = max(1, BAND_PIXELS // width)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        result.paste(_convert(_rows(image, y0, y1), top), (0, y0))
    return result


def _rows(image: Image.Image, y0: int, y1: int) -> Image.Image:
    # a same-size integer box is a plain cut in Pillow's C code: unlike crop(), no bomb check
    return image.resize((image.width, y1 - y0), Image.Resampling.NEAREST, box=(0, y0, image.width, y1))


def _convert(image: Image.Image, top: float | None) -> Image.Image:
    if image.mode in _SIXTEEN_BIT:
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if np.isnan(array).any():
            raise TextcamError(f"float (mode F) image {image.width}x{image.height}: holds NaN values")
        return Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def array_to_image(array: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A uint8 HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) array as an RGB PIL image."""
    if array.dtype != np.uint8:
        kind = array.dtype.kind
        hint = (
            "booleans: use (array * 255).astype(np.uint8)" if kind == "b"
            else "floats: scale to 0-255 and .astype(np.uint8), or pass a float [B,3,H,W] batch already "
                 "preprocessed" if kind == "f"
            else "integers: .astype(np.uint8) if the values are 0-255" if kind in "iu"
            else "pass uint8 HxWx3 pixels"
        )
        raise TextcamError(f"image array of dtype {array.dtype}: expected uint8 pixels; {hint}")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        raise TextcamError(
            f"image array of shape {array.shape}: looks channels-first; pass HxWx3, e.g. array.transpose(1, 2, 0)"
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise TextcamError(f"image array of shape {array.shape}: expected HxW, HxWx1, HxWx3 or HxWx4 uint8")
    check_size(array.shape[1], array.shape[0], max_pixels, f"image array of shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return to_rgb(Image.fromarray(array))


def crop_box(width: int, height: int, spec: InputSpec) -> tuple[float, float, float, float]:
    """The region of the original image the graph sees (``PREPROCESSING["crop_box"]``)."""
    if spec.resize == "center_crop":
        # scale the shorter side to the input, then cut the centre at the input's aspect ratio
        scale = max(spec.width / width, spec.height / height)
        box_w, box_h = spec.width / scale, spec.height / scale
        left, top = (width - box_w) / 2, (height - box_h) / 2
        # rounding can put an edge a hair outside (-3.6e-15), which Pillow refuses
        return (min(max(left, 0.0), width), min(max(top, 0.0), height),
                min(max(left + box_w, 0.0), width), min(max(top + box_h, 0.0), height))
    if spec.resize != "stretch":
        raise TextcamError(
            f"bundle input resize {spec.resize!r}: this runtime knows 'stretch' and 'center_crop'; "
            "upgrade textcam or re-export the bundle"
        )
    return (0.0, 0.0, float(width), float(height))


def preprocess(image: Image.Image, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """RGB image -> float32 [3, H, W] graph input, plus where it came from.

    Exactly as ``textcam.runtime.preprocessing_spec.PREPROCESSING`` states.
    """
    if image.mode != "RGB":
        image = to_rgb(image)
    if image.width < 1 or image.height < 1:
        raise TextcamError(f"image {image.width}x{image.height}: has no pixels")
    box = crop_box(image.width, image.height, spec)
    resized = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(resized, dtype=np.float32) * np.float32(spec.scale)
    pixels = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), Geometry(image.width, image.height, box)


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand directories (non-recursively, sorted) into the image files they hold."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            images = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise TextcamError(f"{entry}: directory holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(images)
        else:
            found.append(entry)
    return found
