"""Text ranking fused into the joint graph: ``concept_ids`` and ``concept_scores`` straight from the model.

:func:`fuse_ranking` appends to a copy of ``model.onnx`` the few nodes of docs/architecture.md sections 4.5-4.6

    beta   = channel_weights                          ("weights")
           | Relu(channel_weights * channel_activation)  ("contribution")
    q      = beta @ S / max(||beta @ S||, eps)          (S [C, D] an initializer)
    scores = q @ T^T                                   (T^T [D, V] an initializer)
    concept_scores, concept_ids = TopK(scores, N)      (largest, sorted)

so a host that only runs the graph (ONNX Runtime or TensorRT from C++, Triton) gets the candidate
phrases without any code of ours; it maps ids to phrases from the store's metadata. Every existing
output is kept, unchanged. Only standard ONNX operators that TensorRT parses are used (Mul, Relu,
MatMul, ReduceL2, Max, Div, TopK), in the graph's own opset.

The same numbers in numpy: :func:`textcam.runtime.concepts.aggregate` then
:func:`~textcam.runtime.concepts.rank` (the runtime uses this graph, when the bundle has one, only
to obtain the candidates).

``concept_ids`` are the *candidates* in plain cosine order (TopK: ties by lower id, as
:func:`~textcam.runtime.concepts.rank`), not the phrases an explanation lists: those come from the
diverse selection over these candidates, in selection order (see :mod:`textcam.runtime.concepts`,
"Order"), so ``concept_ids[0]`` is not always ``Explanation.concepts[0]`` ("green background"
ranks above "green object" where selection lists "green object" first). The Explainer uses the
graph whenever its N >= min(requested candidates, V) and its beta matches, and re-scores the
candidates from q in numpy, so the listed phrases are identical with or without the graph.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from textcam.errors import TextcamError, first_line
from textcam.runtime.bundle_files import write_file_atomic
from textcam.runtime.concepts import BETA_MODES, MAX_CANDIDATES

OUTPUTS = ("concept_ids", "concept_scores")
PREFIX = "textcam_ranking/"
EPS = 1e-12


def fused_graph_fits(fused, beta: str, candidates: int, vocabulary_size: int) -> bool:
    """Whether the fused graph (a :class:`~textcam.runtime.manifest.FusedGraphSection`) can give the
    candidates for these concept settings: the same beta mode, and at least ``min(candidates, V)``
    of them (N >= V means every phrase on both paths). Explainer and `textcam triton` decide by it."""
    return fused.beta == beta and fused.candidates >= min(candidates, vocabulary_size)


def fuse_ranking(
    model_path: str | Path,
    out_path: str | Path,
    S: np.ndarray,
    T: np.ndarray,
    mode: str = "contribution",
    candidates: int = 64,
) -> dict:
    """Write ``out_path``: the joint graph at ``model_path`` plus the ranking outputs.

    ``S`` [C, D] channel semantics and ``T`` [V, D] text embeddings (unit rows, as in the store;
    stored in the graph as float32). ``candidates`` N (1 to ``MAX_CANDIDATES``) is capped at V
    (N >= V: all phrases, which the runtime treats like any larger request). Returns the entry for
    ``manifest["semantics"]["fused_graph"]``: {"file", "sha256", "candidates", "beta"}.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if mode not in BETA_MODES:
        raise TextcamError(f"beta {mode!r}: choose one of {', '.join(BETA_MODES)}")
    S = np.ascontiguousarray(S, dtype=np.float32)
    T = np.ascontiguousarray(T, dtype=np.float32)
    if S.ndim != 2 or T.ndim != 2 or S.shape[1] != T.shape[1]:
        raise TextcamError(f"fuse_ranking: channel semantics {S.shape} and text embeddings {T.shape} do not fit")
    if isinstance(candidates, (bool, np.bool_)) or not isinstance(candidates, (int, np.integer)) \
            or not 1 <= candidates <= MAX_CANDIDATES:
        raise TextcamError(f"candidates={candidates!r}: expected an integer from 1 to {MAX_CANDIDATES:,}")
    count = min(int(candidates), T.shape[0])
    try:
        # weights kept where they are: a graph with external data (model.onnx.data) stays a reference
        # to it, so the fused copy beside it in the bundle shares that file instead of copying 2 GB+
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises protobuf errors for damaged files
        raise TextcamError(
            f"{model_path}: cannot load the ONNX graph ({first_line(exc)}); re-run `textcam export`"
        ) from None
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    for name in ("channel_weights", "channel_activation"):
        if name not in outputs:
            raise TextcamError(f"{model_path}: has no {name!r} output; is it a textcam joint graph?")
    clash = [name for name in OUTPUTS if name in outputs]
    if clash:
        raise TextcamError(
            f"{model_path}: already has {', '.join(clash)}; fuse into the plain joint graph (model.onnx)"
        )
    weight_dims = outputs["channel_weights"].type.tensor_type.shape.dim
    channels = weight_dims[1].dim_value if len(weight_dims) == 2 else 0
    if channels and channels != S.shape[0]:
        raise TextcamError(
            f"semantics have {S.shape[0]} channels, the graph's layer has {channels}: re-run `textcam semantics`"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise TextcamError(f"{model_path}: opset {opset} is too old for fusing (13 or newer needed)")
    batch = weight_dims[0] if weight_dims else None

    def name(x: str) -> str:
        return PREFIX + x

    initializers = [
        numpy_helper.from_array(S, name("channel_semantics")),
        numpy_helper.from_array(np.ascontiguousarray(T.T), name("text_embeddings_t")),
        numpy_helper.from_array(np.array([count], dtype=np.int64), name("k")),
        numpy_helper.from_array(np.array(EPS, dtype=np.float32), name("eps")),
    ]
    nodes = []
    if mode == "contribution":
        nodes.append(helper.make_node("Mul", ["channel_weights", "channel_activation"], [name("product")]))
        nodes.append(helper.make_node("Relu", [name("product")], [name("beta")]))
        beta = name("beta")
    else:
        beta = "channel_weights"
    nodes.append(helper.make_node("MatMul", [beta, name("channel_semantics")], [name("query_raw")]))
    if opset >= 18:
        initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), name("axes")))
        nodes.append(helper.make_node("ReduceL2", [name("query_raw"), name("axes")], [name("norm")], keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceL2", [name("query_raw")], [name("norm")], axes=[1], keepdims=1))
    nodes += [
        helper.make_node("Max", [name("norm"), name("eps")], [name("norm_safe")]),
        helper.make_node("Div", [name("query_raw"), name("norm_safe")], [name("query")]),
        helper.make_node("MatMul", [name("query"), name("text_embeddings_t")], [name("scores")]),
        helper.make_node("TopK", [name("scores"), name("k")], ["concept_scores", "concept_ids"], axis=-1, largest=1,
                         sorted=1),
    ]
    existing = {v for node in graph.node for v in node.output} | {i.name for i in graph.initializer}
    taken = sorted(v for v in [*(i.name for i in initializers), *(o for n in nodes for o in n.output)] if v in existing)
    if taken:
        raise TextcamError(f"{model_path}: already holds names {taken[:3]}; was the ranking fused twice?")
    graph.initializer.extend(initializers)
    graph.node.extend(nodes)

    def output(value_name: str, dtype: int):
        info = helper.make_tensor_value_info(value_name, dtype, [None, count])
        if batch is not None:
            info.type.tensor_type.shape.dim[0].CopyFrom(batch)
        return info

    graph.output.extend([output("concept_ids", TensorProto.INT64), output("concept_scores", TensorProto.FLOAT)])
    try:
        onnx.checker.check_model(_checkable(model))
        data = model.SerializeToString()
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise TextcamError(f"fused graph: {first_line(exc)}") from None
    out_path = Path(out_path)
    write_file_atomic(out_path, data)
    return {"file": out_path.name, "sha256": hashlib.sha256(data).hexdigest(), "candidates": count, "beta": mode}


def _checkable(model):
    """``model``, or a copy whose external-data weights are graph inputs instead: the checker would
    look for their file relative to the working directory, not beside the graph."""
    import onnx
    from onnx import helper

    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    names = {t.name for t in external}
    kept = [t for t in copy.graph.initializer if t.name not in names]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    copy.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external)
    return copy
