"""The ONNX-level rewrite after export: products with a transposed weight read the stored weight
through Gemm's transB, so no session folds a second, transposed copy of it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from textcam.export.onnx_passes import transposes_into_gemm


def _model(a_rank: int, w: np.ndarray, consumers: list[str]) -> onnx.ModelProto:
    """A = input; t = Transpose(W); one output per consumer of t: MatMul(A, t) or Gemm(A, t, transB)."""
    k, n = w.shape[1], w.shape[0]
    a_shape = ["b", k] if a_rank == 2 else ["b", 3, k]
    nodes = [helper.make_node("Transpose", ["W"], ["t"], perm=[1, 0])]
    outputs = []
    for i, kind in enumerate(consumers):
        out = f"y{i}"
        if kind == "matmul":
            nodes.append(helper.make_node("MatMul", ["A", "t"], [f"p{i}"]))
            shape = [*a_shape[:-1], n]
        elif kind == "twice":  # B @ t.T = B @ W, as a linear layer's backward exports
            nodes.append(helper.make_node("Transpose", ["t"], [f"back{i}"], perm=[1, 0]))
            nodes.append(helper.make_node("MatMul", ["B", f"back{i}"], [f"p{i}"]))
            shape = ["b", k]
        else:  # Gemm(B, t, transB=1) = B @ t.T = B @ W
            nodes.append(helper.make_node("Gemm", ["B", "t"], [f"p{i}"], transB=1))
            shape = ["b", k]
        nodes.append(helper.make_node("Relu", [f"p{i}"], [out]))  # the product is no graph output
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, a_shape),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, ["b", n])],
        outputs,
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(model)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    graph = ir.serde.deserialize_model(model)
    removed = transposes_into_gemm(graph)
    return ir.serde.serialize_model(graph), removed


@pytest.mark.parametrize("consumers", [["matmul"], ["gemm"], ["matmul", "gemm"], ["gemm", "twice"]])
def test_products_read_the_stored_weight_and_give_the_same_values(consumers):
    rng = np.random.default_rng()
    w = rng.standard_normal((5, 7)).astype(np.float32)  # [N, K]
    model = _model(2, w, consumers)
    feeds = {"A": rng.standard_normal((4, 7)).astype(np.float32), "B": rng.standard_normal((4, 5)).astype(np.float32)}
    before = _run(model, feeds)
    after_model, removed = _rewritten(model)
    onnx.checker.check_model(after_model, full_check=True)
    assert removed == 1 + consumers.count("twice")
    assert [n.op_type for n in after_model.graph.node].count("Transpose") == 0
    assert all(n.input[1] == "W" for n in after_model.graph.node if n.op_type in ("Gemm", "MatMul"))
    for got, want in zip(_run(after_model, feeds), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert [o.name for o in after_model.graph.output] == [o.name for o in model.graph.output]


def test_a_batched_matmul_keeps_its_transpose():
    """Gemm multiplies matrices only: a 3-D left operand stays a MatMul of the Transpose."""
    w = np.random.default_rng().standard_normal((5, 7)).astype(np.float32)
    after_model, removed = _rewritten(_model(3, w, ["matmul"]))
    assert removed == 0 and "Transpose" in [n.op_type for n in after_model.graph.node]


def test_exported_linear_heads_hold_each_weight_once(tmp_path):
    """A real export: the head's weight is read forward and backward, never through a Transpose."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from textcam.export import export_bundle

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10),
    )
    torch.manual_seed(0)
    bundle = export_bundle(model, "1", tmp_path / "b.textcam", input_size=32)
    graph = onnx.load(str(bundle.path / "model.onnx"))
    weights = {i.name for i in graph.graph.initializer}
    assert not [n for n in graph.graph.node if n.op_type == "Transpose" and n.input[0] in weights]
    big = [i for i in graph.graph.initializer if np.prod(i.dims) >= 128 * 32]
    assert len(big) == 1  # the first linear layer's weight, once
