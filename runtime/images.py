"""Image decoding and preprocessing, implemented once for every input type.

Accepted inputs: a path, a PIL image, a uint8 HxWx3 (or HxW) array, or a float [B,3,H,W] batch
that is already preprocessed. Every decoded image becomes RGB, is resized to the graph's input
size by the bundle's policy, scaled and normalized. A :class:`Geometry` records where the graph
input came from in the original image so the heatmap can be mapped back.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from textcam.errors import TextcamError
from textcam.runtime.bundle import InputSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_MAX_PIXELS = 100_000_000  # decoded RGB at this size is 300 MB; larger images are refused


@dataclass(frozen=True)
class Geometry:
    """The original image size and the box (left, top, right, bottom) the graph input shows."""

    width: int
    height: int
    box: tuple[float, float, float, float]


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` to an RGB PIL image, or raise a one-line TextcamError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise TextcamError(f"{path}: empty file")
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise TextcamError(
                    f"{path}: {image.width}x{image.height} is larger than the {max_pixels:,}-pixel limit; "
                    "downscale it or raise max_pixels"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
            return to_rgb(image)
    except TextcamError:
        raise
    except FileNotFoundError:
        raise TextcamError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TextcamError(f"{path}: is a directory") from None
    except Image.DecompressionBombError:
        raise TextcamError(
            f"{path}: larger than Pillow's decompression-bomb limit ({2 * Image.MAX_IMAGE_PIXELS:,} pixels); "
            "downscale it"
        ) from None
    except UnidentifiedImageError:
        raise TextcamError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise TextcamError(f"{path}: cannot decode the image ({exc}); is it truncated or corrupt?") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (grayscale, 16-bit, palette, RGBA, CMYK) to 8-bit RGB; alpha composited on black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise TextcamError(
            f"image array of dtype {array.dtype}: pass uint8 HxWx3 pixels, or a float [B,3,H,W] batch "
            "that is already preprocessed"
        )
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        return to_rgb(Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array))
    raise TextcamError(f"image array of shape {array.shape}: expected HxW, HxWx3 or HxWx4 uint8")


def crop_box(width: int, height: int, spec: InputSpec) -> tuple[float, float, float, float]:
    """The region of the original image the graph sees."""
    if spec.resize == "center_crop":
        # scale the shorter side to the input, then cut the centre at the input's aspect ratio
        scale = max(spec.width / width, spec.height / height)
        box_w, box_h = spec.width / scale, spec.height / scale
        left, top = (width - box_w) / 2, (height - box_h) / 2
        return (left, top, left + box_w, top + box_h)
    return (0.0, 0.0, float(width), float(height))


def preprocess(image: Image.Image, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """RGB image -> float32 [3, H, W] graph input, plus where it came from."""
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
