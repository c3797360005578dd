"""Tracing the joint function into an ONNX file.

``torch.onnx.export`` cannot trace ``torch.autograd.grad``. ``make_fx`` can: it runs the
function under a dispatch mode that records every aten op, the autograd engine's backward
kernels included, so the gradient becomes ordinary graph nodes. The recorded graph (the batch
is its only symbolic size), with its constant parts folded (:mod:`textcam.export.graph_passes`),
is then exported with the dynamo ONNX exporter.

Attention is traced through the math backend so its backward is matmul/softmax rather than a
fused kernel with no ONNX form. ``_allow_non_fake_inputs`` is a private flag of make_fx (the
parameters are real tensors); the torch range is pinned and every export is verified, so a
future change in it is caught rather than shipped.

**Process-wide patches.** While a model is traced (and while a failed export is diagnosed),
``torch.nn.functional.linear`` and ``torch.nn.functional.adaptive_avg_pool2d`` are replaced *in
the torch module itself*, for every thread of the process (see :mod:`textcam.export.trace_patches`
for why a narrower hook cannot reach them). The replacements compute the same values, but code
running in another thread meanwhile goes through them too. Traces hold a process-wide lock for
the duration, so two exports in one process run their traces one after the other. While the
graph is exported, ``torch.fx.config.do_not_emit_stack_traces`` is set (:func:`_no_stack_traces`).

Why an export failed (which op, which layer) is worked out in
:mod:`textcam.export.trace_diagnosis`, which uses private torch APIs.
"""

from __future__ import annotations

import copy
import io
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import onnx
import torch
from torch import nn
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.nn.attention import SDPBackend, sdpa_kernel

from textcam.errors import TextcamError
from textcam.export.decompositions import decomposition_table
from textcam.export.graph_passes import simplify
from textcam.export.joint_graph import ACTIVATIONS_OUTPUT, INPUT_NAMES, OUTPUT_NAMES
from textcam.export.onnx_passes import transposes_into_gemm
from textcam.export.trace_diagnosis import describe_failure, describe_trace_failure
from textcam.export.trace_patches import tracing_patches

OPSET = 18


def trace_joint(
    joint: nn.Module,
    image: torch.Tensor,
    target_class: torch.Tensor,
    decompositions: dict | None = None,
    simplified: bool = True,
) -> torch.fx.GraphModule:
    """Record forward + backward + CAM as a graph of aten ops with a symbolic batch.

    ``decompositions`` replaces textcam's table (``{}`` records the backward kernels as they are,
    which is how benchmarks/backward_ops.py enumerates them). ``simplified`` applies
    :func:`textcam.export.graph_passes.simplify` (same values, fewer nodes to export).
    """
    for p in joint.parameters():
        p.requires_grad_(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), tracing_patches(), warnings.catch_warnings(), _attributes_kept(joint):
            warnings.simplefilter("ignore")
            graph = make_fx(
                joint,
                tracing_mode="symbolic",
                decomposition_table=decomposition_table() if decompositions is None else decompositions,
                _allow_non_fake_inputs=True,
                record_module_stack=True,
            )(*_batch_symbolic_inputs(image, target_class))
    except Exception as exc:  # the tracer raises many types; all mean "cannot trace"
        raise TextcamError(f"cannot trace the model: {describe_trace_failure(exc, joint)}") from exc
    return simplify(graph) if simplified else graph


@contextmanager
def _attributes_kept(module: nn.Module):
    """Restore the modules' plain attributes (tensors, dicts, lists) after tracing.

    Some models cache what their forward computes (timm's LeViT and EfficientFormer keep attention
    biases in a dict per device, in eval mode); filled while tracing, such a cache holds the
    tracer's fake tensors, which the next eager call (verification) would then use.
    """
    internal = set(vars(nn.Module()))  # parameters, buffers, hook tables: handles refer to those dicts
    kept = []
    for sub in module.modules():
        for name, value in vars(sub).items():
            if name not in internal and isinstance(value, (torch.Tensor, dict, list)):
                kept.append((sub, name, copy.copy(value)))
    try:
        yield
    finally:
        for sub, name, value in kept:
            object.__setattr__(sub, name, value)


