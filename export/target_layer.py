"""Choosing and checking the explained layer.

The explained tensor is a module's *output* (as in pytorch-grad-cam). One probe pass (forward
and backward on an example batch) records, for every module, its output shape and whether the
class score's gradient reaches its spatial positions. That answers three questions: does the
named layer exist and have a spatial output, which layer to pick when none is named (the last
one to finish whose spatial gradient is non-zero, so a ViT's final blocks, which only feed the
class token onward, are skipped), and does the model take this input size at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from textcam.errors import TextcamError, did_you_mean, first_line
from textcam.export.layout import Layout, infer_layout

GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)


@dataclass
class ProbedLayer:
    name: str
    output: Tensor
    layout: Layout | None
    spatial_gradient: bool = False
    version: int = 0
    modified_in_place: bool = False
    """The model changed the output in place after the module returned it (e.g. F.relu_)."""


def find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise TextcamError(f"target_layer={name!r}: no such module in the model{did_you_mean(name, modules)}")
    return modules[name]


def probe(model: nn.Module, example: Tensor) -> tuple[Tensor, list[ProbedLayer]]:
    """Run forward + backward once, recording every module's output in completion order."""
    records: list[ProbedLayer] = []
    hooks = []
    input_hw = (example.shape[2], example.shape[3])

    head_inputs: list[Tensor] = []

    def record(name):
        def hook(module, inputs, output):
            if not any(True for _ in module.children()) and inputs and isinstance(inputs[0], Tensor):
                head_inputs[:] = [inputs[0]]  # the last leaf module's input feeds the logits
            first = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(first, Tensor) or not first.is_floating_point():
                return
            try:  # non-spatial outputs are recorded too, so that choosing one can be refused by shape
                layout = infer_layout(first, model, input_hw) if first.dim() >= 3 else None
            except TextcamError:
                layout = None
            if first.requires_grad:
                first.retain_grad()
            records.append(ProbedLayer(name, first, layout, version=first._version))

        return hook

    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_hook(record(name)))
    image = example.clone().requires_grad_(True)  # so every activation joins the autograd graph
    try:
        logits = model(image)
    except Exception as exc:
        h, w = input_hw
        raise TextcamError(
            f"input_size={h}x{w}: the model cannot run on a {example.shape[1]}x{h}x{w} input "
            f"({first_line(exc)}); use an input size the model accepts"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise TextcamError(
            f"the model must return logits of shape [batch, classes]; it returned "
            f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
        )
    # A random projection of what the last layer reads, not only the logits: a freshly
    # initialized head may be all zeros (torchvision's ViT), and its gradient would be too.
    score = logits.max(dim=1).values.sum()
    if head_inputs and head_inputs[0].requires_grad:
        projection = torch.randn(head_inputs[0].shape, generator=torch.Generator().manual_seed(0))
        score = score + (head_inputs[0] * projection).sum()
    score.backward()
    for rec in records:
        rec.modified_in_place = rec.output._version != rec.version
        grad = rec.output.grad
        if grad is not None and rec.layout is not None:
            grid_grad = rec.layout.to_grid(grad)
            rec.spatial_gradient = bool(grid_grad.abs().amax() > 0)
        rec.output = rec.output.detach()
    return logits.detach(), records


def choose_layer(
    model: nn.Module, records: list[ProbedLayer], name: str | None, input_hw: tuple[int, int] | None = None
) -> ProbedLayer:
    """The named layer (checked), or the last spatial layer the class score depends on."""
    if name is not None:
        find_module(model, name)
        matches = [r for r in records if r.name == name]
        if not matches:
            raise TextcamError(
                f"target_layer={name!r}: this module returns no activation map (it did not run, or its "
                "output is not a float tensor); choose another layer"
            )
        layer = matches[-1]
        if layer.layout is None or layer.layout.grid == (1, 1):
            shape = tuple(layer.output.shape)
            at = f" at input_size={input_hw[0]}x{input_hw[1]}" if input_hw else ""
            pooled = layer.layout is None or isinstance(find_module(model, name), GLOBAL_POOLS)
            larger = "" if pooled or not input_hw else ", or a larger input size"
            raise TextcamError(
                f"target_layer={name!r}: its output {shape}{at} has no spatial grid to explain; choose an "
                f"earlier layer, e.g. {_suggest(records)!r}{larger}"
            )
        return layer
    candidates = [r for r in records if r.layout is not None and r.layout.grid != (1, 1) and r.spatial_gradient]
    if not candidates:
        raise TextcamError(
            "no layer of this model has a spatial output that the logits depend on; pass target_layer (--layer)"
        )
    return candidates[-1]


def probe_layer(model: nn.Module, name: str, input_hw: tuple[int, int]) -> ProbedLayer:
    """The named layer, checked as export checks it, with its output on a random example batch
    and its layout (``layer.layout.to_grid`` is the ``reshape_transform`` the eager CAM libraries
    need). The model's parameters get no gradients."""
    example = torch.randn(2, 3, *input_hw, generator=torch.Generator().manual_seed(0))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        find_module(model, name)
        _, records = probe(model, example)
        return choose_layer(model, records, name, input_hw)
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _suggest(records: list[ProbedLayer]) -> str:
    spatial = [r.name for r in records if r.layout is not None and r.layout.grid != (1, 1) and r.spatial_gradient]
    return spatial[-1] if spatial else "a convolutional layer"


def linear_head_weight(model: nn.Module, layer: ProbedLayer, logits: Tensor) -> Tensor:
    """The [K, C] weight of a global-average-pool + linear head after ``layer``, for plain CAM.

    The head is accepted only if it reproduces the logits: logits == GAP(A) @ W.T + b on the
    probe batch. Anything else (an MLP head, a norm after pooling, tokens) is refused.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    problem = None
    if layer.layout is None or layer.layout.kind != "nchw":
        problem = "it needs a convolutional (NCHW) layer"
    elif layer.modified_in_place:
        problem = "the model changes the layer's output in place before the head reads it (e.g. an in-place ReLU)"
    elif not linears or linears[-1].out_features != logits.shape[1]:
        problem = "the model's last linear layer does not produce the logits"
    else:
        head = linears[-1]
        pooled = layer.output.mean(dim=(2, 3))
        if head.in_features != pooled.shape[1]:
            problem = (
                f"the last linear layer takes {head.in_features} features, the layer has {pooled.shape[1]} "
                "channels (an MLP head?)"
            )
        else:
            with torch.no_grad():
                again = nn.functional.linear(pooled, head.weight, head.bias)
            scale = logits.abs().amax().clamp_min(1e-6)
            if float((again - logits).abs().amax() / scale) > 1e-4:
                problem = "the logits are not a linear function of the layer's pooled output"
    if problem:
        raise TextcamError(
            f"method=cam needs a global-average-pool + linear head after layer {layer.name!r}: {problem}; "
            "use method=gradcam (for such heads it gives the same map)"
        )
    return head.weight.detach().clone()
