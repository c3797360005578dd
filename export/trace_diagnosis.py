"""Why an export failed: the operation that has no ONNX form and the model layer it came from.

Used by :mod:`textcam.export.tracing` to turn tracer and exporter exceptions into one line. It
relies on private torch APIs (``torch.utils._python_dispatch.TorchDispatchMode``,
``torch._decomp``, ``torch.onnx._internal``'s registry, ``torch._ops.OpOverload``); every use is
guarded, so a change in them only makes the message less specific. Re-running the model eagerly
to find the layer applies the same process-wide patches as tracing
(:mod:`textcam.export.trace_patches`).
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from textcam.errors import first_line
from textcam.export.trace_patches import tracing_patches


def describe_failure(
    exc: BaseException,
    graph: torch.fx.GraphModule | None = None,
    joint: nn.Module | None = None,
    image: torch.Tensor | None = None,
) -> str:
    """Name the operation that failed and the model layer it came from, when they can be found.

    The exporter names the operation it could not translate, but often after decomposing the
    model's own op (``cumprod`` fails as ``prims.prod``) and never with the layer. The layer is
    found by running the model once more, eagerly, recording which module issued each aten op.
    """
    text = "\n".join(str(e) for e in _exception_chain(exc))
    match = re.search(r"\b((?:aten|prims)(?:\.|::)[A-Za-z0-9_]+)", text)
    if not match:
        return _root_cause(exc)
    failed = match.group(1).replace("::", ".")
    calls = recorded_calls(joint, image)
    if graph is not None:
        known = {name for name, _ in calls}
        calls += [(name, None) for name in _graph_ops(graph) if name not in known]
    op, layer = _culprit(failed, calls)
    where = f" in layer '{layer}'" if layer else ""
    became = f" (the exporter stopped at {failed})" if op != failed else ""
    return (
        f"operation {op}{where} has no ONNX translation{became}; "
        "rewrite that part of the model with exportable operations"
    )


def describe_trace_failure(exc: BaseException, joint: nn.Module) -> str:
    """One line for a make_fx failure, naming the model layer whose code raised it."""
    layer = _layer_in_traceback(exc, joint)
    where = f"layer '{layer}'" if layer else "the model"
    text = "\n".join(str(e) for e in _exception_chain(exc))
    if "data-dependent" in text or "data dependent" in text:
        return (
            f"{where} uses a tensor's value in Python control flow or as a size (e.g. "
            "`if x.mean() > 0`, .item(), .tolist()), which one static graph cannot express; "
            f"use tensor operations such as torch.where instead ({_root_cause(exc).split(' (unhinted')[0]})"
        )
    if re.search(r"numpy\(\) is not supported|Cannot access data pointer|Cannot access storage", text):
        return (
            f"{where} takes a tensor's values out of torch (.numpy(), NumPy functions, or code that reads its "
            "memory), which one traced graph cannot follow; use torch operations instead "
            f"({_root_cause(exc)})"
        )
    return f"{where} raised while tracing: {_root_cause(exc)}"


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost exception (the wrappers' lines are generic), without colors."""
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(_exception_chain(exc)[-1]))


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return chain


def _layer_names(joint: nn.Module | None) -> dict[int, str]:
    model = getattr(joint, "model", joint)
    if not isinstance(model, nn.Module):
        return {}
    return {id(module): name for name, module in model.named_modules() if name}


def _layer_in_traceback(exc: BaseException, joint: nn.Module | None) -> str | None:
    """The innermost model submodule whose ``forward`` (or a method it called) is on the traceback."""
    names = _layer_names(joint)
    layer = None
    for error in reversed(_exception_chain(exc)):  # outermost wrapper first, the original last
        tb = error.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in names:
                layer = names[id(owner)]
            tb = tb.tb_next
    return layer


def _op_name(op) -> str:
    """'aten.median' for aten.median.dim, 'prims.copy_to' for prims.copy_to.default."""
    return ".".join(str(op).replace("::", ".").split(".")[:2])


def _overload_name(op) -> str:
    """'aten.median.dim' for aten.median.dim and 'aten::median.dim'; 'aten.relu.default' for 'aten::relu'."""
    parts = str(op).replace("::", ".").split(".")
    return ".".join(parts if len(parts) > 2 else [*parts, "default"])


