"""How a target layer's output maps onto a [B, C, h, w] grid.

CNN layers already give NCHW. Vision transformers give tokens [B, N, C] (a class token and
maybe register tokens first, then a row-major patch grid); Swin gives channels-last
[B, h, w, C]. The explained map is always computed on the NCHW view.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from textcam.errors import TextcamError

LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


@dataclass(frozen=True)
class Layout:
    kind: str  # "nchw" | "nhwc" | "tokens"
    channels: int
    grid: tuple[int, int]
    prefix_tokens: int = 0

    def to_grid(self, output: Tensor) -> Tensor:
        if self.kind == "nchw":
            return output
        if self.kind == "nhwc":
            return output.permute(0, 3, 1, 2)
        tokens = output[:, self.prefix_tokens :, :]
        h, w = self.grid
        return tokens.reshape(tokens.shape[0], h, w, self.channels).permute(0, 3, 1, 2)

    def describe(self) -> dict:
        return asdict(self)


def _token_layout(shape: torch.Size, input_hw: tuple[int, int], prefix: int | None) -> Layout:
    _, n, c = shape
    candidates = [prefix] if prefix is not None else range(0, min(n, 9))
    for extra in candidates:
        patches = n - extra
        # the grid must have the input's aspect ratio: gh / gw == H / W
        gh = math.isqrt(patches * input_hw[0] // input_hw[1]) if patches > 0 else 0
        if gh and patches % gh == 0 and gh * input_hw[1] == (patches // gh) * input_hw[0]:
            return Layout("tokens", c, (gh, patches // gh), extra)
    raise TextcamError(
        f"layer output of shape {tuple(shape)} is not a token grid for a {input_hw[0]}x{input_hw[1]} "
        "input; choose a layer with a spatial output"
    )


def infer_layout(
    output: Tensor, model: torch.nn.Module, input_hw: tuple[int, int], layout: str = "auto"
) -> Layout:
    """Decide how ``output`` (the target layer's output on an example batch) becomes a grid."""
    if layout not in LAYOUTS:
        raise TextcamError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    shape = output.shape
    if layout == "tokens" or (layout == "auto" and output.dim() == 3):
        if output.dim() != 3:
            raise TextcamError(f"layout=tokens needs a [B, N, C] output, the layer gives {tuple(shape)}")
        return _token_layout(shape, input_hw, _known_prefix_tokens(model))
    if output.dim() != 4:
        raise TextcamError(
            f"the layer's output has shape {tuple(shape)}, which has no spatial grid; "
            "choose a convolutional or transformer-block layer"
        )
    if layout == "nhwc" or (layout == "auto" and _is_channels_last_family(model) and _reads_as_channels_last(shape,
                                                                                                          input_hw)):
        return Layout("nhwc", shape[3], (shape[1], shape[2]))
    if layout == "auto" and not _image_like(shape[2], shape[3], input_hw):
        # attention's [B, heads, tokens, head_dim] (timm's q_norm / k_norm), say: 4-d, but no grid
        raise TextcamError(
            f"the layer's output has shape {tuple(shape)}, whose last two sizes are not a grid over a "
            f"{input_hw[0]}x{input_hw[1]} image (another aspect ratio); choose another layer, or pass "
            "layout='nchw' if they are"
        )
    return Layout("nchw", shape[1], (shape[2], shape[3]))


def _image_like(h: int, w: int, input_hw: tuple[int, int]) -> bool:
    """Whether an h x w grid has the input's aspect ratio, within a factor of 2 (strides and
    padding round odd sizes; a [tokens, head_dim] pair such as 197 x 64 is off by 3)."""
    ratio = (h * input_hw[1]) / (w * input_hw[0])
    return 0.5 <= ratio <= 2.0


def _reads_as_channels_last(shape: torch.Size, input_hw: tuple[int, int]) -> bool:
    """In a channels-last family, is this 4-d output [B, h, w, C]? Its blocks are, but the model's
    own ``permute`` back to [B, C, h, w] and the pooling after it are not: an [h, w] reading must
    have the input's aspect ratio and fit inside it, and the [C, h] one of a channels-first
    tensor does not."""
    h, w = int(shape[1]), int(shape[2])
    return h * input_hw[1] == w * input_hw[0] and h <= input_hw[0] and w <= input_hw[1]


def _known_prefix_tokens(model: torch.nn.Module) -> int | None:
    """Class + register tokens for families that say so (timm: num_prefix_tokens)."""
    if hasattr(model, "num_prefix_tokens"):
        return int(model.num_prefix_tokens)
    if type(model).__name__ == "VisionTransformer" and hasattr(model, "class_token"):
        return 1  # torchvision ViT
    return None


def _is_channels_last_family(model: torch.nn.Module) -> bool:
    """Swin (torchvision and timm) keeps its feature maps channels-last."""
    return "swin" in type(model).__name__.lower()
