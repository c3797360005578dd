"""LDA directions against scikit-learn, and recovery of a planted direction."""

import time

import numpy as np
import pytest

from textcam.semantics_store.lda import channel_directions, ledoit_wolf_batch, shrinkage_directions

sklearn = pytest.importorskip("sklearn")
from sklearn.covariance import ledoit_wolf_shrinkage  # noqa: E402
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # noqa: E402


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("n, p", [(40, 90), (120, 30)])  # both Gram-matrix paths
def test_ledoit_wolf_matches_sklearn(n, p):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, n, p)) * rng.uniform(0.5, 2.0, p)
    z -= z.mean(axis=1, keepdims=True)
    ours, _ = ledoit_wolf_batch(z)
    for row, value in zip(z, ours, strict=True):
        assert value == pytest.approx(ledoit_wolf_shrinkage(row), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("dim, m", [(512, 50), (64, 20), (32, 50)])
def test_directions_agree_with_sklearn_lda(dim, m):
    rng = np.random.default_rng(dim + m)
    channels = 12
    # clip-like: unit vectors, a per-channel shift between the classes, correlated noise
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    positives = _unit(rng.standard_normal((channels, m, dim)) @ mixing + rng.standard_normal((channels, 1, dim)) * 0.3)
    negatives = _unit(rng.standard_normal((channels, m, dim)) @ mixing)
    ours = shrinkage_directions(positives, negatives)
    for c in range(channels):
        x = np.concatenate([negatives[c], positives[c]])
        y = np.r_[np.zeros(m), np.ones(m)]
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y)
        reference = _unit(lda.coef_[0])
        assert float(ours[c] @ reference) > 0.999, c


def test_planted_direction_is_recovered():
    """Positives and negatives differ along one known direction, hidden in anisotropic noise."""
    rng = np.random.default_rng(7)
    dim, m, channels = 128, 100, 6
    scales = np.geomspace(2.0, 0.05, dim)  # strong nuisance variance in some axes
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    planted = _unit(rng.standard_normal((channels, dim)) * (scales < 0.3))  # a low-variance direction
    noise = lambda: (rng.standard_normal((channels, m, dim)) * scales) @ basis.T  # noqa: E731
    planted_rot = _unit(planted @ basis.T)
    positives = noise() + 0.5 * planted_rot[:, None, :]
    negatives = noise() - 0.5 * planted_rot[:, None, :]
    for mode in ("shrinkage", "pooled"):
        embeddings = np.concatenate([positives.reshape(-1, dim), negatives.reshape(-1, dim)])
        pos_ids = np.arange(channels * m).reshape(channels, m)
        neg_ids = pos_ids + channels * m
        directions = channel_directions(embeddings, pos_ids, neg_ids, mode=mode)
        cosines = (directions * planted_rot).sum(axis=1)
        assert cosines.min() > 0.85, (mode, cosines)  # sampling error of 2M=200 points in 128-D
    # the plain mean difference is pulled off by the nuisance axes: LDA must do better
    meandiff = channel_directions(embeddings, pos_ids, neg_ids, mode="meandiff")
    assert (meandiff * planted_rot).sum(axis=1).mean() < cosines.mean() - 0.1


def test_large_lda_is_vectorized_enough():
    """C=256 channels, D=512, M=50 finishes (timing recorded in benchmarks, not asserted)."""
    rng = np.random.default_rng(1)
    embeddings = _unit(rng.standard_normal((1000, 512)))
    ids = rng.integers(0, 1000, (256, 100))
    start = time.perf_counter()
    directions = channel_directions(embeddings, ids[:, :50], ids[:, 50:], mode="shrinkage")
    assert directions.shape == (256, 512) and np.isfinite(directions).all()
    assert np.allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-5)
    del start
