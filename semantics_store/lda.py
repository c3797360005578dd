"""Per-channel LDA directions in CLIP space (docs/architecture.md section 4.3), vectorized over channels.

For channel j with positive embeddings P_j (its M top-activating probe images) and negatives
N_j (its M lowest), the direction is

    s_j = normalize( (S_W + shrinkage) ^-1 (mu+ - mu-) )

with S_W estimated exactly as scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr",
shrinkage="auto")`` does: per class, features are standardized, a Ledoit-Wolf shrinkage
coefficient delta is estimated, the shrunk covariance is scaled back, and the two classes are
averaged with equal priors. That covariance is a diagonal plus a rank-2M term, so it is inverted
with the Woodbury identity: a [2M, 2M] solve per channel instead of a [D, D] one.

Modes: ``shrinkage`` (the above), ``pooled`` (one Ledoit-Wolf covariance of all scanned
embeddings whitens every channel: one solve for all channels, the fast option), and two baselines
for the quality benchmark: ``meandiff`` (mu+ - mu-, no whitening) and ``topmean`` (mu+ alone, the
mean embedding of the top-activating images, as CLIP-Dissect-style labelling does).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from textcam.errors import TextcamError

LDA_MODES = ("shrinkage", "pooled", "meandiff", "topmean")
_TINY = 1e-12


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per batch row: (centered x, scale, mean) over axis 1, zero scales treated as 1 (StandardScaler)."""
    mean = x.mean(axis=1, keepdims=True)
    centered = x - mean
    scale = np.sqrt((centered**2).mean(axis=1))
    scale = np.where(scale < 10 * np.finfo(x.dtype).eps, 1.0, scale)
    return centered, scale, mean[:, 0]


