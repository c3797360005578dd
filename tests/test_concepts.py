"""Concepts: aggregation, ranking, diverse selection (FISTA), channel groups, the fused ranking graph,
and their use by Explainer and `textcam explain`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from semantics_helpers import add_semantics, make_store, model_sha256, random_batch, random_unit, unit

from textcam.errors import TextcamError
from textcam.runtime import Bundle, Explainer, concepts
from textcam.runtime.bundle_files import sha256_file
from textcam.runtime.bundle_update import update_bundle
from textcam.runtime.concepts import (
    aggregate,
    channel_groups,
    objective,
    rank,
    select_diverse,
    solve_nonnegative,
)
from textcam.runtime.fused_ranking import fuse_ranking
from textcam.runtime.heatmap import finish_map

# ---------------------------------------------------------------------------------------------
# numpy core


def test_aggregate_and_rank_agree_with_a_per_image_loop():
    rng = np.random.default_rng(0)
    B, C, D, V, n = 6, 40, 16, 30, 7
    w, a = rng.standard_normal((B, C)), rng.random((B, C))
    S, T = random_unit(rng, C, D), random_unit(rng, V, D)
    for mode in ("contribution", "weights"):
        q = aggregate(w, a, S, mode)
        ids, scores = rank(q, T, n)
        assert ids.shape == scores.shape == (B, n) and ids.dtype == np.int64
        for i in range(B):
            beta = np.maximum(w[i] * a[i], 0) if mode == "contribution" else w[i]
            expected_q = beta @ S.astype(np.float64)
            expected_q /= np.linalg.norm(expected_q)
            np.testing.assert_allclose(q[i], expected_q, atol=1e-5)
            cosines = T.astype(np.float64) @ expected_q
            order = np.argsort(-cosines)[:n]
            np.testing.assert_array_equal(ids[i], order)
            np.testing.assert_allclose(scores[i], cosines[order], atol=1e-5)
    # n beyond the vocabulary: all phrases, sorted
    ids, scores = rank(aggregate(w, a, S), T, 1000)
    assert ids.shape == (B, V) and np.all(np.diff(scores, axis=1) <= 0)
    # nothing contributes: q = 0, cosines 0, no NaN
    zero = aggregate(np.zeros((1, C)), a[:1], S)
    assert np.all(zero == 0) and np.all(rank(zero, T, 3)[1] == 0)


def near_duplicate_vocabulary(rng, D=64, common=0.0, spread=0.03):
    """'red', 'crimson', 'red color' near-copies of one direction; 'circle' and 20 others distinct.

    ``common`` mixes a shared component into every phrase (CLIP's text embeddings have one).
    """
    directions = random_unit(rng, 22, D).astype(np.float64)
    red, circle = directions[0], directions[1]
    phrases, rows = [], []
    for name in ("red", "crimson", "red color"):
        phrases.append(name)
        rows.append(unit(red + spread * rng.standard_normal(D)))
    phrases.append("circle")
    rows.append(circle)
    for k in range(2, 22):
        phrases.append(f"other{k}")
        rows.append(directions[k])
    shared = random_unit(rng, D).astype(np.float64)
    T = unit(common * shared + np.sqrt(1 - common**2) * np.array(rows)).astype(np.float32)
    q = unit(0.62 * red + 0.38 * circle)[None].astype(np.float32)
    return T, phrases, q


@pytest.mark.parametrize("common", [0.0, 0.8])
def test_selection_removes_near_duplicates_that_ranking_returns(common):
    rng = np.random.default_rng(1)
    T, phrases, q = near_duplicate_vocabulary(rng, common=common)
    ids, _ = rank(q, T, 16)
    assert {phrases[i] for i in ids[0, :3]} == {"red", "crimson", "red color"}  # plain ranking: three reds
    selection = select_diverse(q, T, ids, top_k=3)
    chosen = [phrases[i] for i in selection.ids[0]]
    assert chosen[0] in ("red", "crimson", "red color") and chosen[1] == "circle", chosen
    assert len(chosen) == 3  # filled from the ranking after the phrases with alpha > 0
    assert np.all(selection.alpha >= 0)
    # the reported score of each phrase is its plain cosine with q
    np.testing.assert_allclose(selection.scores[0], (T[selection.ids[0]] @ q[0]), atol=1e-5)


def test_literal_objective_collapses_with_a_common_component():
    """Why centering is the default: with CLIP-like shared components the raw Gram matrix makes
    the l2 term punish every pair, and the second concept gets no weight."""
    rng = np.random.default_rng(1)
    T, phrases, q = near_duplicate_vocabulary(rng, common=0.8)
    ids, _ = rank(q, T, 16)
    literal = select_diverse(q, T, ids, top_k=2, center=False)
    assert (literal.alpha[0] > 0).sum() == 1
    centered = select_diverse(q, T, ids, top_k=2)
    assert {phrases[i] for i in centered.ids[0]} >= {"circle"}


def test_selection_from_scores_alone_and_fallback_order():
    rng = np.random.default_rng(2)
    T, _, q = near_duplicate_vocabulary(rng)
    ids, scores = rank(q, T, 10)
    from_q = select_diverse(q, T, ids, center=False)
    from_scores = select_diverse(None, T, ids, candidate_scores=scores, center=False)
    np.testing.assert_array_equal(from_q.ids, from_scores.ids)
    with pytest.raises(TextcamError, match="centering needs q"):
        select_diverse(None, T, ids, candidate_scores=scores)
    # l1 so large that every alpha is zero: plain ranking order, top_k still filled
    nothing = select_diverse(q, T, ids, l1=10.0, top_k=4)
    assert np.all(nothing.alpha == 0)
    np.testing.assert_array_equal(nothing.ids, ids[:, :4])


def small_problem(rng, batch=4, n=8, d=32, duplicates=False):
    E = random_unit(rng, batch, n, d).astype(np.float64)
    if duplicates:
        E[:, 1] = unit(E[:, 0] + 0.1 * rng.standard_normal((batch, d)))
    q = unit(rng.standard_normal((batch, d)))
    return np.einsum("bnd,bd->bn", E, q), E @ E.transpose(0, 2, 1)


def test_fista_matches_scipy_on_convex_problems():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    b, G = small_problem(rng)
    l1, l2 = 0.02, 0.05  # G's smallest eigenvalue (about 0.25) keeps (1+2 l2) G - 2 l2 I positive definite
    alpha = solve_nonnegative(b, G, l1, l2, steps=concepts.DEFAULT_STEPS)
    assert np.all(alpha >= 0)
    for i in range(len(b)):
        def f(x, i=i):
            value = objective(x[None], b[i : i + 1], G[i : i + 1], l1, l2)[0]
            grad = (1 + 2 * l2) * G[i] @ x - 2 * l2 * x - b[i] + l1
            return value, grad

        reference = optimize.minimize(f, np.zeros(b.shape[1]), jac=True, method="L-BFGS-B",
                                      bounds=[(0, None)] * b.shape[1], options={"ftol": 1e-15, "gtol": 1e-12})
        np.testing.assert_allclose(alpha[i], reference.x, atol=1e-3)
        assert f(alpha[i])[0] <= reference.fun + 1e-6


def test_fista_beats_random_feasible_points_on_nonconvex_problems():
    rng = np.random.default_rng(4)
    b, G = small_problem(rng, batch=6, duplicates=True)
    l1, l2 = 0.01, concepts.DEFAULT_L2
    alpha = solve_nonnegative(b, G, l1, l2, steps=concepts.DEFAULT_STEPS)
    assert np.all(alpha >= 0)
    found = objective(alpha, b, G, l1, l2)
    for _ in range(200):
        trial = rng.random(b.shape) * rng.random((len(b), 1)) * 0.6 * (rng.random(b.shape) < 0.5)
        assert np.all(found <= objective(trial, b, G, l1, l2) + 1e-12)
    # near-duplicates 0 and 1: at most one of them keeps a sizeable weight
    assert np.all(np.minimum(alpha[:, 0], alpha[:, 1]) <= 0.25 * np.maximum(alpha[:, 0], alpha[:, 1]) + 1e-9)


def test_channel_groups_sum_to_the_full_map():
    rng = np.random.default_rng(5)
    C, D, V, h, w = 48, 16, 12, 5, 6
    weights, A = rng.standard_normal(C), rng.random((C, h, w))
    activation = A.mean(axis=(1, 2))
    S, T = random_unit(rng, C, D), random_unit(rng, V, D)
    selected = np.array([3, 7, 1])
    full = np.tensordot(weights, A, axes=1)
    for max_channels in (5, 64):
        groups, rest = channel_groups(weights, activation, A, S, T, selected, max_channels,
                                      phrases=[f"p{i}" for i in range(V)], method="gradcam")
        total = sum(g.saliency.astype(np.float64) for g in groups) + rest
        np.testing.assert_allclose(total, full, rtol=1e-5, atol=1e-5)
        contribution = np.maximum(weights * activation, 0)
        used = np.concatenate([g.channels for g in groups])
        assert len(used) == len(set(used.tolist())) <= max_channels
        assert set(used.tolist()) <= set(np.flatnonzero(contribution > 0).tolist())
        shares = [g.share for g in groups]
        assert shares == sorted(shares, reverse=True)
        if max_channels == 64:
            assert sum(shares) >= concepts.DEFAULT_GROUP_COVERAGE - 1e-9
            # the most contributing channels, not arbitrary ones
            assert np.min(contribution[used]) >= np.max(np.delete(contribution, used))
        for group in groups:
            np.testing.assert_allclose(group.saliency, np.tensordot(weights[group.channels], A[group.channels], 1),
                                       rtol=1e-5, atol=1e-6)
            cosines = S[group.channels] @ T[selected].T
            assert np.all(selected[np.argmax(cosines, axis=1)] == group.phrase_id)
            assert group.phrase == f"p{group.phrase_id}"
            assert group.heatmap.shape == (h, w) and group.heatmap.min() >= 0 and group.heatmap.max() <= 1
    with pytest.raises(TextcamError, match="channel-weight CAM method"):
        channel_groups(weights, activation, A, S, T, selected, method="hirescam")


# ---------------------------------------------------------------------------------------------
# bundles


@pytest.fixture(scope="module")
def act_bundle(make_bundle):
    """resnet18 (random weights, 5 classes) at layer4, 64x64, with the activations output."""
    return make_bundle(with_activations=True)


@pytest.fixture(scope="module")
def semantic_bundle(make_bundle):
    """``act_bundle`` with a random store (fused ranking graph over 24 candidates)."""
    return make_bundle(with_activations=True, semantics=make_store())


def test_numpy_map_pipeline_reproduces_the_graph_cam(act_bundle):
    """Group heatmaps go through finish_map: it must map sum_j w_j A_j exactly as the graph maps cam."""
    session = ort.InferenceSession(str(act_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"image": random_batch(10), "target_class": np.array([-1, 0, 3])}),
                   strict=True))
    for row in range(3):
        saliency = np.tensordot(out["channel_weights"][row], out["activations"][row], axes=1)
        np.testing.assert_allclose(finish_map(saliency, (64, 64)), out["cam"][row], atol=1e-4)


@pytest.mark.parametrize("mode", ["contribution", "weights"])
def test_fused_graph_agrees_with_numpy_and_keeps_outputs(act_bundle, tmp_path, mode):
    store = make_store(seed=3)
    info = fuse_ranking(act_bundle / "model.onnx", tmp_path / "fused.onnx", store.channel_semantics,
                        store.text_embeddings, mode, 20)
    assert info["candidates"] == 20 and info["beta"] == mode
    assert info["sha256"] == sha256_file(tmp_path / "fused.onnx")
    plain = ort.InferenceSession(str(act_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    plain_names = [o.name for o in plain.get_outputs()]
    fused_names = [o.name for o in fused.get_outputs()]
    assert fused_names == [*plain_names, "concept_ids", "concept_scores"]
    for seed, count in ((11, 1), (12, 5)):
        feeds = {"image": random_batch(seed, count), "target_class": np.full(count, -1, dtype=np.int64)}
        before = dict(zip(plain_names, plain.run(None, feeds), strict=True))
        after = dict(zip(fused_names, fused.run(None, feeds), strict=True))
        for name in plain_names:
            np.testing.assert_allclose(after[name], before[name], rtol=1e-6, atol=1e-6)
        q = aggregate(before["channel_weights"], before["channel_activation"], store.channel_semantics, mode)
        ids, scores = rank(q, store.text_embeddings, 20)
        assert after["concept_ids"].dtype == np.int64 and after["concept_ids"].shape == (count, 20)
        np.testing.assert_allclose(after["concept_scores"], scores, atol=1e-4)
        # ids agree wherever the score is not tied (within 1e-5) with a neighbour
        gaps = np.diff(scores, axis=1)
        clear = np.ones_like(scores, dtype=bool)
        clear[:, 1:] &= np.abs(gaps) > 1e-5
        clear[:, :-1] &= np.abs(gaps) > 1e-5
        np.testing.assert_array_equal(after["concept_ids"][clear], ids[clear])
    with pytest.raises(TextcamError, match="already has concept_ids"):
        fuse_ranking(tmp_path / "fused.onnx", tmp_path / "again.onnx", store.channel_semantics,
                     store.text_embeddings, mode, 20)
    with pytest.raises(TextcamError, match="channels"):
        fuse_ranking(act_bundle / "model.onnx", tmp_path / "x.onnx", store.channel_semantics[:100],
                     store.text_embeddings, mode, 20)


def test_explainer_reports_concepts_fused_or_not(semantic_bundle):
    fused = Explainer(semantic_bundle)
    numpy_only = Explainer(semantic_bundle, use_fused=False)
    assert fused.fused and not numpy_only.fused
    batch = random_batch(20, 5)
    a, b = fused.explain_batch(batch), numpy_only.explain_batch(batch)
    phrases = fused.semantics.phrases
    for x, y in zip(a, b, strict=True):
        assert len(x.concepts) == 4  # top_k from the manifest's defaults
        assert [c.phrase for c in x.concepts] == [c.phrase for c in y.concepts]
        assert all(c.phrase in phrases for c in x.concepts)
        np.testing.assert_allclose([c.score for c in x.concepts], [c.score for c in y.concepts], atol=1e-4)
        q = aggregate(x.channel_weights[None], x.channel_activation[None], fused.semantics.channel_semantics)[0]
        expected = [float(fused.semantics.text_embeddings[phrases.index(c.phrase)] @ q) for c in x.concepts]
        np.testing.assert_allclose([c.score for c in x.concepts], expected, atol=1e-4)
        assert x.groups == []
        assert x.to_dict()["concepts"][0]["phrase"] == x.concepts[0].phrase
    # arguments override the manifest's defaults; a larger N than the fused graph ranks here
    wide = Explainer(semantic_bundle, concepts={"top_k": 2, "candidates": 40})
    assert not wide.fused and len(wide.explain_batch(batch[:1])[0].concepts) == 2
    with pytest.raises(TextcamError, match="beta"):
        Explainer(semantic_bundle, concepts={"beta": "both"})


def test_explainer_groups(semantic_bundle, tmp_path):
    explainer = Explainer(semantic_bundle)
    image = np.random.default_rng(5).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    result = explainer.explain(image, groups=True)
    assert result.groups
    assert {g.phrase for g in result.groups} <= {c.phrase for c in result.concepts}
    for group in result.groups:
        assert group.heatmap.shape == (50, 70) and group.heatmap.min() >= 0 and group.heatmap.max() <= 1
        assert group.overlay(image).size == (70, 50)
    record = result.to_dict()
    assert set(record["groups"][0]) == {"phrase", "channels", "share"}
    json.dumps(record)
    # a preprocessed float batch: group heatmaps stay at the graph's input resolution, like the heatmap
    [batch_result] = explainer.explain_batch(
        np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR), np.float32)[None]
        .transpose(0, 3, 1, 2) / 255.0, groups=True)
    assert batch_result.groups and batch_result.groups[0].heatmap.shape == (64, 64)


def test_groups_need_activations_and_a_channel_weight_method(make_bundle, small_bundle, semantic_bundle,
                                                              tmp_path):
    plain = make_bundle(semantics=make_store(), fused_candidates=None)  # exported without activations
    explainer = Explainer(plain)
    assert len(explainer.explain_batch(random_batch(1, 1))[0].concepts) == 4
    with pytest.raises(TextcamError, match="--with-activations"):
        explainer.explain_batch(random_batch(1, 1), groups=True)
    with pytest.raises(TextcamError, match="channel semantics"):
        Explainer(small_bundle).explain_batch(random_batch(1, 1), groups=True)
    hires = make_bundle(semantic_bundle, copy=tmp_path / "hires.textcam")
    with update_bundle(hires) as update:
        update.manifest = update.manifest.replace(method="hirescam")
    with pytest.raises(TextcamError, match="channel-weight CAM method"):
        Explainer(hires).explain_batch(random_batch(1, 1), groups=True)


def test_store_problems_are_reported(make_bundle, act_bundle, tmp_path):
    sha = model_sha256(act_bundle)
    cases = {
        "other model": (make_store(model_sha256="0" * 64), "computed for another model"),
        # format 2 refuses the mismatch when the manifest is written, format 1 when the store is read
        "channels": (make_store(channels=256, model_sha256=sha), r"256 channels, (this model's )?the layer (has )?512"),
    }
    for name, (store, message) in cases.items():
        bundle = make_bundle(act_bundle, copy=tmp_path / f"{name}.textcam")
        with pytest.raises(TextcamError, match=message):
            add_semantics(bundle, store, fused_candidates=None)
            Explainer(bundle)
    bundle = make_bundle(act_bundle, copy=tmp_path / "changed.textcam")
    add_semantics(bundle, make_store(model_sha256=sha))
    written = Bundle.open(bundle).info
    with open(bundle / written.fused_graph.graph.file, "r+b") as handle:  # same size, other content
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(TextcamError, match="checksum differs"):
        Explainer(bundle)
    assert Explainer(bundle, use_fused=False).explain_batch(random_batch(2, 1))[0].concepts
    (bundle / written.semantics.store.file).unlink()
    with pytest.raises(TextcamError, match="missing"):
        Explainer(bundle, use_fused=False)


def test_cli_groups_without_torch(semantic_bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(
            images / f"img{i}.png")
    out = tmp_path / "ov"
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['torchvision'] = None\n"
        "from textcam.cli import main\n"
        f"sys.argv = ['textcam', 'explain', {str(semantic_bundle)!r}, {str(images)!r}, '--groups', "
        f"'--out', {str(out)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == 4 for line in lines)  # file, label, score, phrases
    assert all(line.split("\t")[3].count(", ") == 2 for line in lines)  # the top three phrases
    assert len(list(out.glob("*.cam.png"))) == 2
    assert list(out.glob("img0.group1-*.png")) and list(out.glob("img1.group1-*.png"))
    run = subprocess.run([sys.executable, "-m", "textcam", "explain", str(semantic_bundle), str(images), "--groups"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "--out" in run.stderr and "Traceback" not in run.stderr
