"""Choosing and checking the explained layer.

The explained tensor is a module's *output* (as in pytorch-grad-cam). One probe pass (forward
and backward on an example batch) records, for every module, its output shape, how many times it
ran, and whether the class score's gradient reaches its spatial positions. That answers four
questions: does the named layer exist, run once and have a spatial output; which layer to pick
when none is named (the last one to finish, among those that run once, whose spatial gradient is
non-zero, so a ViT's final blocks, which only feed the class token onward, are skipped); does the
model take this input at all; and is it a model one static graph can stand for: float images in,
logits [batch, classes] out that carry a gradient, and the same logits for an image whatever the
run or the other images in the batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from textcam.errors import TextcamError, did_you_mean, first_line
from textcam.export.joint_graph import replace_first
from textcam.export.layout import Layout, infer_layout

GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)

# Logits of one image may differ this much (relative to the largest logit) between a batch of
# one and a batch of two: different kernels round differently, but far less than this.
CONSISTENCY_RTOL = 1e-3


@dataclass
class ProbedLayer:
    name: str
    output: Tensor
    layout: Layout | None
    spatial_gradient: bool = False
    version: int = 0
    modified_in_place: bool = False
    """The model changed the output in place after the module returned it (e.g. F.relu_)."""
    calls: int = 1
    """How many times the module ran in one forward pass (more than once: a shared module)."""
    reaches_logits: bool = False
    """The logits' gradient reaches the output (not cut by .detach(), torch.no_grad() or an integer cast)."""
    inside_attention: bool = False
    """The module is part of an attention module (timm's qkv, q_norm, k_norm): its output is no
    feature map (queries and keys, [B, heads, tokens, head_dim]), so a default choice skips it."""


