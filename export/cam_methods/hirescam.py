"""HiResCAM (Draelos & Carin, 2020): map = sum_k G_k * A_k, element-wise, no spatial averaging."""

from torch import Tensor

from textcam.export.cam_methods.base import CamOutput, elementwise_sum


def hirescam(activations: Tensor, gradients: Tensor) -> CamOutput:
    """HiResCAM keeps the gradient's spatial detail; its reported weights are mean_ij G_k."""
    return elementwise_sum(gradients, activations)
