"""The HTTP side of the Ray Serve application, kept free of Ray: request checks and JSON answers.

Every check raises :class:`HttpError` (an HTTP status and one line); the deployment turns it into
``{"error": "<one line>"}`` with that status. Nothing here needs Ray, so it is tested and reused
(the benchmark encodes answers the same way) without a cluster::

    from textcam.serving.ray_http import HttpError, parse_query
    parse_query({"class_index": "3", "heatmap": "png"}, num_classes=8)   # -> (3, 'png')
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from textcam.errors import TextcamError, first_line
from textcam.runtime.explanation import Explanation
from textcam.runtime.images import check_size

IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
"""Content types ``POST /explain`` takes; the body is decoded by its bytes, whichever is given."""
HEATMAP_MODES = ("png", "array")
QUERY_PARAMETERS = ("class_index", "heatmap")
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


class HttpError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message`` for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = one_line(message)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` as one line (line breaks become spaces), at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


def error_body(message: str) -> dict[str, str]:
    """The JSON body of every refusal: ``{"error": "<one line>"}``."""
    return {"error": one_line(message)}


def check_content_type(value: str | None) -> None:
    """Refuse (415) a body that is not sent as an image; no header counts as octet-stream
    (the bytes decide what the image is)::

        check_content_type("image/png; charset=binary")   # passes
    """
    if value is None or not value.strip():
        return
    kind = value.split(";", 1)[0].strip().lower()
    if kind not in IMAGE_TYPES:
        raise HttpError(415, f"Content-Type {kind!r}: send the image's bytes as {', '.join(IMAGE_TYPES)} "
                             "(curl: -H 'Content-Type: image/png' --data-binary @image.png)")


def check_length(header: str | None, limit: int) -> None:
    """Refuse (413) a body whose declared Content-Length is over ``limit`` bytes, before reading it."""
    if header is None:
        return
    try:
        length = int(header)
    except ValueError:
        raise HttpError(400, f"Content-Length {header!r}: not a number") from None
    if length > limit:
        raise HttpError(413, too_large(limit))


def too_large(limit: int) -> str:
    return f"body larger than the server's limit of {limit:,} bytes; downscale the image or raise max_body_bytes"


def parse_query(params: Mapping[str, str], num_classes: int) -> tuple[int | None, str | None]:
    """(class_index or None for the predicted class, heatmap mode or None) from the query string;
    400 for an unknown parameter, a class index that is not an integer in range, or a bad mode::

        parse_query({}, 8)                       # (None, None)
        parse_query({"heatmap": "array"}, 8)     # (None, 'array')
    """
    for name in params:
        if name not in QUERY_PARAMETERS:
            raise HttpError(400, f"query parameter {name!r}: unknown; the parameters are "
                                 f"{', '.join(QUERY_PARAMETERS)}")
    class_index = None
    if "class_index" in params:
        text = params["class_index"].strip()
        try:
            class_index = int(text)
        except ValueError:
            raise HttpError(400, f"class_index {text!r}: not an integer; pass 0..{num_classes - 1} "
                                 "(or -1 / omit it for the predicted class)") from None
        if not -1 <= class_index < num_classes:
            raise HttpError(400, f"class_index {class_index} out of range: the model has {num_classes} classes "
                                 f"(0..{num_classes - 1}; -1 or omitted = predicted)")
        if class_index == -1:
            class_index = None
    heatmap = params.get("heatmap")
    if heatmap is not None:
        heatmap = heatmap.strip().lower()
        if heatmap in ("", "none"):
            heatmap = None
        elif heatmap not in HEATMAP_MODES:
            raise HttpError(400, f"heatmap {heatmap!r}: expected png (a base64 8-bit PNG) or array "
                                 "(nested lists of floats)")
    return class_index, heatmap


def open_image(body: bytes, max_pixels: int) -> Image.Image:
    """The request body opened and decoded as the runtime opens a file (first frame, pixels loaded),
    colour conversion and EXIF orientation still to come in ``Explainer``; 400 when it is not an
    image, is truncated, or has more than ``max_pixels`` pixels (checked before decoding)."""
    if not body:
        raise HttpError(400, "empty body: send the image's bytes (curl --data-binary @image.png)")
    # as textcam.runtime.images.load_image: Pillow's own warnings are not the client's to act on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(body))
            check_size(image.width, image.height, max_pixels, "image")
            image.load()
        except TextcamError as exc:
            raise HttpError(400, str(exc)) from None
        except UnidentifiedImageError:
            raise HttpError(400, "the body is not an image (or a format Pillow cannot read); send PNG or JPEG "
                                 "bytes") from None
        except Image.DecompressionBombError:
            raise HttpError(400, "image larger than Pillow's decompression-bomb limit; downscale it") from None
        except Exception as exc:  # corrupt files make Pillow raise many types
            raise HttpError(400, f"cannot decode the image ({type(exc).__name__}: {first_line(exc)}); is it "
                                 "truncated or corrupt?") from None
    return image


def heatmap_png(heatmap: np.ndarray) -> str:
    """The [0, 1] map as a base64 8-bit greyscale PNG (value = round(255 * map)), same size as the image."""
    levels = np.clip(np.rint(np.asarray(heatmap, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(levels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation_payload(result: Explanation, heatmap: str | None = None) -> dict[str, Any]:
    """The JSON answer for one explanation::

        {"label": "green", "score": 0.99, "class_index": 1, "heatmap_shape": [48, 64],
         "concepts": [{"phrase": "green object", "score": 0.41, "weight": 0.7}, ...]}

    plus ``"heatmap"``: a base64 PNG (``heatmap="png"``) or nested lists of floats (``"array"``;
    float32 values, exact in JSON).
    """
    payload: dict[str, Any] = {
        "label": result.label,
        "score": float(result.score),
        "class_index": int(result.class_index),
        "concepts": [{"phrase": c.phrase, "score": float(c.score), "weight": float(c.weight)}
                     for c in result.concepts],
        "heatmap_shape": [int(v) for v in result.heatmap.shape],
    }
    if heatmap == "png":
        payload["heatmap"] = heatmap_png(result.heatmap)
    elif heatmap == "array":
        payload["heatmap"] = result.heatmap.astype(np.float64).tolist()
    return payload