class ProbeRecords(list):
    """The probed layers (:class:`ProbedLayer`) in completion order, one per call with a float tensor
    output, plus ``outputs``: for every module that ran, what each of its calls returned, in words."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch = batch
        self.outputs: dict[str, list[str]] = {}


def find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        aliases = dict(model.named_modules(remove_duplicate=False))
        if name and name in aliases:
            canonical = next(n for n, m in modules.items() if m is aliases[name])
            raise TextcamError(
                f"target_layer={name!r}: this module is also registered as {canonical!r}, the name its output "
                f"is recorded under; pass target_layer={canonical!r}"
            )
        raise TextcamError(f"target_layer={name!r}: no such module in the model{did_you_mean(name, modules)}")
    return modules[name]


def probe(model: nn.Module, example: Tensor) -> tuple[Tensor, ProbeRecords]:
    """Run forward + backward once, recording every module's output in completion order."""
    records = ProbeRecords(example.shape[0])
    hooks = []
    input_hw = (example.shape[2], example.shape[3])

    head_inputs: list[Tensor] = []

    def record(name):
        def hook(module, inputs, output):
            if not any(True for _ in module.children()) and inputs and isinstance(inputs[0], Tensor):
                head_inputs[:] = [inputs[0]]  # the last leaf module's input feeds the logits
            records.outputs.setdefault(name, []).append(_describe(output))
            first = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(first, Tensor) or not first.is_floating_point():
                return None
            replaced = None
            if torch.is_grad_enabled() and not first.requires_grad:
                # Cut off from the image (the model cast it to integers, say): the traced graph
                # differentiates with respect to the explained output itself, so the probe must too.
                # The model goes on with a non-leaf copy, on which in-place operations stay legal.
                first = first.detach().requires_grad_(True).clone()
                replaced = replace_first(output, first)
            batched = first.dim() >= 3 and first.shape[0] == records.batch
            try:  # non-spatial outputs are recorded too, so that choosing one can be refused by shape
                layout = infer_layout(first, model, input_hw) if batched else None
            except TextcamError:
                layout = None
            if first.requires_grad:
                first.retain_grad()
            inside = any(name.startswith(prefix) for prefix in attention_prefixes)
            records.append(ProbedLayer(name, first, layout, version=first._version, inside_attention=inside))
            return replaced

        return hook

    attention_prefixes = [f"{name}." for name, module in model.named_modules()
                          if name and "attention" in type(module).__name__.lower()]
    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_hook(record(name)))
    # A copy that requires grad, so every activation joins the autograd graph; the model gets a
    # non-leaf copy of that, so that an in-place op on its input is caught below, not an autograd error.
    image = example.clone().requires_grad_(True)
    given = image.clone()
    try:
        logits = model(given)
    except Exception as exc:
        raise TextcamError(_forward_failure(exc, example)) from None
    finally:
        for hook in hooks:
            hook.remove()
    if given._version != 0:
        # Verification and the CAM libraries run the model on an image they reuse afterwards.
        raise TextcamError(
            "the model changes its input image in place (e.g. x.sub_(mean) or x.clamp_(0, 1)); make that "
            "operation out-of-place (x = x - mean)"
        )
    _check_logits(logits, records.batch)
    _check_consistent(model, example, logits.detach())
    if not logits.requires_grad:
        raise TextcamError(
            "the model's logits carry no gradient (its forward computes them under torch.no_grad() or from "
            "detached tensors); Grad-CAM needs their gradient: remove that from the forward pass"
        )
    # A random projection of what the last layer reads, not only the logits: a freshly
    # initialized head may be all zeros (torchvision's ViT), and its gradient would be too.
    score = logits.max(dim=1).values.sum()
    if head_inputs and head_inputs[0].requires_grad:
        projection = torch.randn(head_inputs[0].shape, generator=torch.Generator().manual_seed(0))
        score = score + (head_inputs[0] * projection).sum()
    try:
        score.backward()
    except Exception as exc:
        reason = re.split(r"\s+Hint:", first_line(exc))[0]
        raise TextcamError(
            f"the model's backward pass fails ({reason}); Grad-CAM needs the logits' gradient: rewrite that part "
            "of the model (e.g. make an in-place operation on a tensor that autograd saved out-of-place)"
        ) from None
    for rec in records:
        rec.calls = len(records.outputs[rec.name])
        rec.modified_in_place = rec.output._version != rec.version
        grad = rec.output.grad
        rec.reaches_logits = grad is not None
        if grad is not None and rec.layout is not None:
            grid_grad = rec.layout.to_grid(grad)
            rec.spatial_gradient = bool(grid_grad.abs().amax() > 0)
        rec.output = rec.output.detach()
    return logits.detach(), records


