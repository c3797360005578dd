"""The streaming top/bottom-M selector against brute force and against the full-matrix selection."""

from __future__ import annotations

import numpy as np
import pytest

from textcam.semantics_store.extremes import ExtremeSelector
from textcam.semantics_store.probe_set import extreme_images


def brute_force(scores: np.ndarray, ids: np.ndarray, listed: int, m: int, seed: int):
    """Independent reference: per channel, sort the given images by (score, rank in the seeded
    permutation of the listed images) in plain Python; the top is the reversed order."""
    rank = {int(image): position for position, image in enumerate(np.random.default_rng(seed).permutation(listed))}
    top, bottom = [], []
    for channel in range(scores.shape[1]):
        ordered = sorted(range(len(ids)), key=lambda row: (float(scores[row, channel]), rank[int(ids[row])]))
        bottom.append([int(ids[row]) for row in ordered[:m]])
        top.append([int(ids[row]) for row in ordered[::-1][:m]])
    return np.array(top), np.array(bottom)


def stream(scores: np.ndarray, ids: np.ndarray, listed: int, m: int, batch: int, seed: int) -> ExtremeSelector:
    selector = ExtremeSelector(scores.shape[1], m, listed, seed)
    for start in range(0, len(ids), batch):
        selector.add(scores[start : start + batch], ids[start : start + batch])
    return selector


@pytest.mark.parametrize("images", [2, 9, 64, 301])
@pytest.mark.parametrize("batch", [1, 7, 32, 1000])
def test_streaming_equals_brute_force_and_the_full_matrix_with_many_ties(images, batch):
    rng = np.random.default_rng(images * 1000 + batch)
    # integer values from a small range: most channels have long runs of equal scores
    scores = rng.integers(-3, 4, (images, 6)).astype(np.float32)
    scores[:, 5] = 0.0  # one flat channel: the choice is the tie-break alone
    ids = np.arange(images)
    for m in sorted({1, max(1, images // 2 - 1), images // 2}):
        for seed in (0, 3):
            top, bottom = stream(scores, ids, images, m, batch, seed).result()
            want_top, want_bottom = brute_force(scores, ids, images, m, seed)
            np.testing.assert_array_equal(top, want_top)
            np.testing.assert_array_equal(bottom, want_bottom)
            # today's full-matrix selection (the builder's results before streaming) agrees exactly
            old_top, old_bottom = extreme_images(scores, m, seed)
            np.testing.assert_array_equal(top, old_top)
            np.testing.assert_array_equal(bottom, old_bottom)


def test_signed_zeros_tie_and_extreme_values_order():
    scores = np.array([[0.0], [-0.0], [np.inf], [-np.inf], [-1e-38], [1e-45], [-0.0], [3.5], [-7.25], [0.0]],
                      dtype=np.float32)
    ids = np.arange(len(scores))
    for m in (1, 3, 5):
        top, bottom = stream(scores, ids, len(ids), m, 3, 0).result()
        want_top, want_bottom = brute_force(scores, ids, len(ids), m, 0)
        np.testing.assert_array_equal(top, want_top)
        np.testing.assert_array_equal(bottom, want_bottom)
        np.testing.assert_array_equal(top, extreme_images(scores, m)[0])


def test_images_missing_from_the_scan_keep_their_listed_ranks():
    """Unreadable images leave gaps in the ids; the others are ranked by the listed permutation."""
    rng = np.random.default_rng(5)
    listed = 200
    ids = np.sort(rng.choice(listed, 190, replace=False))
    scores = rng.integers(0, 3, (len(ids), 4)).astype(np.float32)
    top, bottom = stream(scores, ids, listed, 40, 16, 0).result()
    want_top, want_bottom = brute_force(scores, ids, listed, 40, 0)
    np.testing.assert_array_equal(top, want_top)
    np.testing.assert_array_equal(bottom, want_bottom)


def test_a_smaller_m_is_the_prefix_and_memory_stays_c_by_m():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, (500, 3)).astype(np.float32)
    selector = stream(scores, np.arange(500), 500, 20, 50, 0)
    assert selector._top.shape == (3, 20) and selector._bottom.shape == (3, 20)  # never more than M per side
    top, bottom = selector.result(7)
    want_top, want_bottom = brute_force(scores, np.arange(500), 500, 7, 0)
    np.testing.assert_array_equal(top, want_top)
    np.testing.assert_array_equal(bottom, want_bottom)
    with pytest.raises(ValueError):
        selector.result(21)
