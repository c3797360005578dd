"""The function that becomes the ONNX graph: forward, class score, gradient, CAM, in one pass.

Outputs, in this order (the names are the bundle's contract):

    logits [B, K], class_index [B], cam [B, H, W], channel_weights [B, C],
    channel_activation [B, C], and optionally activations [B, C, h, w].

The chosen class is seeded as a one-hot over the logits, not gathered: the backward of a gather
is a scatter, which accelerators handle badly. The map follows pytorch-grad-cam's pipeline
exactly (ReLU, min-max with its 1e-7, bilinear resize with half-pixel centers, min-max again) so
that library serves as the parity reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from textcam.export.cam_methods import CamMethod
from textcam.export.layout import Layout
from textcam.runtime.heatmap import NORMALIZE_EPS, linear_resize_matrix

OUTPUT_NAMES = ("logits", "class_index", "cam", "channel_weights", "channel_activation")
ACTIVATIONS_OUTPUT = "activations"
INPUT_NAMES = ("image", "target_class")


def replace_first(output, first: Tensor):
    """``output`` with ``first`` in place of its tensor (the whole output, or a tuple's first element).

    Named tuples are rebuilt field by field, other sequences from a list (a plain tuple if their
    type cannot be built that way), so the model's code after the layer reads them as before.
    """
    if not isinstance(output, (tuple, list)):
        return first
    if isinstance(output, tuple) and hasattr(output, "_replace") and hasattr(output, "_fields"):
        return output._replace(**{output._fields[0]: first})
    try:
        return type(output)([first, *output[1:]])
    except TypeError:
        return (first, *output[1:])


def minmax_normalize(maps: Tensor) -> Tensor:
    """Per image: (x - min) / (1e-7 + max(x - min)), pytorch-grad-cam's scale_cam_image."""
    flat = maps.flatten(1)
    shifted = flat - flat.amin(dim=1, keepdim=True)
    return (shifted / (NORMALIZE_EPS + shifted.amax(dim=1, keepdim=True))).reshape(maps.shape)


def finish_map(saliency: Tensor, grid: tuple[int, int], input_hw: tuple[int, int]) -> Tensor:
    """[B, h, w] pre-ReLU saliency -> [B, H, W] heatmap in [0, 1] at input resolution.

    The torch twin of :func:`textcam.runtime.heatmap.finish_map` (same resize matrix, same epsilon).

    ``grid`` = (h, w) as plain ints: while tracing, the tensor's own sizes are symbolic.
    """
    heat = minmax_normalize(torch.relu(saliency))
    # Resizing as two small constant matrix products (OpenCV INTER_LINEAR weights) keeps the graph
    # free of the gather-based indexing that tracing makes of F.interpolate.
    rows = torch.tensor(linear_resize_matrix(grid[0], input_hw[0]), dtype=saliency.dtype, device=saliency.device)
    cols = torch.tensor(linear_resize_matrix(grid[1], input_hw[1]), dtype=saliency.dtype, device=saliency.device)
    heat = rows @ heat @ cols.t()
    return minmax_normalize(torch.relu(heat))


class JointExplainer(nn.Module):
    """Wraps a classifier so one call returns the prediction and its explanation.

    ``target_class`` [B] int64 picks the explained class per image; -1 means the predicted one.
    """

    def __init__(
        self,
        model: nn.Module,
        target: nn.Module,
        method: CamMethod,
        layout: Layout,
        input_hw: tuple[int, int],
        head_weight: Tensor | None = None,
        with_activations: bool = False,
    ):
        super().__init__()
        self.model = model
        self.target = target
        self.method = method
        self.layout = layout
        self.input_hw = input_hw
        self.with_activations = with_activations
        if method.needs_linear_head and head_weight is None:
            raise ValueError(f"method {method.name} needs the linear head's weight")
        self.head_weight = head_weight
        # Verification only (never set while tracing): called with the layer's activations as
        # the CAM method gets them (see textcam.export.verification).
        self.inspect_activations: Callable[[Tensor], object] | None = None

    def forward(self, image: Tensor, target_class: Tensor) -> tuple[Tensor, ...]:
        captured: list[Tensor] = []

        def keep_output(_module, _inputs, output):
            # Parameters are frozen, so the layer output is where the backward graph starts:
            # make it a leaf that requires grad, and differentiate with respect to it.
            first = output[0] if isinstance(output, (tuple, list)) else output
            leaf = first.detach().requires_grad_(True)
            captured.append(leaf)
            # The model continues on a copy: an in-place op after the layer (DenseNet's
            # F.relu(features, inplace=True)) must not modify the leaf, which autograd forbids.
            return replace_first(output, leaf.clone())

        handle = self.target.register_forward_hook(keep_output)
        try:
            logits = self.model(image)
        finally:
            handle.remove()
        if len(captured) != 1:
            # The probe refuses such layers; a model whose call count changes between the probe
            # and the trace must not have one of its calls explained silently.
            raise RuntimeError(f"the target layer ran {len(captured)} times in the forward pass; it must run once")
        layer_output = captured[0]

        num_classes = logits.shape[1]
        chosen = torch.where(target_class < 0, logits.argmax(dim=1), target_class)
        one_hot = (torch.arange(num_classes, device=logits.device)[None, :] == chosen[:, None]).to(logits.dtype)
        if self.method.needs_linear_head:
            gradient = torch.zeros_like(layer_output)
            extra = {"class_weights": one_hot @ self.head_weight}
        else:
            (gradient,) = torch.autograd.grad((logits * one_hot).sum(), layer_output)
            extra = {}
        activations = self.layout.to_grid(layer_output)
        gradients = self.layout.to_grid(gradient)
        if self.inspect_activations is not None:
            self.inspect_activations(activations.detach())
        weights, saliency = self.method.function(activations, gradients, **extra)
        outputs = (
            logits,
            chosen,
            finish_map(saliency, self.layout.grid, self.input_hw),
            weights,
            activations.mean(dim=(2, 3)),
        )
        return (*outputs, activations) if self.with_activations else outputs
