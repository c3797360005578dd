"""The reduced-precision copy of a joint graph: the forward pass in fp16/bf16, gradients in fp32.

TensorRT 11 builds only strongly typed networks (its FP16/BF16 builder flags are gone), and in
TensorRT 10 a strongly typed network must not set them either: the precision of every tensor has
to be written into the ONNX graph before the build. A blanket conversion would be wrong for this
graph: the gradients that reach the target layer from deep logits are often smaller than fp16's
smallest normal number (6.1e-5), so a half-precision backward pass flushes Grad-CAM weights to
zero or noise. The rule applied here, on the ONNX graph alone (no torch, no ModelOpt):

* **reduced** (fp16 or bf16): exactly the nodes needed to compute ``logits`` from ``image``, i.e.
  the forward pass (:func:`textcam.engines.graph_surgery.forward_nodes`). That is where nearly all the FLOPs are;
* **fp32**: every other node: the class choice (ArgMax/Where), the one-hot seed, the whole
  backward pass, the CAM weights, the map, its normalization and resize, the channel statistics
  and any fused concept ranking. They read fp32 copies (``Cast``) of the forward tensors they need
  (the layer's activations, ReLU masks);
* graph inputs and outputs keep their fp32 types (``logits`` is cast back), so a host feeds and
  reads the reduced graph exactly like ``model.onnx``.

Weights used on both sides (a convolution above the target layer is used by the forward pass and,
transposed, by the backward pass) are stored twice: a reduced copy for the forward node and the
original fp32 tensor for the backward node. Values beyond fp16's range are clamped to +-65504
(counted in the report). The result is checked by ONNX's type inference (strict mode) before it is
returned, so a type mismatch fails here rather than in TensorRT's parser. A bf16 copy is written
at opset 22, the first where ONNX allows bfloat16 convolutions and pooling (ONNX's converter
raises it from the export's opset 18).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from textcam.engines.entries import check_precision, reduced_graph_name
from textcam.engines.graph_surgery import FORWARD_OUTPUT, downstream_nodes, forward_nodes
from textcam.errors import TextcamError, first_line

REDUCED_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
_TYPE_STRINGS = {TensorProto.FLOAT16: "tensor(float16)", TensorProto.BFLOAT16: "tensor(bfloat16)"}
_SUFFIXES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
FP16_MAX = 65504.0
BF16_OPSET = 22
# ops that read only the shape of a float input: they take whichever copy exists, no Cast
_SHAPE_READERS = {"Shape", "Size"}
# ops whose float output type comes from an attribute, not from the inputs
_ATTRIBUTE_TYPED = {"Cast", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
                    "RandomUniformLike", "Bernoulli", "Multinomial"}
_SUBGRAPH_OPS = {"If", "Loop", "Scan", "SequenceMap"}


@dataclass(frozen=True)
class PrecisionReport:
    """What the rewrite did, for the build log and the tests."""

    precision: str
    reduced_nodes: int
    fp32_nodes: int
    casts_added: int
    weights_converted: int  # fp32 initializers replaced by a reduced copy (forward use only)
    weights_duplicated: int  # initializers kept in fp32 and also copied (used on both sides)
    values_clamped: int  # weight values outside fp16's range, clamped

    def describe(self) -> str:
        return (f"{self.precision}: {self.reduced_nodes} forward nodes reduced, {self.fp32_nodes} kept in fp32, "
                f"{self.casts_added} casts, {self.weights_converted} weights converted, "
                f"{self.weights_duplicated} kept in both precisions")


class _Rewriter:
    """One pass over the nodes in order, choosing each float tensor's copy per consumer."""

    def __init__(self, model: onnx.ModelProto, low: int):
        self.model = model
        self.low = low
        self.low_string = _TYPE_STRINGS[low]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
        graph = model.graph
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        self.types: dict[str, int] = {}
        for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if value.type.HasField("tensor_type"):
                self.types[value.name] = value.type.tensor_type.elem_type
        self.initializers = {t.name: t for t in graph.initializer}
        for tensor in graph.initializer:
            self.types[tensor.name] = tensor.data_type
        self.graph_outputs = {o.name for o in graph.output}
        # versions[name][dtype] = the tensor name holding that precision's copy
        self.versions: dict[str, dict[int, str]] = {}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_initializers: dict[str, onnx.TensorProto] = {}
        self.casts = 0
        self.clamped = 0
        self.low_weight_uses: set[str] = set()
        self.fp32_weight_uses: set[str] = set()

    def is_float(self, name: str) -> bool:
        return self.types.get(name) == TensorProto.FLOAT

    def copy_of(self, name: str, dtype: int) -> str:
        """The name of ``name``'s copy in ``dtype``, adding a converted weight or a Cast on first use."""
        if name in self.initializers:
            if dtype == TensorProto.FLOAT:
                self.fp32_weight_uses.add(name)
                return name
            self.low_weight_uses.add(name)
            target = f"{name}__{_SUFFIXES[dtype]}"
            if target not in self.new_initializers:
                self.new_initializers[target] = self.convert_weight(self.initializers[name], target, dtype)
            return target
        copies = self.versions.setdefault(name, {TensorProto.FLOAT: name})
        if dtype not in copies:
            source = next(iter(copies.values()))
            target = f"{name}__{_SUFFIXES[dtype]}"
            self.new_nodes.append(helper.make_node("Cast", [source], [target], name=f"{target}__cast", to=dtype))
            self.casts += 1
            copies[dtype] = target
        return copies[dtype]

    def any_copy(self, name: str) -> str:
        if name in self.initializers:
            self.fp32_weight_uses.add(name)
            return name
        return next(iter(self.versions.get(name, {TensorProto.FLOAT: name}).values()))

    def convert_weight(self, tensor: onnx.TensorProto, name: str, dtype: int) -> onnx.TensorProto:
        values = numpy_helper.to_array(tensor).astype(np.float32)
        if dtype == TensorProto.FLOAT16:
            over = np.abs(values) > FP16_MAX
            self.clamped += int(np.count_nonzero(over & np.isfinite(values)))
            return numpy_helper.from_array(np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16), name)
        import ml_dtypes  # a dependency of onnx >= 1.17 (bfloat16 arrays)

        return numpy_helper.from_array(values.astype(ml_dtypes.bfloat16), name)

    def accepts_low(self, schema, index: int) -> bool:
        """Whether input ``index`` of this op may be fp16/bf16 (Resize's scales, e.g., may not)."""
        if schema is None or not schema.inputs:
            return False
        formal = schema.inputs[min(index, len(schema.inputs) - 1)]
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        return self.low_string in allowed.get(formal.type_str, {formal.type_str})

    def schema(self, node: onnx.NodeProto):
        try:
            return onnx.defs.get_schema(node.op_type, self.opset, node.domain or "")
        except onnx.defs.SchemaError:
            return None

    def rewrite_node(self, node: onnx.NodeProto, reduced: bool) -> None:
        schema = self.schema(node) if reduced else None
        reduced = reduced and schema is not None  # an unknown op keeps fp32 (Casts around it)
        converted_params: set[str] = set()
        inputs = []
        for index, name in enumerate(node.input):
            if not name or not self.is_float(name):
                inputs.append(name)
                continue
            if node.op_type in _SHAPE_READERS:
                inputs.append(self.any_copy(name))
                continue
            low = reduced and self.accepts_low(schema, index)
            inputs.append(self.copy_of(name, self.low if low else TensorProto.FLOAT))
            if low:
                converted_params.add(schema.inputs[min(index, len(schema.inputs) - 1)].type_str)
        del node.input[:]
        node.input.extend(inputs)
        low_outputs = set()
        if reduced and node.op_type in _ATTRIBUTE_TYPED:
            low_outputs = self.retype_attribute(node)
        elif reduced:
            for index, name in enumerate(node.output):
                formal = schema.outputs[min(index, len(schema.outputs) - 1)] if schema.outputs else None
                if name and self.is_float(name) and formal is not None and formal.type_str in converted_params:
                    low_outputs.add(name)
        pairs = []  # (name consumers know, name this node now writes)
        for name in node.output:
            if name in low_outputs and name in self.graph_outputs:
                pairs.append((name, f"{name}__{_SUFFIXES[self.low]}"))  # the fp32 name becomes the Cast's output
            else:
                pairs.append((name, name))
        del node.output[:]
        node.output.extend(actual for _, actual in pairs)
        self.new_nodes.append(node)
        for original, actual in pairs:
            if not original:
                continue
            if original not in low_outputs:
                self.versions[original] = {TensorProto.FLOAT: actual}
                continue
            self.versions[original] = {self.low: actual}
            if original in self.graph_outputs:
                self.new_nodes.append(helper.make_node(
                    "Cast", [actual], [original], name=f"{original}__output_cast", to=TensorProto.FLOAT))
                self.casts += 1
                self.versions[original][TensorProto.FLOAT] = original

    def retype_attribute(self, node: onnx.NodeProto) -> set[str]:
        """Cast(to=FLOAT) -> Cast(to=low), ConstantOfShape(float value) -> low value; others stay fp32."""
        if node.op_type == "Cast":
            attribute = next(a for a in node.attribute if a.name == "to")
            if attribute.i == TensorProto.FLOAT:
                attribute.i = self.low
                return {node.output[0]}
        if node.op_type == "ConstantOfShape":
            attribute = next((a for a in node.attribute if a.name == "value"), None)
            if attribute is not None and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(self.convert_weight(attribute.t, attribute.t.name, self.low))
                return {node.output[0]}
        return set()


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Constant nodes holding a float tensor become initializers, so one rule converts all weights."""
    kept = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and not node.domain and value is not None and len(node.attribute) == 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _opset_for(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """bf16 needs opset 22: ONNX added bfloat16 to Conv, ConvTranspose and the pooling ops there."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if precision != "bf16" or opset >= BF16_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, BF16_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeErrors from C++
        raise TextcamError(
            f"bf16 needs the graph at ONNX opset {BF16_OPSET} (bfloat16 convolutions), and converting it from "
            f"opset {opset} failed ({first_line(exc)}); use --precision fp16"
        ) from None


