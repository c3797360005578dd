"""One ranking: the fused graph (model.semantics.onnx) and the numpy path list the same phrases in the
same order; the order of Explanation.concepts; the settings' bounds; non-finite channel weights."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from semantics_helpers import CLASSES, make_store, random_batch, unit

from textcam.errors import TextcamError
from textcam.runtime import Explainer, concepts
from textcam.runtime.concepts import ConceptSettings, aggregate, rank, select_diverse
from textcam.runtime.explanation import Concept
from textcam.runtime.fused_ranking import fuse_ranking
from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

FRESH_SCENES_SEED = 90_210
"""Not one of shapes_world/splits.py's seeds: scenes neither the models nor the semantics saw."""


def same(a: concepts.Selection, b: concepts.Selection) -> bool:
    """Same ids in the same order, scores within 1e-5, the same weights."""
    return (a.ids.shape == b.ids.shape and bool(np.all(a.ids == b.ids))
            and bool(np.all(np.abs(a.scores - b.scores) <= 1e-5))
            and bool(np.all(np.abs(a.weights - b.weights) <= 1e-9)))


def assert_same(a: concepts.Selection, b: concepts.Selection, where: str) -> None:
    np.testing.assert_array_equal(a.ids, b.ids, err_msg=where)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0, err_msg=where)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-9, rtol=0, err_msg=where)


# ---------------------------------------------------------------------------------------------
# concepts.* fed with the fused graph's outputs vs the numpy ranking, on random stores and inputs


