"""A static check of the written graph against what TensorRT's ONNX parser accepts.

It does not need TensorRT: it lists the nodes that are known not to parse (MaxPool's Indices
output, scatter ops, which the joint graph avoids by construction) so an export can say up front
whether ``textcam build-engine`` will work, and which layer is in the way if not.
"""

from __future__ import annotations

import onnx

# ops TensorRT's parser rejects or that force slow fallbacks; the joint graph should have none
UNSUPPORTED = {"ScatterElements", "ScatterND", "Scatter", "NonZero", "Unique", "SequenceConstruct", "Loop"}


def tensorrt_report(model: onnx.ModelProto) -> dict:
    problems = []
    for node in model.graph.node:
        if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            problems.append(f"{node.name}: MaxPool with an Indices output")
        elif node.op_type in UNSUPPORTED:
            problems.append(f"{node.name}: {node.op_type}")
    return {"compatible": not problems, "problems": problems[:20]}
