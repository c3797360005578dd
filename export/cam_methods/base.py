"""What every CAM method returns, and the weighted sum most of them share.

A CAM method is a pure function of the target layer's activations ``A`` [B, C, h, w] and the
gradients ``G = d y_c / d A`` [B, C, h, w] of the chosen class score. It runs inside the traced
graph, so it may only use tensor operations (no Python branching on values, no numpy).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class CamOutput(NamedTuple):
    channel_weights: Tensor
    """[B, C] the per-channel weights w (for element-wise methods: their spatial mean)."""
    saliency: Tensor
    """[B, h, w] the map before ReLU and normalization."""


def weighted_channel_sum(weights: Tensor, activations: Tensor) -> CamOutput:
    """sum_k w_k A_k, the map shared by all channel-weight methods."""
    saliency = (weights[:, :, None, None] * activations).sum(dim=1)
    return CamOutput(weights, saliency)


def elementwise_sum(weight_map: Tensor, activations: Tensor) -> CamOutput:
    """sum_k W_k * A_k with a per-position weight map W; reports mean_ij W_k as the weights."""
    saliency = (weight_map * activations).sum(dim=1)
    return CamOutput(weight_map.mean(dim=(2, 3)), saliency)


def spatial_sum(tensor: Tensor) -> Tensor:
    return tensor.sum(dim=(2, 3), keepdim=True)

