"""Tracing the joint function into an ONNX file.

``torch.onnx.export`` cannot trace ``torch.autograd.grad``. ``make_fx`` can: it runs the
function under a dispatch mode that records every aten op, the autograd engine's backward
kernels included, so the gradient becomes ordinary graph nodes. The recorded graph (dynamic
batch, symbolic tracing) is then exported with the dynamo ONNX exporter.

Attention is traced through the math backend so its backward is matmul/softmax rather than a
fused kernel with no ONNX form. ``_allow_non_fake_inputs`` is a private flag of make_fx (the
parameters are real tensors); the torch range is pinned and every export is verified, so a
future change in it is caught rather than shipped.
"""

from __future__ import annotations

import io
import re
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.attention import SDPBackend, sdpa_kernel

from textcam.errors import TextcamError, first_line
from textcam.export.decompositions import decomposition_table
from textcam.export.joint_graph import ACTIVATIONS_OUTPUT, INPUT_NAMES, OUTPUT_NAMES

OPSET = 18


def _folded_linear(input, weight, bias=None):
    if input.dim() <= 2:
        return _STOCK_LINEAR(input, weight, bias)
    out = torch.mm(input.reshape(-1, input.shape[-1]), weight.t())
    if bias is not None:
        out = out + bias
    return out.reshape(*input.shape[:-1], weight.shape[0])


_STOCK_LINEAR = F.linear


@contextmanager
def folded_linear():
    """While tracing, compute ``F.linear`` on [..., in] inputs as one [N, in] x [in, out] product.

    With a symbolic batch in a middle dimension (attention runs sequence-first), the stock
    decomposition cannot fold the leading dimensions and broadcasts the weight across the
    sequence instead: a [197, 768, 2304] copy of every projection in ViT-B, gigabytes at run
    time. Folding costs one copy of the (small) input. ``F.linear`` is swapped at module level
    because ``multi_head_attention_forward`` calls it by its global name, where neither a
    decomposition table (linear is composite) nor a nested TorchFunctionMode reaches.
    """
    F.linear = _folded_linear
    try:
        yield
    finally:
        F.linear = _STOCK_LINEAR


def trace_joint(joint: nn.Module, image: torch.Tensor, target_class: torch.Tensor) -> torch.fx.GraphModule:
    """Record forward + backward + CAM as a graph of aten ops with a symbolic batch."""
    for p in joint.parameters():
        p.requires_grad_(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), folded_linear(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make_fx(
                joint,
                tracing_mode="symbolic",
                decomposition_table=decomposition_table(),
                _allow_non_fake_inputs=True,
                record_module_stack=True,
            )(image, target_class)
    except Exception as exc:  # the tracer raises many types; all mean "cannot trace"
        raise TextcamError(f"cannot trace the model: {first_line(exc)}") from exc


def export_onnx(graph: torch.fx.GraphModule, image: torch.Tensor, target_class: torch.Tensor, path: Path) -> None:
    """Export the traced graph with a dynamic batch and the contract's input/output names."""
    outputs = list(OUTPUT_NAMES)
    if len(graph.graph.find_nodes(op="output")[0].args[0]) > len(outputs):
        outputs.append(ACTIVATIONS_OUTPUT)
    batch = torch.export.Dim("batch", min=1, max=4096)
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                (image, target_class),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                dynamic_shapes=({0: batch}, {0: batch}),
                opset_version=OPSET,
                optimize=True,
                verbose=False,
                report=False,
            )
            program.save(str(path), external_data=False)
    except Exception as exc:
        raise TextcamError(f"cannot translate the traced graph to ONNX: {describe_failure(exc, graph)}") from exc


def describe_failure(exc: BaseException, graph: torch.fx.GraphModule) -> str:
    """Name the aten operation that failed and the model layer it came from, when they can be found."""
    text = str(exc)
    op = re.search(r"(aten[.:]+[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", text)
    if not op:
        return first_line(exc)
    op_name = op.group(1).replace("::", ".")
    layer = layer_of_op(graph, op_name)
    where = f" in layer '{layer}'" if layer else ""
    return f"operation {op_name}{where} has no ONNX translation"


def layer_of_op(graph: torch.fx.GraphModule, op_name: str) -> str | None:
    short = op_name.split(".")[1]
    for node in graph.graph.nodes:
        if node.op == "call_function" and short in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                return _module_path(list(stack.values())[-1])
    return None


def _module_path(entry) -> str:
    path = entry[0] if isinstance(entry, tuple) else str(entry)
    return re.sub(r"^(L\['self'\]\.|self\.)?(model\.)?", "", path)
