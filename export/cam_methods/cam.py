"""CAM (Zhou et al., 2016): w_k = W[c, k], the classifier row of the class, for heads that are
global-average-pool followed by one linear layer. No gradients are needed."""

from torch import Tensor

from textcam.export.cam_methods.base import CamOutput, weighted_channel_sum


def cam(activations: Tensor, gradients: Tensor, class_weights: Tensor) -> CamOutput:
    """CAM weights are the linear head's row for the chosen class (``class_weights`` [B, C])."""
    del gradients
    return weighted_channel_sum(class_weights, activations)