def channel_graph(path: Path, channels: int) -> Path:
    """The smallest 'joint graph' fuse_ranking accepts: channel weights and activations fed straight in."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", channels]) for n in ("w", "a")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", channels])
               for n in ("channel_weights", "channel_activation")]
    nodes = [helper.make_node("Identity", ["w"], ["channel_weights"]),
             helper.make_node("Identity", ["a"], ["channel_activation"])]
    model = helper.make_model(helper.make_graph(nodes, "channels", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def random_case(rng):
    C = int(rng.choice([3, 16, 64, 200]))
    D = int(rng.choice([4, 8, 32, 64]))
    V = int(rng.choice([2, 7, 30, 90, 250]))
    N = int(rng.integers(1, V + 12))  # also beyond V: "all phrases"
    fused_n = int(rng.choice([N, N + int(rng.integers(1, 8)), V, V + 20, max(1, N - 1)]))
    return {
        "C": C, "D": D, "V": V, "N": N, "fused_n": fused_n, "B": int(rng.integers(1, 6)),
        "top_k": int(rng.integers(1, min(N, V + 3) + 1)), "common": float(rng.choice([0.0, 0.5, 0.85])),
        "beta": str(rng.choice(concepts.BETA_MODES)), "center": bool(rng.random() < 0.75),
        "l1": float(rng.choice([0.0, 0.05, 0.3, 0.6])), "l2": float(rng.choice([0.0, 0.2, 0.4])),
        "steps": int(rng.choice([0, 1, 30, 100])), "near_duplicates": bool(rng.random() < 0.4),
    }


def with_near_duplicates(store, rng):
    """The second half of the vocabulary: copies of the first half moved by ~3e-7, so that float32 rounding
    (graph vs numpy) can swap them: the near-ties that once made the two paths disagree."""
    T = store.text_embeddings.copy()
    half, D = len(T) // 2, T.shape[1]
    T[half : 2 * half] = T[:half] + 3e-7 * rng.standard_normal((half, D)).astype(np.float32)
    return dataclasses.replace(store, text_embeddings=(T / np.linalg.norm(T, axis=1, keepdims=True)).astype(np.float32))


def random_channels(rng, batch, channels):
    w = rng.standard_normal((batch, channels)) * 10.0 ** rng.uniform(-3, 2, (batch, 1))
    a = np.maximum(rng.standard_normal((batch, channels)), 0) * rng.uniform(0, 5, (batch, 1))
    if batch > 1 and rng.random() < 0.3:
        w[-1] = 0.0  # nothing contributes: q = 0, every cosine 0, a full tie resolved by phrase id
    if rng.random() < 0.2:
        w[0] = np.abs(w[0]) * 0 + 1.0  # equal weights
    return w.astype(np.float32), a.astype(np.float32)


def test_fused_graph_outputs_and_numpy_ranking_select_the_same_phrases(tmp_path):
    """>= 200 random (store, settings, channel weights) cases: concepts.* fed with the fused graph's
    concept_ids (re-scored from q, or as they come) give the numpy ranking's ids, order, scores, weights."""
    rng = np.random.default_rng(2024)
    cases = identical = rows = ties = raw_order_differs = 0
    failed = None
    for case_number in range(220):
        case = random_case(rng)
        C, D, V, N = case["C"], case["D"], case["V"], case["N"]
        store = make_store(channels=C, dim=D, vocabulary=V, seed=case_number, common=case["common"])
        if case["near_duplicates"]:
            store = with_near_duplicates(store, rng)
        S, T = store.channel_semantics, store.text_embeddings
        graph = tmp_path / f"g{case_number}.onnx"
        info = fuse_ranking(channel_graph(tmp_path / f"c{case_number}.onnx", C), graph, S, T, case["beta"],
                            case["fused_n"])
        assert info["candidates"] == min(case["fused_n"], V)
        w, a = random_channels(rng, case["B"], C)
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(None, {"w": w, "a": a}), strict=True))
        center = T.mean(axis=0) if case["center"] else False
        settings = (case["l1"], case["l2"], case["steps"], case["top_k"])

        q = aggregate(w, a, S, case["beta"])
        ids, _ = rank(q, T, N)
        numpy_path = select_diverse(q, T, ids, *settings, center=center)
        graph_ids = out["concept_ids"]
        # the graph's own ranking is the numpy ranking wherever neighbours are not tied within float error
        width = graph_ids.shape[1]
        own_ids, own_scores = rank(q, T, width + 1)  # one more: a near-tie across the graph's last place
        gaps = np.abs(np.diff(own_scores, axis=1)) > 1e-6
        clear = np.ones(own_ids.shape, bool)
        clear[:, 1:] &= gaps
        clear[:, :-1] &= gaps
        own_ids, own_scores, clear = own_ids[:, :width], own_scores[:, :width], clear[:, :width]
        np.testing.assert_allclose(out["concept_scores"], own_scores, atol=1e-5)
        np.testing.assert_array_equal(graph_ids[clear], own_ids[clear])
        raw_order_differs += int((graph_ids != own_ids).any(axis=1).sum())
        ties += int((~clear).any(axis=1).sum())

        paths = {}
        if graph_ids.shape[1] >= min(N, V):  # the Explainer's rule for using the fused graph
            among, _ = rank(q, T, N, among=graph_ids)
            paths["fused, re-ranked"] = select_diverse(q, T, among, *settings, center=center)
            if graph_ids.shape[1] == min(N, V):  # the same set, in the graph's order
                paths["fused, as given"] = select_diverse(q, T, graph_ids, *settings, center=center)
        paths["numpy, reversed candidates"] = select_diverse(q, T, ids[:, ::-1], *settings, center=center)
        agrees = all(same(numpy_path, other) for other in paths.values())
        if not agrees and failed is None:
            failed = (case_number, case, [name for name, other in paths.items() if not same(numpy_path, other)])
        # scores are the cosines with q; weights are alpha shares, listed first, descending; fill-ins 0
        np.testing.assert_allclose(numpy_path.scores, np.take_along_axis(q @ T.T, numpy_path.ids, 1), atol=1e-5)
        for row in numpy_path.weights:
            chosen = row[row > 0]
            assert np.all(np.diff(chosen) <= 0) and np.all(row[len(chosen):] == 0) and chosen.sum() <= 1 + 1e-9
        cases += 1
        rows += case["B"]
        identical += agrees
    print(f"\nconcepts.* on fused outputs vs numpy: {identical}/{cases} random cases identical ({rows} rows); "
          f"graph's raw order differed from numpy's in {raw_order_differs} rows, near-ties in {ties}")
    assert cases >= 200 and identical == cases, failed