def _graph_ops(graph: torch.fx.GraphModule) -> list[str]:
    return [
        _overload_name(node.target)
        for node in graph.graph.nodes
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
    ]


def recorded_calls(joint: nn.Module | None, image: torch.Tensor | None) -> list[tuple[str, str | None]]:
    """(aten op, issuing layer) for every op of one eager run of ``joint``, in order; [] if it fails.

    Forward ops get the innermost module running them (module hooks). Backward ops get the
    module whose forward created the autograd node that runs them: each module's exit hook
    labels the autograd nodes between its inputs and its outputs, innermost module first.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    model = getattr(joint, "model", joint)
    if not isinstance(model, nn.Module) or not isinstance(image, torch.Tensor):
        return []
    stack: list[str] = []
    in_backward: list[str] = []  # the layer of the autograd node running now
    labeled: set = set()
    calls: list[tuple[str, str | None]] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            layer = stack[-1] if stack else (in_backward[-1] if in_backward else None)
            calls.append((_overload_name(func), layer))
            return func(*args, **(kwargs or {}))

    def grad_fns(value) -> list:
        values = value if isinstance(value, (tuple, list)) else [value]
        return [v.grad_fn for v in values if isinstance(v, torch.Tensor) and v.grad_fn is not None]

    def enter(name):
        return lambda *_: stack.append(name)

    def leave(_module, inputs, output):
        name = stack.pop() if stack else None
        stop = set(grad_fns(inputs))
        queue, seen = grad_fns(output), set()
        while queue:
            node = queue.pop()
            if node in seen or node in stop:
                continue
            seen.add(node)
            if node not in labeled:
                labeled.add(node)
                node.register_prehook(lambda _grads, name=name: in_backward.append(name))
            queue.extend(next_node for next_node, _ in node.next_functions if next_node is not None)

    hooks = []
    try:
        for name, module in model.named_modules():
            if name:
                hooks.append(module.register_forward_pre_hook(enter(name)))
                hooks.append(module.register_forward_hook(leave))
        with sdpa_kernel(SDPBackend.MATH), tracing_patches(), Recorder():
            if model is joint:
                model(image[:1])
            else:
                joint(image[:1], torch.full((1,), -1, dtype=torch.long))
    except Exception:  # only a diagnosis: keep what was recorded before the failure
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _culprit(failed: str, calls: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    """The model's op behind the failed one, and its layer."""
    layers: dict[str, str | None] = {}  # op (no overload) -> the first layer that issued it
    for name, layer in calls:
        if layers.get(_op_name(name)) is None:
            layers[_op_name(name)] = layer
    if failed in layers:
        return failed, layers[failed]
    if failed.endswith("_backward"):  # a backward kernel: the layer of its forward op
        forward = failed[: -len("_backward")]
        for name in (forward, forward.replace("_with_indices", ""), forward.lstrip("_")):
            if name in layers:
                return failed, layers[name]
    # An op the exporter decomposed into the failed one: among the model's ops that have no ONNX
    # function of their own, one with a similar name, or one that has no decomposition either.
    untranslatable = _untranslatable(list(dict.fromkeys(name for name, _ in calls if name.startswith("aten."))))
    stem = failed.split(".")[1].replace("_", "")
    for name, _decomposable in untranslatable:
        own = _op_name(name).split(".")[1].replace("_", "")
        if stem in own or own in stem:
            return _op_name(name), layers[_op_name(name)]
    for name, decomposable in untranslatable:
        if not decomposable:
            return _op_name(name), layers[_op_name(name)]
    return failed, None


def _untranslatable(names: list[str]) -> list[tuple[str, bool]]:
    """(op, has a decomposition) for each op without an ONNX function in the exporter's registry."""
    try:
        from torch._decomp import decomposition_table as core_decompositions
        from torch.onnx._internal.exporter._registration import ONNXRegistry

        registry = ONNXRegistry.from_torchlib()
        decomposable = {_overload_name(op) for op in (*core_decompositions, *torch.export.default_decompositions())}
        registered = {_overload_name(name) for name in registry.functions if isinstance(name, str)}
    except Exception:  # private API: without it, no guess
        return []
    return [(name, name in decomposable) for name in names if name not in registered]