def _check_structure(model: onnx.ModelProto) -> None:
    graph = model.graph
    inputs = [i.name for i in graph.input]
    if "image" not in inputs or FORWARD_OUTPUT not in [o.name for o in graph.output]:
        raise TextcamError(
            f"graph inputs {inputs} / outputs {[o.name for o in graph.output]}: expected a textcam joint graph "
            "with an 'image' input and a 'logits' output"
        )
    nested = [n.name or n.op_type for n in graph.node
              if n.op_type in _SUBGRAPH_OPS or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                   for a in n.attribute)]
    if nested:
        raise TextcamError(f"node {nested[0]}: control flow with subgraphs is not supported by the precision rewrite")


def reduce_precision(model: onnx.ModelProto, precision: str) -> tuple[onnx.ModelProto, PrecisionReport]:
    """A copy of ``model`` with its forward pass in ``precision`` ("fp16" or "bf16"); see the module doc."""
    if check_precision(precision) == "fp32":
        raise TextcamError("precision fp32: the graph is already fp32; no reduced copy is needed")
    low = REDUCED_TYPES[precision]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _check_structure(model)
    model = _opset_for(model, precision)
    _constants_to_initializers(model)
    graph = model.graph
    forward = forward_nodes(graph)
    if "target_class" in [i.name for i in graph.input] and forward & downstream_nodes(graph, "target_class"):
        raise TextcamError("graph: logits depend on target_class; not a textcam joint graph")
    rewriter = _Rewriter(model, low)
    nodes = list(graph.node)
    for index, node in enumerate(nodes):
        rewriter.rewrite_node(node, index in forward)
    used = {name for node in rewriter.new_nodes for name in node.input} | {o.name for o in graph.output}
    initializers = [t for t in graph.initializer if t.name in used]
    initializers += [t for name, t in rewriter.new_initializers.items() if name in used]
    del graph.node[:]
    graph.node.extend(rewriter.new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]  # the old types are stale; inference below writes fresh ones
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise TextcamError(f"the {precision} copy of the graph does not type-check ({first_line(exc)})") from None
    for output in model.graph.output:  # keep_io_types: the host reads fp32 as from model.onnx
        if output.type.tensor_type.elem_type == low:
            raise TextcamError(f"internal error: output {output.name} became {precision}")
    converted = rewriter.low_weight_uses - rewriter.fp32_weight_uses
    report = PrecisionReport(
        precision=precision,
        reduced_nodes=len(forward),
        fp32_nodes=len(nodes) - len(forward),
        casts_added=rewriter.casts,
        weights_converted=len(converted),
        weights_duplicated=len(rewriter.low_weight_uses & rewriter.fp32_weight_uses),
        values_clamped=rewriter.clamped,
    )
    return model, report