def test_ties_are_broken_by_phrase_id_on_both_paths(tmp_path):
    """Duplicate phrases (equal embeddings) and q = 0: explicit (score, id) order, fused or not."""
    rng = np.random.default_rng(7)
    C, D = 12, 8
    T = unit(rng.standard_normal((10, D))).astype(np.float32)
    T[[2, 5, 7]] = T[3]  # four identical phrases
    S = unit(rng.standard_normal((C, D))).astype(np.float32)
    graph = fuse_ranking(channel_graph(tmp_path / "c.onnx", C), tmp_path / "g.onnx", S, T, "weights", 6)
    assert graph["candidates"] == 6
    w = np.stack([S @ T[3] + 0.0, np.zeros(C)]).astype(np.float32)  # row 0 points at the duplicates
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    graph_ids = session.run(["concept_ids"], {"w": w, "a": np.ones_like(w)})[0]
    q = aggregate(w, np.ones_like(w), S, "weights")
    ids, _ = rank(q, T, 6)
    assert list(ids[1]) == [0, 1, 2, 3, 4, 5]  # q = 0: every cosine 0, by id
    duplicates = [i for i in ids[0] if i in (2, 3, 5, 7)]
    assert duplicates == [2, 3, 5, 7]  # equal cosines by id
    for among in (graph_ids, ids[:, ::-1]):
        assert_same(select_diverse(q, T, ids, steps=0, top_k=6),
                    select_diverse(q, T, rank(q, T, 6, among=among)[0], steps=0, top_k=6), "ties")


# ---------------------------------------------------------------------------------------------
# the Explainer with the fused graph vs without, on exported bundles


