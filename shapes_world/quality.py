"""Scores for explanations in the shapes world, where the deciding attribute is known.

Used by ``benchmarks/quality.py`` (the full table) and by the regression test. numpy only: model
calls come in as functions, so the same scoring runs on any backend.

- :func:`hit_rate`: is the deciding attribute's phrase among the top-k phrases?
- :func:`deletion_insertion`: the class probability as the most salient pixels are removed
  (deletion: lower area is better) or revealed on a flat canvas (insertion: higher is better).
- :func:`equal_weight_random_channels`: the control for text ablation, random positive-weight
  channels whose summed weight matches the group's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from textcam.shapes_world.captions import attribute_of, phrase
from textcam.shapes_world.generator import Scene


def deciding_phrase(scene: Scene, family: str) -> str:
    """The vocabulary phrase of ``family``'s value in ``scene`` (e.g. "circle", "navy background")."""
    return phrase(family, attribute_of(scene, family))


def hit_rate(top_phrases: Sequence[Sequence[str]], truths: Sequence[str], k: int) -> float:
    """Fraction of rows whose first ``k`` phrases include the row's truth (nan for no rows)."""
    if not truths:
        return float("nan")
    return float(np.mean([truth in list(row)[:k] for row, truth in zip(top_phrases, truths, strict=True)]))


def deletion_insertion(
    images: np.ndarray,
    maps: np.ndarray,
    classes: np.ndarray,
    probability: Callable[[np.ndarray], np.ndarray],
    steps: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image deletion and insertion AUCs (trapezoid over ``steps`` + 1 equal pixel fractions).

    ``images`` uint8 [N, H, W, 3]; ``maps`` [N, H, W] (higher = more important; ties broken by a
    fixed random order so flat maps do not delete in raster order); ``probability(batch uint8
    [B, H, W, 3]) -> [B, K]``. Removed pixels take the image's mean colour, the canvas insertion
    starts from.
    """
    n, h, w, _ = images.shape
    pixels = h * w
    tie_break = np.random.default_rng(0).random(pixels) * 1e-9
    order = np.argsort(-(maps.reshape(n, pixels) + tie_break), axis=1, kind="stable")
    canvas = np.broadcast_to(images.reshape(n, pixels, 3).mean(axis=1, keepdims=True), (n, pixels, 3))
    flat = images.reshape(n, pixels, 3).astype(np.float32)
    counts = np.round(np.linspace(0, pixels, steps + 1)).astype(int)
    deletion, insertion = np.empty((n, steps + 1)), np.empty((n, steps + 1))
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(pixels)[None].repeat(n, axis=0), axis=1)
    for i, count in enumerate(counts):
        salient = (rank < count)[:, :, None]
        deleted = np.where(salient, canvas, flat)
        inserted = np.where(salient, flat, canvas)
        for out, batch in ((deletion, deleted), (insertion, inserted)):
            probs = probability(np.clip(batch + 0.5, 0, 255).astype(np.uint8).reshape(n, h, w, 3))
            out[:, i] = probs[np.arange(n), classes]
    return _trapezoid(deletion), _trapezoid(insertion)


def _trapezoid(curves: np.ndarray) -> np.ndarray:
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * (curves.shape[1] - 1))


def equal_weight_random_channels(
    weights: np.ndarray, group: np.ndarray, rng: np.random.Generator, draws: int
) -> list[np.ndarray]:
    """``draws`` random sets of positive-weight channels outside ``group`` whose summed w_j first
    reaches the group's summed |w_j|.

    Only positive weights: with signed ones the random sets' effects cancel, their mean logit drop
    is near zero and the ratio explodes (seen: 7.6e12); the question is whether the group's
    channels matter more than other channels that also push the class up.
    """
    w = np.asarray(weights, dtype=np.float64)
    target = np.abs(w[group]).sum()
    others = np.setdiff1d(np.flatnonzero(w > 0), group)
    result = []
    for _ in range(draws):
        shuffled = rng.permutation(others)
        needed = int(np.searchsorted(np.cumsum(w[shuffled]), target)) + 1
        result.append(shuffled[: min(needed, shuffled.size)])
    return result