def ledoit_wolf_batch(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ledoit-Wolf shrinkage (delta) and target scale (mu) for centered samples z [batch, n, p].

    The same estimate as ``sklearn.covariance.ledoit_wolf_shrinkage``, computed through the
    smaller of the [n, n] and [p, p] Gram matrices (per channel, p = the CLIP dimension exceeds
    n = M samples; for the pooled covariance it is the other way round).
    """
    _, n, p = z.shape
    z2 = z * z
    trace_per_feature = z2.sum(axis=1) / n
    mu = trace_per_feature.sum(axis=1) / p
    beta_sum = (z2.sum(axis=2) ** 2).sum(axis=1)  # sum of the entries of z2^T z2
    # ||z^T z||_F^2 == ||z z^T||_F^2: use whichever Gram matrix is smaller
    gram = z @ z.transpose(0, 2, 1) if n <= p else z.transpose(0, 2, 1) @ z
    delta_sum = (gram**2).sum(axis=(1, 2)) / n**2
    beta = (beta_sum / n - delta_sum) / (p * n)
    delta = (delta_sum - 2.0 * mu * trace_per_feature.sum(axis=1) + p * mu**2) / p
    beta = np.minimum(beta, delta)
    shrinkage = np.where(beta == 0, 0.0, beta / np.where(delta == 0, 1.0, delta))
    return shrinkage, mu


def _class_terms(x: np.ndarray, prior: float):
    """Diagonal and low-rank factor of prior * (shrunk class covariance), plus the class mean."""
    centered, scale, mean = _standardize(x)
    n = x.shape[1]
    shrinkage, mu = ledoit_wolf_batch(centered / scale[:, None, :])
    diagonal = prior * (shrinkage * mu)[:, None] * scale**2
    factor = np.sqrt(prior * (1.0 - shrinkage) / n)[:, None, None] * centered.transpose(0, 2, 1)
    return diagonal, factor, mean


def shrinkage_directions(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """[batch, M, D] positives and negatives -> [batch, D] unit LDA directions (sklearn-equivalent)."""
    diag_p, factor_p, mean_p = _class_terms(positives, 0.5)
    diag_n, factor_n, mean_n = _class_terms(negatives, 0.5)
    diagonal = diag_p + diag_n
    floor = _TINY * np.maximum(diagonal.mean(axis=1, keepdims=True), _TINY)
    diagonal = np.maximum(diagonal, floor)
    factor = np.concatenate([factor_p, factor_n], axis=2)  # [batch, D, 2M]
    difference = mean_p - mean_n
    if factor.shape[1] <= factor.shape[2]:  # few dimensions: the direct [D, D] solve is cheaper
        covariance = factor @ factor.transpose(0, 2, 1)
        covariance[:, np.arange(factor.shape[1]), np.arange(factor.shape[1])] += diagonal
        direction = np.linalg.solve(covariance, difference[:, :, None])[:, :, 0]
        return _unit_toward(direction, difference)
    # Woodbury: (diag + U U^T)^-1 v = v/d - (U/d) (I + U^T (U/d))^-1 U^T (v/d)
    scaled_factor = factor / diagonal[:, :, None]
    scaled_v = difference / diagonal
    inner = np.eye(factor.shape[2]) + factor.transpose(0, 2, 1) @ scaled_factor
    correction = np.linalg.solve(inner, (factor.transpose(0, 2, 1) @ scaled_v[:, :, None]))[:, :, 0]
    direction = scaled_v - (scaled_factor @ correction[:, :, None])[:, :, 0]
    return _unit_toward(direction, difference)


def pooled_covariance(population: np.ndarray) -> np.ndarray:
    """One Ledoit-Wolf-shrunk covariance [D, D] of ``population`` [U, D], sklearn-style standardized."""
    centered, scale, _ = _standardize(population[None])
    shrinkage, mu = ledoit_wolf_batch(centered / scale[:, None, :])
    z = centered[0] / scale[0]
    covariance = (1 - shrinkage[0]) * (z.T @ z) / z.shape[0] + shrinkage[0] * mu[0] * np.eye(z.shape[1])
    return scale[0][:, None] * covariance * scale[0][None, :] + _TINY * np.eye(z.shape[1])


def _unit_toward(direction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    sign = np.where((direction * reference).sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    norm = np.linalg.norm(direction, axis=1, keepdims=True)
    return sign * direction / np.maximum(norm, _TINY)


def channel_directions(
    embeddings: np.ndarray,
    positive_ids: np.ndarray,
    negative_ids: np.ndarray,
    mode: str = "shrinkage",
    chunk: int = 128,
    progress: Callable[[int], None] | None = None,
    covariance: np.ndarray | None = None,
) -> np.ndarray:
    """Directions for all channels: ``embeddings`` [U, D]; ``positive_ids``/``negative_ids`` [C, M] rows of it.

    ``covariance`` (pooled mode): the pooled covariance of every channel's images, given when this call
    handles only some channels (a Ray task's chunk), so that each chunk whitens with the same matrix."""
    if mode not in LDA_MODES:
        raise TextcamError(f"lda={mode!r}: choose one of {', '.join(LDA_MODES)}")
    embeddings = np.asarray(embeddings, dtype=np.float64)
    channels = positive_ids.shape[0]
    result = np.empty((channels, embeddings.shape[1]), dtype=np.float64)
    if mode == "pooled" and covariance is None:
        used = np.unique(np.concatenate([positive_ids.ravel(), negative_ids.ravel()]))
        covariance = pooled_covariance(embeddings[used])
    for start in range(0, channels, chunk):
        stop = min(start + chunk, channels)
        positives = embeddings[positive_ids[start:stop]]
        negatives = embeddings[negative_ids[start:stop]]
        if mode == "shrinkage":
            result[start:stop] = shrinkage_directions(positives, negatives)
        elif mode == "topmean":
            top = positives.mean(axis=1)
            result[start:stop] = top / np.maximum(np.linalg.norm(top, axis=1, keepdims=True), _TINY)
        else:
            difference = positives.mean(axis=1) - negatives.mean(axis=1)
            direction = np.linalg.solve(covariance, difference.T).T if mode == "pooled" else difference
            result[start:stop] = _unit_toward(direction, difference)
        if progress:
            progress(stop - start)
    return result.astype(np.float32)
