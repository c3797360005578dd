"""Graph surgery on a joint graph: which nodes compute the logits, and the logits-only subgraph.

One walk answers "the nodes that compute ``logits`` from ``image``" (:func:`forward_nodes`, the
forward pass). The precision rewrite (:mod:`textcam.engines.precision`) reduces exactly those
nodes; :func:`extract_logits_graph` keeps exactly those nodes, the plain-inference baseline
timed against explanations (``textcam bench``, the GPU latency benchmark): same weights, no
gradient, no torch and no second export. Needs the ``onnx`` package.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import onnx

from textcam.errors import TextcamError

FORWARD_OUTPUT = "logits"


def forward_nodes(graph: onnx.GraphProto, output: str = FORWARD_OUTPUT) -> set[int]:
    """Indices of the nodes ``output`` depends on (its ancestors), i.e. the forward pass for logits."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    if output not in producer:
        raise TextcamError(f"graph has no node producing {output!r}; is this a textcam joint graph?")
    needed, queue = set(), deque([producer[output]])
    while queue:
        index = queue.popleft()
        if index in needed:
            continue
        needed.add(index)
        queue.extend(producer[name] for name in graph.node[index].input if name in producer)
    return needed


def downstream_nodes(graph: onnx.GraphProto, source: str) -> set[int]:
    """Indices of the nodes that depend on ``source`` (a graph input such as ``target_class``)."""
    reached_tensors, reached = {source}, set()
    for index, node in enumerate(graph.node):  # nodes are topologically sorted in a valid graph
        if any(name in reached_tensors for name in node.input):
            reached.add(index)
            reached_tensors.update(node.output)
    return reached


def extract_logits_graph(joint_model: Path, out: Path) -> Path:
    """Write the part of ``joint_model`` that computes ``logits`` (:func:`forward_nodes`) to ``out``."""
    model = onnx.load(str(joint_model))
    graph = model.graph
    forward = forward_nodes(graph)
    kept = [node for index, node in enumerate(graph.node) if index in forward]
    needed = {FORWARD_OUTPUT} | {name for node in kept for name in node.input if name}
    del graph.node[:]
    graph.node.extend(kept)
    for field, keep in ((graph.input, lambda v: v.name in needed), (graph.output, lambda v: v.name == FORWARD_OUTPUT)):
        values = [v for v in field if keep(v)]
        del field[:]
        field.extend(values)
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.save(model, str(out))
    return out
