"""The plain-inference part of a joint graph: the nodes that compute ``logits`` from ``image``.

Used as the same-weights, same-backend baseline when timing explanations (``textcam bench``):
pruning the joint graph needs no torch and no second export. Needs the ``onnx`` package.
"""

from __future__ import annotations

from pathlib import Path


def extract_logits_graph(joint_model: Path, out: Path) -> Path:
    import onnx

    model = onnx.load(str(joint_model))
    needed = {"logits"}
    kept = []
    for node in reversed(model.graph.node):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    graph = model.graph
    del graph.node[:]
    graph.node.extend(kept)
    for field, keep in ((graph.input, lambda v: v.name in needed), (graph.output, lambda v: v.name == "logits")):
        values = [v for v in field if keep(v)]
        del field[:]
        field.extend(values)
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.save(model, str(out))
    return out
