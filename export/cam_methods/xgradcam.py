"""XGrad-CAM (Fu et al., 2020): w_k = sum_ij G_k(i,j) * A_k(i,j) / (sum_ij A_k(i,j) + eps)."""

from torch import Tensor

from textcam.export.cam_methods.base import CamOutput, spatial_sum, weighted_channel_sum

EPS = 1e-7


def xgradcam(activations: Tensor, gradients: Tensor) -> CamOutput:
    """XGrad-CAM weights: gradients averaged with the activations as the weights."""
    weights = (gradients * activations / (spatial_sum(activations) + EPS)).sum(dim=(2, 3))
    return weighted_channel_sum(weights, activations)
