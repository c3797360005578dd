"""Grad-CAM++ (Chattopadhay et al., 2018), in pytorch-grad-cam's closed form.

    alpha_k(i,j) = G^2 / (2 G^2 + sum_ab A_k(a,b) * G^3 + eps),  0 where G == 0
    w_k          = sum_ij ReLU(G_k(i,j)) * alpha_k(i,j)
"""

import torch
from torch import Tensor

from textcam.export.cam_methods.base import CamOutput, spatial_sum, weighted_channel_sum

EPS = 1e-6


def gradcam_pp(activations: Tensor, gradients: Tensor) -> CamOutput:
    """Grad-CAM++ weights: positive gradients re-weighted by the second/third-order alpha."""
    g2 = gradients * gradients
    g3 = g2 * gradients
    alpha = g2 / (2 * g2 + spatial_sum(activations) * g3 + EPS)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    weights = (torch.relu(gradients) * alpha).sum(dim=(2, 3))
    return weighted_channel_sum(weights, activations)