def _describe(value) -> str:
    """A module output in a few words: 'a float32 tensor (2, 4, 8, 8)', 'a dict', 'None'."""
    if isinstance(value, Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{'an' if dtype[0] in 'aeiou' else 'a'} {dtype} tensor {tuple(value.shape)}"
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        first = f" whose first element is {_describe(value[0])}" if value else " that is empty"
        return f"a {type(value).__name__}{first}"
    return f"a {type(value).__name__}"


def _forward_failure(exc: Exception, example: Tensor) -> str:
    """Why the model cannot run on the probe batch, with the fix that applies."""
    h, w = example.shape[2], example.shape[3]
    reason = first_line(exc)
    if re.search(r"scalar type|dtype|\b(Long|Int|Byte|Bool|Half|Double)(Tensor)?\b|FloatTensor|integer", reason):
        return (
            f"the model cannot take a float image batch {tuple(example.shape)} ({reason}); textcam exports image "
            "classifiers whose forward takes float images [batch, 3, H, W]: wrap the model so that it does"
        )
    if re.search(r"to have \d+ channels", reason):
        return (
            f"the model cannot take a 3-channel (RGB) image batch {tuple(example.shape)} ({reason}); textcam feeds "
            "RGB images: wrap the model so that it takes them (e.g. averaging the channels for a grayscale model)"
        )
    return (
        f"input_size={h}x{w}: the model cannot run on a {example.shape[1]}x{h}x{w} input "
        f"({reason}); use an input size the model accepts"
    )


def _check_logits(logits, batch: int) -> None:
    """Logits must be one float tensor [batch, classes]; for anything else, say what to wrap."""
    if isinstance(logits, Tensor):
        problem = None
        if logits.dim() != 2:
            problem = f"it returned {tuple(logits.shape)}"
        elif not logits.is_floating_point():
            problem = f"it returned {_describe(logits)}, not float logits"
        elif logits.shape[0] != batch:
            shape = tuple(logits.shape)
            problem = f"it returned {shape} for a batch of {batch} images (the first dimension must be the batch)"
        if problem:
            raise TextcamError(f"the model must return logits of shape [batch, classes]; {problem}")
        return
    # A dict, a tuple (logits, aux) or a HuggingFace-style output: textcam does not guess which
    # entry is the logits; a one-line wrapper says it once and for all.
    pick = None
    if isinstance(getattr(logits, "logits", None), Tensor):
        what, pick = f"{type(logits).__name__} with .logits {tuple(logits.logits.shape)}", "model(x).logits"
    elif isinstance(logits, dict):
        keys = list(logits)
        shown = ", ".join(repr(k) for k in keys[:4]) + (", ..." if len(keys) > 4 else "")
        what = f"dict with keys {shown}" if keys else "empty dict"
        likely = [k for k in keys if str(k) == "logits"] or keys[:1]
        pick = f"model(x)[{likely[0]!r}]" if likely else None
    elif isinstance(logits, (tuple, list)):
        parts = ", ".join(repr(tuple(v.shape)) if isinstance(v, Tensor) else type(v).__name__ for v in logits[:4])
        what = f"{type(logits).__name__} of {len(logits)} ({parts}{', ...' if len(logits) > 4 else ''})"
        pick = "model(x)[0]" if logits and isinstance(logits[0], Tensor) else None
    else:
        what = type(logits).__name__
    example = f", e.g. {pick}" if pick else ""
    raise TextcamError(
        f"the model must return logits of shape [batch, classes]; it returned {what}; wrap it in a module "
        f"whose forward returns the logits tensor{example}"
    )


def _check_consistent(model: nn.Module, example: Tensor, logits: Tensor) -> None:
    """One graph serves every batch: an image's logits must not depend on the run or on the batch."""

    def same(a: Tensor, b: Tensor) -> bool:
        atol = CONSISTENCY_RTOL * float(b.abs().nan_to_num(0.0).amax().clamp_min(1e-6))
        return a.shape == b.shape and torch.allclose(a, b, rtol=0.0, atol=atol, equal_nan=True)

    with torch.no_grad():
        try:
            single = model(example[:1].clone())
        except Exception as exc:
            raise TextcamError(
                f"the model cannot run on a batch of one image ({first_line(exc)}); the exported graph takes any "
                "batch size, so the model must too (a batch size written into a view or reshape?)"
            ) from None
        if not isinstance(single, Tensor) or single.shape != (1, logits.shape[1]):
            shape = tuple(single.shape) if isinstance(single, Tensor) else type(single).__name__
            squeezed = " (a .squeeze() that drops the batch dimension?)" if shape == (logits.shape[1],) else ""
            raise TextcamError(
                f"the model must return logits of shape [batch, classes]; it returned {shape} for one image and "
                f"{tuple(logits.shape)} for {logits.shape[0]}{squeezed}"
            )
        if same(single, logits[:1]):
            return
        again = model(example.clone())
    if not same(again, logits):
        raise TextcamError(
            "the model returns different logits for the same images on two runs in eval mode (dropout forced on "
            "with F.dropout(x, training=True), random noise, or state updated in forward?); make its eval-mode "
            "forward deterministic"
        )
    raise TextcamError(
        "the model's logits for an image change with the other images in its batch (BatchNorm without running "
        "statistics, or code that depends on the batch size?); make each image's logits independent of its batch"
    )


def choose_layer(
    model: nn.Module, records: list[ProbedLayer], name: str | None, input_hw: tuple[int, int] | None = None
) -> ProbedLayer:
    """The named layer (checked), or the last spatial layer the class score depends on."""
    outputs = getattr(records, "outputs", None)  # what each call returned, when ``records`` is a ProbeRecords
    batch = getattr(records, "batch", None)
    if name is not None:
        find_module(model, name)
        matches = [r for r in records if r.name == name]
        calls = outputs.get(name, []) if outputs is not None else None
        suggestion = _suggest(records)
        if calls is not None and len(calls) > 1:
            # Each call has its own output and gradient; explaining one of them silently would
            # show a map the user did not ask for.
            raise TextcamError(
                f"target_layer={name!r}: the module runs {len(calls)} times in one forward pass (it is shared), so "
                f"which of its outputs to explain is ambiguous; choose a layer that runs once{suggestion}"
            )
        if calls == []:
            raise TextcamError(
                f"target_layer={name!r}: this module did not run in the forward pass; choose a layer the model "
                f"calls{suggestion}"
            )
        if not matches:
            said = f"its output is {calls[0]}, not a float tensor" if calls else "its output is not a float tensor"
            raise TextcamError(
                f"target_layer={name!r}: {said} (textcam explains a tensor output, or the first element of a "
                f"tuple); choose another layer{suggestion}"
            )
        layer = matches[-1]
        shape = tuple(layer.output.shape)
        if batch is not None and layer.output.dim() >= 1 and shape[0] != batch:
            raise TextcamError(
                f"target_layer={name!r}: its output {shape} does not start with the batch dimension ({batch}), so it "
                f"has no map per image; choose another layer{suggestion}"
            )
        if layer.layout is None or layer.layout.grid == (1, 1):
            at = f" at input_size={input_hw[0]}x{input_hw[1]}" if input_hw else ""
            pooled = layer.layout is None or isinstance(find_module(model, name), GLOBAL_POOLS)
            larger = "" if pooled or not input_hw else ", or a larger input size"
            raise TextcamError(
                f"target_layer={name!r}: its output {shape}{at} has no spatial grid to explain; choose an "
                f"earlier layer{suggestion}{larger}"
            )
        if outputs is not None and not layer.reaches_logits:
            raise TextcamError(
                f"target_layer={name!r}: the logits do not depend on its output through differentiable operations "
                f"(an unused branch, or .detach(), torch.no_grad() or an integer cast after it?), so it has no "
                f"gradient; choose a layer the logits depend on{suggestion}"
            )
        return layer
    candidates = _candidates(records)
    if not candidates:
        spatial = [r for r in records if r.layout is not None and r.layout.grid != (1, 1)]
        cut = outputs is not None and spatial and not any(r.reaches_logits for r in spatial)
        why = " (the gradient reaches none of them: .detach() or torch.no_grad() in forward?)" if cut else ""
        raise TextcamError(
            f"no layer of this model has a spatial output that the logits depend on{why}; pass target_layer (--layer)"
        )
    return candidates[-1]


def _candidates(records: list[ProbedLayer]) -> list[ProbedLayer]:
    """Layers a default choice may take: a spatial output with a gradient, from a module that runs once
    (a shared module, e.g. one ReLU used twice, names two activations) and is no part of an attention
    module."""
    return [
        r for r in records
        if r.layout is not None and r.layout.grid != (1, 1) and r.spatial_gradient and r.calls == 1
        and not r.inside_attention
    ]


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
    """', e.g. 'layer4'': the layer a default choice would take, or '' when there is none."""
    candidates = _candidates(records)
    return f", e.g. {candidates[-1].name!r}" if candidates else ""


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