SOURCE_KEY = "textcam.source_sha256"  # metadata: which model.onnx a reduced copy was made from


def write_reduced_graph(source: Path, out: Path, precision: str, source_sha256: str | None = None) -> PrecisionReport:
    """Write the reduced-precision copy of ``source`` to ``out`` atomically; return what was done.

    The copy records the source's sha256 in its metadata, so a stale copy (the bundle was
    re-exported) is recognised and rewritten by :func:`reduced_graph`.
    """
    from textcam.runtime.bundle_files import sha256_file, write_file_atomic

    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError / OSError subclasses for bad files
        raise TextcamError(
            f"{source}: cannot read the ONNX graph ({first_line(exc)}); re-run `textcam export`"
        ) from None
    reduced, report = reduce_precision(model, precision)
    onnx.helper.set_model_props(reduced, {SOURCE_KEY: source_sha256 or sha256_file(Path(source)),
                                          "textcam.precision": precision})
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(Path(out), reduced.SerializeToString())
    except OSError as exc:
        raise TextcamError(f"{out}: cannot write the {precision} graph there ({exc.strerror or exc})") from None
    return report


def reduced_graph(source: Path, source_sha256: str, folder: Path, precision: str) -> Path:
    """``folder/model.<precision>.onnx`` for ``source``, written (or rewritten when stale) if needed."""
    path = Path(folder) / reduced_graph_name(precision)
    if path.is_file():
        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception:  # unreadable: rewrite it
            props = {}
        if props.get(SOURCE_KEY) == source_sha256:
            return path
    write_reduced_graph(source, path, precision, source_sha256)
    return path