def _batch_symbolic_inputs(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Fake copies of ``tensors`` whose first dimension alone is symbolic.

    make_fx's own symbolic mode makes every dimension symbolic, image height and width included;
    every reshape of a spatial size then goes through sympy (Swin's window partitions: minutes).
    The sizes the exporter keeps dynamic are the batch alone, so only it is a symbol here (one
    symbol for all inputs, since their batch sizes are equal).
    """
    shape_env = ShapeEnv()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=shape_env)
    fakes = []
    for index, tensor in enumerate(tensors):
        dims = [DimDynamic.DYNAMIC] + [DimDynamic.STATIC] * (tensor.dim() - 1)
        fakes.append(
            fake_mode.from_tensor(
                tensor,
                source=ConstantSource(f"input{index}"),
                symbolic_context=StatelessSymbolicContext(dynamic_sizes=dims),
            )
        )
    return fakes


def export_onnx(
    graph: torch.fx.GraphModule,
    image: torch.Tensor,
    target_class: torch.Tensor,
    path: Path,
    joint: nn.Module | None = None,
) -> onnx.ModelProto:
    """Export the traced graph with a dynamic batch and the contract's input/output names.

    ``joint`` (the traced module) is only used to name the layer of an operation that fails.
    Returns the written graph without its weights (initializers), for reading its signature and
    nodes without loading the file again.
    """
    outputs = list(OUTPUT_NAMES)
    if len(graph.graph.find_nodes(op="output")[0].args[0]) > len(outputs):
        outputs.append(ACTIVATIONS_OUTPUT)
    batch = torch.export.Dim("batch", min=1, max=4096)
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter), _no_stack_traces():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                (image, target_class),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                dynamic_shapes=({0: batch}, {0: batch}),
                opset_version=OPSET,
                optimize=False,
                verbose=False,
                report=False,
            )
            _optimize(program)
            return _save(program, path)
    except Exception as exc:
        message = describe_failure(exc, graph, joint, image)
        raise TextcamError(f"cannot translate the traced graph to ONNX: {message}") from exc


@contextmanager
def _no_stack_traces():
    """Skip the Python stack recorded for every node the exporter's re-traces create.

    Nothing reads them (the graph being exported is generated code), and formatting them took a
    quarter (ViT-B/16) to a half (Swin-T) of ``run_decompositions``. Process-wide, as the flag is.
    """
    before = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = before


def _optimize(program: torch.onnx.ONNXProgram) -> None:
    """The exporter's own optimizer (``optimize=True``), on a graph whose constants are folded first.

    Its rewrite rules are matched node by node, and as translated most nodes are constant shape
    arithmetic (a Concat of Constants per reshape); folding those first gives the same graph in
    less than half the time (ViT-B/16: 3,000 nodes to match instead of 900; 3.1 s -> 1.4 s).
    """
    import onnx_ir.passes.common as common_passes
    import onnxscript.optimizer

    transposes_into_gemm(program.model)  # before folding stores W's transposed copies
    onnxscript.optimizer.fold_constants_ir(program.model)
    common_passes.RemoveUnusedNodesPass()(program.model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(program.model)
    program.optimize()


# Weights past this size go to WEIGHTS_FILE (a protobuf message cannot exceed 2 GB; the rest of
# the graph needs some room).
_SINGLE_FILE_LIMIT = 1536 * 2**20


def _save(program: torch.onnx.ONNXProgram, path: Path) -> onnx.ModelProto:
    """``program.save(path, external_data=False)``, without the whole model in memory twice more.

    ``save`` builds the complete ModelProto (a copy of every weight) and then its serialized bytes
    (another copy): +2.7 GB for ViT-L/16. A serialized protobuf message followed by another is
    parsed as their merge, with repeated fields appended, so the file is written as the graph
    without initializers, then one ``ModelProto(graph=GraphProto(initializer=[w]))`` per weight,
    in the same order: the same model when read, one weight's copy at a time. Returns the first
    part (the model without initializers).
    """
    import onnx_ir as ir

    from textcam.runtime.bundle_files import WEIGHTS_FILE

    graph = program.model.graph
    weights = dict(graph.initializers)
    tensors = [v.const_value for v in weights.values()]
    if sum(t.nbytes for t in tensors if t is not None) > _SINGLE_FILE_LIMIT:
        # past protobuf's 2 GB: the weights go to WEIGHTS_FILE beside the graph (ONNX external data)
        ir.save(program.model, path, external_data=WEIGHTS_FILE)
        return _without_weights(onnx.load(str(path), load_external_data=False))
    if any(g is not graph and g.initializers for g in program.model.graphs()) or any(t is None for t in tensors):
        program.save(str(path), external_data=False)
        return _without_weights(onnx.load(str(path), load_external_data=False))
    graph.initializers.clear()
    try:
        head = ir.serde.serialize_model(program.model)
    finally:
        graph.initializers.update(weights)
    # serialize_model lists the initializers' value infos first: restore that order
    described = [ir.serde.serialize_value(v) for v in weights.values() if _has_value_info(v)]
    rest = list(head.graph.value_info)
    del head.graph.value_info[:]
    head.graph.value_info.extend(described + rest)
    with open(path, "wb") as file:
        file.write(head.SerializeToString())
        for value in weights.values():
            value.const_value.name = value.name
            chunk = onnx.ModelProto(graph=onnx.GraphProto(initializer=[ir.serde.serialize_tensor(value.const_value)]))
            file.write(chunk.SerializeToString())
    return head


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    del model.graph.initializer[:]
    return model


def _has_value_info(value) -> bool:
    """As onnx_ir's serializer decides whether a value gets a ValueInfoProto."""
    known = value.shape is not None or value.type is not None or value.metadata_props or value.doc_string
    return bool(known and value.name)
