"""Grad-CAM (Selvaraju et al., 2017): w_k = mean_ij dy_c/dA_k(i,j)."""

from torch import Tensor

from textcam.export.cam_methods.base import CamOutput, weighted_channel_sum


def gradcam(activations: Tensor, gradients: Tensor) -> CamOutput:
    """Grad-CAM weights are the spatially averaged gradients.

    Example::

        >>> import torch
        >>> A, G = torch.rand(1, 4, 7, 7), torch.randn(1, 4, 7, 7)
        >>> gradcam(A, G).channel_weights.shape
        torch.Size([1, 4])
    """
    return weighted_channel_sum(gradients.mean(dim=(2, 3)), activations)
