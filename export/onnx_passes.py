"""Rewrites of the exported ONNX graph that keep its values and save memory where it runs.

A linear layer is used twice in the joint graph: forward as ``x @ W.T`` and backward (the gradient
reaching the explained layer) as ``g @ W``. The exporter stores one of the two forms as the
initializer and reaches the other through a ``Transpose`` of it, which every ONNX Runtime session
constant-folds into a second, transposed copy of the weight: twice the memory for every linear
weight (VGG-16's classifier: 0.48 GB more; every projection of a ViT). ``Gemm`` reads its B operand transposed
(``transB``), so :func:`transposes_into_gemm` lets the consumers read the one stored form.
"""

from __future__ import annotations

import onnx_ir as ir


def _swaps_matrix(node: ir.Node) -> bool:
    """Whether ``node`` is a Transpose of a matrix (perm [1, 0], or none given on a 2-D input)."""
    if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
        return False
    source = node.inputs[0]
    if source is None or source.shape is None or len(source.shape) != 2:
        return False
    perm = node.attributes.get("perm")
    return perm is None or list(perm.as_ints()) == [1, 0]


def _transposed_weight(node: ir.Node) -> ir.Value | None:
    """The 2-D initializer ``node`` transposes, or None if it is anything else."""
    source = node.inputs[0] if node.inputs else None
    if source is None or source.const_value is None or not _swaps_matrix(node):
        return None
    return source


def _reads_as_b(user: ir.Node, index: int) -> bool:
    """Whether ``user`` is a Gemm, or a MatMul of a matrix, reading the value as its B operand."""
    if user.domain not in ("", "ai.onnx") or index != 1:
        return False
    if user.op_type == "Gemm":
        return True
    a = user.inputs[0]
    matrix = a is not None and a.shape is not None and len(a.shape) == 2
    return user.op_type == "MatMul" and matrix and not user.outputs[0].is_graph_output()


def transposes_into_gemm(model: ir.Model) -> int:
    """Replace ``MatMul(A, Transpose(W))`` and ``Gemm(A, Transpose(W))`` of a 2-D initializer W by
    ``Gemm(A, W, transB=1 - transB)``, where every reader of the Transpose is such a product.
    A Transpose of such a Transpose (what ``aten.t(aten.t(W))`` exports as: the backward of a
    linear layer) reads W itself. Run before constant folding, which would store the transposed
    copies as initializers. Returns the number of Transposes removed."""
    graph = model.graph
    removed = 0
    for node in list(graph):
        weight = _transposed_weight(node)
        output = node.outputs[0]
        if weight is None or output.is_graph_output():
            continue
        for user, _ in list(output.uses()):
            if _swaps_matrix(user) and not user.outputs[0].is_graph_output():
                ir.convenience.replace_all_uses_with(user.outputs[0], weight)
                graph.remove(user, safe=True)
                removed += 1
        uses = list(output.uses())
        if not uses:
            graph.remove(node, safe=True)
            removed += 1
            continue
        if not all(_reads_as_b(user, index) for user, index in uses):
            continue
        for user, _ in uses:
            if user.op_type == "Gemm":
                flipped = 1 - (user.attributes["transB"].as_int() if "transB" in user.attributes else 0)
                user.attributes["transB"] = ir.AttrInt64("transB", flipped)
                user.replace_input_with(1, weight)
                continue
            gemm = ir.Node("", "Gemm", [user.inputs[0], weight], [ir.AttrInt64("transB", 1)],
                           name=f"{user.name}_gemm" if user.name else None)
            graph.insert_before(user, gemm)
            result = user.outputs[0]
            gemm.outputs[0].shape, gemm.outputs[0].type = result.shape, result.type
            ir.convenience.replace_all_uses_with(result, gemm.outputs[0])
            graph.remove(user, safe=True)
            gemm.outputs[0].name = result.name
        graph.remove(node, safe=True)
        removed += 1
    return removed