@pytest.fixture(scope="module")
def cnn_bundles(make_bundle):
    """Two small shapes-world CNNs (16 and 32 channels at 'features', 32x32, random weights)."""
    pytest.importorskip("torch")
    from textcam.shapes_world.classifiers import build_cnn

    return {4 * width: make_bundle(lambda width=width: build_cnn(len(CLASSES), width).eval(), "features",
                                   seed=width, input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
            for width in (4, 8)}


def test_explainer_fused_and_numpy_agree_on_random_stores(make_bundle, cnn_bundles):
    rng = np.random.default_rng(11)

    cases = identical = fused_used = 0
    for number in range(24):
        channels = int(rng.choice(list(cnn_bundles)))
        case = random_case(rng)
        store = make_store(channels=channels, dim=case["D"], vocabulary=case["V"], seed=1000 + number,
                           common=case["common"])  # make_bundle binds it to the model
        if case["near_duplicates"]:
            store = with_near_duplicates(store, rng)
        defaults = {"beta": case["beta"], "top_k": case["top_k"], "candidates": case["N"], "l1": case["l1"],
                    "l2": case["l2"], "steps": case["steps"], "center": case["center"]}
        bundle = make_bundle(cnn_bundles[channels], semantics=store, semantics_defaults=defaults,
                             fused_candidates=case["fused_n"])
        fused, numpy_only = Explainer(bundle), Explainer(bundle, use_fused=False)
        assert not numpy_only.fused
        assert fused.fused == (min(case["fused_n"], case["V"]) >= min(case["N"], case["V"])), case
        fused_used += fused.fused
        batch = random_batch(number, 6, size=32) * rng.uniform(0.1, 3.0)
        for x, y in zip(fused.explain_batch(batch), numpy_only.explain_batch(batch), strict=True):
            assert len(x.concepts) == min(case["top_k"], case["N"], case["V"])
            cases += 1
            identical += ([c.phrase for c in x.concepts] == [c.phrase for c in y.concepts]
                          and all(abs(c.score - d.score) <= 1e-5 and c.weight == d.weight
                                  for c, d in zip(x.concepts, y.concepts, strict=True)))
    print(f"\nExplainer fused vs use_fused=False: {identical}/{cases} images identical "
          f"(24 random stores, fused graph used in {fused_used})")
    assert fused_used >= 10 and identical == cases


def test_default_bundle_uses_its_fused_graph_and_agrees_on_fresh_scenes():
    from textcam.shapes_world.generator import ShapesWorld

    if not DEFAULT_BUNDLE.is_dir():
        pytest.skip("default bundle not present")
    fused, numpy_only = Explainer(DEFAULT_BUNDLE), Explainer(DEFAULT_BUNDLE, use_fused=False)
    # defaults ask for 64 candidates, the graph ranks all V = 50: both mean every phrase
    assert fused.concept_settings.candidates > len(fused.semantics.phrases) and fused.fused
    world = ShapesWorld(seed=FRESH_SCENES_SEED)
    images = [world.scene(i).image for i in range(96)]
    listed_below_lower = 0
    for x, y in zip(fused.explain_batch(images), numpy_only.explain_batch(images), strict=True):
        assert [c.phrase for c in x.concepts] == [c.phrase for c in y.concepts]
        np.testing.assert_allclose([c.score for c in x.concepts], [c.score for c in y.concepts], atol=1e-5)
        weights = [c.weight for c in x.concepts]
        assert weights[0] > 0 and weights == sorted(weights, reverse=True)
        listed_below_lower += any(a.score < b.score for a, b in zip(x.concepts, x.concepts[1:], strict=False))
        record = x.to_dict()["concepts"]
        assert [c["weight"] for c in record] == weights
    assert listed_below_lower > 0  # selection order is not score order, and the weights show why


# ---------------------------------------------------------------------------------------------
# the order of Explanation.concepts, documented and visible


def test_concept_weight_defaults_and_report_says_the_order():
    from PIL import Image

    from textcam.runtime.explanation import Explanation
    from textcam.runtime.html_report import ReportItem, html_report

    old_style = Concept("red object", 0.5)
    assert old_style.weight == 0.0
    result = Explanation(0, "red", 0.9, np.zeros(2), np.zeros((4, 4), np.float32), np.zeros(3), np.zeros(3),
                         concepts=[Concept("red object", 0.088, 0.7), Concept("red background", 0.707)])
    assert result.to_dict()["concepts"] == [{"phrase": "red object", "score": 0.088, "weight": 0.7},
                                            {"phrase": "red background", "score": 0.707, "weight": 0.0}]
    page = html_report([ReportItem("x", Image.new("RGB", (4, 4)), result)])
    assert "order of selection weight" in page
    assert "selection order" in concepts.__doc__ and "hit@1" in concepts.__doc__


# ---------------------------------------------------------------------------------------------
# bounds


INTS = {"top_k": (1, concepts.MAX_TOP_K), "candidates": (1, concepts.MAX_CANDIDATES),
        "steps": (0, concepts.MAX_STEPS), "group_channels": (1, concepts.MAX_GROUP_CHANNELS)}
FLOATS = {"l1": concepts.MAX_L1, "l2": concepts.MAX_L2}


def settings_with(name, value):
    values = {name: value}
    if name == "top_k":
        values["candidates"] = concepts.MAX_CANDIDATES
    if name == "candidates":
        values["top_k"] = 1
    return ConceptSettings(**values)


GOOD = [(n, low) for n, (low, _) in INTS.items()] + [(n, high) for n, (_, high) in INTS.items()] + [
    ("steps", 100), ("top_k", np.int64(3)), ("l1", 0.0), ("l1", concepts.MAX_L1), ("l2", 0), ("l2", concepts.MAX_L2),
    ("l1", np.float32(0.3)), ("center", False), ("center", np.bool_(True)), ("beta", "weights"),
]
BAD = (
    [(n, low - 1) for n, (low, _) in INTS.items()]
    + [(n, high + 1) for n, (_, high) in INTS.items()]
    + [(n, bad) for n in INTS for bad in ("5", True, 5.0, math.nan, math.inf, -3, None, [5])]
    + [(n, bad) for n, high in FLOATS.items()
       for bad in (-0.01, high + 0.01, math.nan, math.inf, -math.inf, "0.3", True, None, 1e300)]
    + [("steps", 10**9), ("candidates", 10**6), ("beta", "both"), ("beta", None), ("beta", 1), ("center", "yes"),
       ("center", 1), ("center", None)]
)


@pytest.mark.parametrize(("name", "value"), GOOD, ids=[f"{n}={v!r}" for n, v in GOOD])
def test_settings_accept_values_within_bounds(name, value):
    settings_with(name, value).check()


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_settings_refuse_values_out_of_bounds_or_of_the_wrong_type(name, value):
    with pytest.raises(TextcamError, match=f"^{name}=") as caught:
        settings_with(name, value).check()
    message = str(caught.value)
    assert "\n" not in message
    if name in INTS:
        assert f"{INTS[name][1]:,}" in message
    if name in FLOATS:
        assert f"{FLOATS[name]:g}" in message


def test_top_k_at_most_candidates_and_none_means_not_given():
    with pytest.raises(TextcamError, match=r"^top_k=9: expected at most candidates=8"):
        ConceptSettings(top_k=9, candidates=8).check()
    # None (from the manifest or the caller) is "not given": the next source's value stays
    settings = ConceptSettings.resolve({"steps": None, "top_k": 3}, steps=None, top_k=None, l1=None)
    assert (settings.steps, settings.top_k, settings.l1) == (concepts.DEFAULT_STEPS, 3, concepts.DEFAULT_L1)
    # a manifest asking for a billion steps is refused up front (the Explainer resolves through this)
    with pytest.raises(TextcamError, match=f"^steps=1000000000: expected an integer from 0 to {concepts.MAX_STEPS:,}"):
        ConceptSettings.resolve({"steps": 10**9})


@pytest.mark.parametrize("candidates", [0, concepts.MAX_CANDIDATES + 1, 2.0, True, "8"])
def test_fuse_ranking_refuses_candidates_beyond_the_cap(tmp_path, candidates):
    rng = np.random.default_rng(0)
    with pytest.raises(TextcamError, match=r"^candidates=.*4,096"):
        fuse_ranking(channel_graph(tmp_path / "c.onnx", 4), tmp_path / "g.onnx", unit(rng.random((4, 3))),
                     unit(rng.random((5, 3))), "weights", candidates)
    assert not (tmp_path / "g.onnx").exists()


def test_fuse_ranking_accepts_the_cap(tmp_path):
    rng = np.random.default_rng(0)
    info = fuse_ranking(channel_graph(tmp_path / "c.onnx", 4), tmp_path / "g.onnx", unit(rng.random((4, 3))),
                        unit(rng.random((5, 3))), "weights", concepts.MAX_CANDIDATES)
    assert info["candidates"] == 5  # capped at V


# ---------------------------------------------------------------------------------------------
# non-finite channel weights


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["weights", "activation"])
def test_aggregate_refuses_non_finite_channel_values(bad, where):
    rng = np.random.default_rng(1)
    w, a, S = rng.standard_normal((4, 6)), rng.random((4, 6)), unit(rng.standard_normal((6, 5)))
    (w if where == "weights" else a)[2, 3] = bad
    what = "channel weights" if where == "weights" else "channel activations"
    with pytest.raises(TextcamError, match=f"non-finite {what} .*image row 2"):
        aggregate(w, a, S, "contribution")
    if where == "activation":  # beta = w does not use the activations
        assert np.isfinite(aggregate(w, a, S, "weights")).all()


def test_aggregate_refuses_an_overflowing_evidence_direction():
    S = np.ones((4, 2), np.float32)
    with pytest.raises(TextcamError, match="image row 0"):
        aggregate(np.full((1, 4), 3e38, np.float32), np.ones((1, 4)), S, "weights")


def test_select_diverse_refuses_non_finite_scores():
    T = unit(np.random.default_rng(2).standard_normal((5, 3))).astype(np.float32)
    with pytest.raises(TextcamError, match="non-finite"):
        select_diverse(None, T, np.array([[0, 1]]), candidate_scores=np.array([[np.nan, 0.1]]), center=False)
