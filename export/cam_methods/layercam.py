"""LayerCAM (Jiang et al., 2021): map = sum_k ReLU(G_k) * A_k, element-wise."""

import torch
from torch import Tensor

from textcam.export.cam_methods.base import CamOutput, elementwise_sum


def layercam(activations: Tensor, gradients: Tensor) -> CamOutput:
    """LayerCAM keeps only positive gradients, per position; reported weights: mean_ij ReLU(G_k)."""
    return elementwise_sum(torch.relu(gradients), activations)
