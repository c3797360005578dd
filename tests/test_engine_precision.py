"""textcam.engines.precision (with the graph walks of textcam.engines.graph_surgery): the
reduced-precision rewrite of a small exported bundle, checked with ONNX Runtime on the CPU: the fp16
graph must run, gradients must stay fp32 and close to the fp32 graph's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from textcam.engines.graph_surgery import downstream_nodes, forward_nodes
from textcam.engines.precision import reduce_precision, reduced_graph, write_reduced_graph
from textcam.errors import TextcamError
from textcam.runtime.bundle import Bundle

FP16_MIN_NORMAL = 6.104e-5


def run_graph(path: Path, images: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": images, "target_class": classes}), strict=True))


def float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (after ONNX's own type inference)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types_ = {t.name: t.data_type for t in inferred.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types_[value.name] = value.type.tensor_type.elem_type
    return types_


def test_fp16_graph_runs_and_keeps_the_backward_pass_in_fp32(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    reduced, report = reduce_precision(model, "fp16")
    types_ = float_types(reduced)
    graph = reduced.graph
    # the interface is unchanged: fp32 in, fp32 out
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("image", onnx.TensorProto.FLOAT), ("target_class", onnx.TensorProto.INT64)]
    for output in graph.output:
        assert output.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64), output.name
    # every node downstream of the class choice (one-hot seed, backward, CAM) sees and makes no fp16 tensor
    seeded = downstream_nodes(graph, "target_class")
    assert seeded, "the graph must have a backward part"
    for index in seeded:
        node = graph.node[index]
        for name in [*node.input, *node.output]:
            assert types_.get(name) != onnx.TensorProto.FLOAT16, f"{node.op_type} {node.name}: {name} is fp16"
    # the forward convolutions do run in fp16, and a weight shared with the backward pass exists twice
    forward = [graph.node[i] for i in forward_nodes(graph)]
    convs = [n for n in forward if n.op_type == "Conv"]
    assert len(convs) == 3 and all(types_[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
    backward_convs = [graph.node[i] for i in seeded if graph.node[i].op_type == "ConvTranspose"]
    assert backward_convs and all(types_[n.input[1]] == onnx.TensorProto.FLOAT for n in backward_convs)
    assert report.reduced_nodes == len(forward_nodes(model.graph))  # counted on the original graph
    assert report.weights_duplicated >= 1 and report.casts_added >= 2
    # and ONNX Runtime on the CPU runs it
    path = tiny_bundle.parent / "model.fp16.test.onnx"
    onnx.save(reduced, str(path))
    images = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    outputs = run_graph(path, images, np.array([0, 3, -1]))
    for name in ("logits", "cam", "channel_weights", "channel_activation"):
        assert outputs[name].dtype == np.float32, name


def test_tiny_gradients_survive_because_the_backward_pass_stays_fp32(tiny_bundle, tmp_path):
    """Scale the backward copy of the last layer's weight so every gradient is far below fp16's
    normal range: a half-precision backward would flush them; the rewrite keeps them exact."""
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    graph = model.graph
    seeded = downstream_nodes(graph, "target_class")
    matmul = next(graph.node[i] for i in sorted(seeded) if graph.node[i].op_type == "MatMul")
    weight = next(t for t in graph.initializer if t.name == matmul.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1e-6, weight.name))
    scaled = tmp_path / "scaled.onnx"
    onnx.save(model, str(scaled))
    reduced, _ = reduce_precision(model, "fp16")
    reduced_path = tmp_path / "scaled.fp16.onnx"
    onnx.save(reduced, str(reduced_path))
    images = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    classes = np.array([0, 1, 2, 3])
    full, half = run_graph(scaled, images, classes), run_graph(reduced_path, images, classes)
    magnitude = np.abs(full["channel_weights"]).max()
    assert 0 < magnitude < FP16_MIN_NORMAL / 10, "the test needs gradients below fp16's normal range"
    assert np.abs(half["channel_weights"] - full["channel_weights"]).max() < 2e-2 * magnitude
    assert np.abs(half["cam"] - full["cam"]).max() < 2e-2


def test_bf16_graph_moves_to_opset_22_and_type_checks(tiny_bundle):
    reduced, report = reduce_precision(onnx.load(str(tiny_bundle / "model.onnx")), "bf16")
    assert next(o.version for o in reduced.opset_import if o.domain in ("", "ai.onnx")) == 22
    types_ = float_types(reduced)
    convs = [n for i, n in enumerate(reduced.graph.node) if n.op_type == "Conv" and i in forward_nodes(reduced.graph)]
    assert convs and all(types_[n.output[0]] == onnx.TensorProto.BFLOAT16 for n in convs)
    for index in downstream_nodes(reduced.graph, "target_class"):
        node = reduced.graph.node[index]
        assert all(types_.get(name) != onnx.TensorProto.BFLOAT16 for name in [*node.input, *node.output])
    assert [o.type.tensor_type.elem_type for o in reduced.graph.output if o.name == "cam"] == [onnx.TensorProto.FLOAT]
    assert report.precision == "bf16"


def test_the_logits_only_graph_can_be_reduced_too(tiny_bundle, tmp_path):
    """``textcam bench``'s plain baseline: the pruned graph has no target_class input."""
    from textcam.engines.graph_surgery import extract_logits_graph

    plain = extract_logits_graph(tiny_bundle / "model.onnx", tmp_path / "plain.onnx")
    report = write_reduced_graph(plain, tmp_path / "plain.fp16.onnx", "fp16")
    assert report.fp32_nodes == 0
    session = ort.InferenceSession(str(tmp_path / "plain.fp16.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (logits,) = session.run(None, {"image": images})
    reference = run_graph(tiny_bundle / "model.onnx", images, np.array([-1, -1]))["logits"]
    assert logits.dtype == np.float32 and np.abs(logits - reference).max() < 2e-2 * np.abs(reference).max()


def test_reduce_precision_refuses_what_it_cannot_do(tiny_bundle, tmp_path):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    with pytest.raises(TextcamError, match="already fp32"):
        reduce_precision(model, "fp32")
    with pytest.raises(TextcamError, match="precision 'int8'"):
        reduce_precision(model, "int8")
    renamed = onnx.ModelProto.FromString(model.SerializeToString())
    renamed.graph.output[0].name = "scores"
    with pytest.raises(TextcamError, match="'logits' output"):
        reduce_precision(renamed, "fp16")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(TextcamError, match="cannot read the ONNX graph"):
        write_reduced_graph(broken, tmp_path / "out.onnx", "fp16")


def test_reduced_graph_is_reused_until_the_model_changes(tiny_bundle_copy):
    opened = Bundle.open(tiny_bundle_copy)
    sha = opened.manifest["model"]["sha256"]
    folder = tiny_bundle_copy / "engines"
    path = reduced_graph(opened.model_path, sha, folder, "fp16")
    assert path == folder / "model.fp16.onnx"
    stamp = path.stat().st_mtime_ns
    assert reduced_graph(opened.model_path, sha, folder, "fp16").stat().st_mtime_ns == stamp
    path.write_bytes(b"stale")
    rewritten = reduced_graph(opened.model_path, sha, folder, "fp16")
    props = {p.key: p.value for p in onnx.load(str(rewritten)).metadata_props}
    assert props == {"textcam.source_sha256": sha, "textcam.precision": "fp16"}
