"""Streaming choice of each channel's M top- and M bottom-scoring probe images, in O(C*M) memory.

The rule (docs/architecture.md section 4.2). Every listed probe image i has a tie rank r(i): its
position in one seeded random permutation of the *listed* images (:func:`tie_order`). Images are
ordered by the key (score, r(i)). A channel's positives P_j are its M largest keys, largest first;
its negatives N_j its M smallest, smallest first. Ties in score therefore go by a random but
reproducible order, not by file order.

This is the order :func:`textcam.semantics_store.probe_set.extreme_images` gives on the full [N, C]
matrix (a stable argsort of the rows taken in permutation order), and the selections are identical
when every listed image is read. The permutation is drawn over the listed images because it must be
known before the scan; when some images cannot be read, the remaining ones keep their listed ranks,
whereas the full-matrix function permutes only the images it kept, so ties may then go to other
(equally scoring) images.

Each batch's [b, C] scores are merged into the kept [C, M] blocks with one vectorised
``np.argpartition`` per side; the final order is sorted once at the end.
"""

from __future__ import annotations

import numpy as np

from textcam.errors import TextcamError

_RANK_BITS = 32
_RANK_MASK = np.uint64((1 << _RANK_BITS) - 1)
MAX_IMAGES = (1 << _RANK_BITS) - 1


def tie_order(images: int, seed: int = 0) -> np.ndarray:
    """The seeded permutation of the listed images: ``order[r]`` is the image with tie rank ``r``."""
    if images > MAX_IMAGES:
        raise TextcamError(f"--probe: {images} images listed; at most {MAX_IMAGES} are supported")
    return np.random.default_rng(seed).permutation(images)


def _sort_keys(scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """One uint64 per (image, channel) that orders exactly as (score, rank).

    float32 bits are mapped to uint32 so that unsigned order is numeric order (negative numbers
    have all bits flipped, positive ones the sign bit set); the rank fills the low 32 bits. One
    integer key lets ``argpartition`` pick the M extremes without a lexsort.
    """
    # -0.0 + 0.0 is +0.0: the two zeros compare equal as floats and must tie here too
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    ordered = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)
    return (ordered << np.uint64(_RANK_BITS)) | ranks.astype(np.uint64)[:, None]


def _keep(block: np.ndarray, m: int, largest: bool) -> np.ndarray:
    width = block.shape[1]
    if width <= m:
        return block
    if largest:
        picked = np.argpartition(block, width - m, axis=1)[:, width - m :]
    else:
        picked = np.argpartition(block, m - 1, axis=1)[:, :m]
    return np.take_along_axis(block, picked, axis=1)


class ExtremeSelector:
    """Fed batch by batch with [b, C] scores and the images' listing indices; keeps per channel the
    ``m`` largest and ``m`` smallest (score, tie rank) keys and nothing else.

    ``images`` is the number of listed images (the ids are ``0 .. images - 1``).
    """

    def __init__(self, channels: int, m: int, images: int, seed: int = 0):
        if m < 1:
            raise TextcamError(f"m={m}: expected a positive number of images per side")
        self.channels = channels
        self.m = m
        self.seed = seed
        self._order = tie_order(images, seed)
        self._ranks = np.empty(images, dtype=np.int64)
        self._ranks[self._order] = np.arange(images)
        self._top = np.empty((channels, 0), dtype=np.uint64)
        self._bottom = np.empty((channels, 0), dtype=np.uint64)
        self.seen = 0

    def add(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Merge one batch: ``scores`` [b, C] (finite), ``ids`` [b] listing indices, each given once."""
        scores = np.asarray(scores, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if scores.ndim != 2 or scores.shape != (len(ids), self.channels):
            raise ValueError(f"scores {scores.shape} for {len(ids)} ids and {self.channels} channels")
        if not len(ids):
            return
        keys = _sort_keys(scores, self._ranks[ids]).T  # [C, b]
        self._top = _keep(np.concatenate([self._top, keys], axis=1), self.m, largest=True)
        self._bottom = _keep(np.concatenate([self._bottom, keys], axis=1), self.m, largest=False)
        self.seen += len(ids)

    def empty_like(self) -> ExtremeSelector:
        """A new, empty selector over the same listing and tie ranks (the permutation is shared, not redrawn:
        a Ray actor makes one per unit of a 10-million-image listing)."""
        fresh = object.__new__(ExtremeSelector)
        fresh.channels, fresh.m, fresh.seed = self.channels, self.m, self.seed
        fresh._order, fresh._ranks = self._order, self._ranks
        fresh._top = np.empty((self.channels, 0), dtype=np.uint64)
        fresh._bottom = np.empty((self.channels, 0), dtype=np.uint64)
        fresh.seen = 0
        return fresh

    def keys(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The kept state, (top keys [C, k], bottom keys [C, k], images seen), for :meth:`merge` elsewhere."""
        return self._top, self._bottom, self.seen

    def merge(self, top: np.ndarray, bottom: np.ndarray, seen: int) -> None:
        """Fold in another selector's :meth:`keys` over other images of the same listing and seed.

        The keys carry each image's tie rank, so the union's extremes are exactly those one selector
        fed every batch would keep: the order in which parts arrive does not matter."""
        top, bottom = np.asarray(top, dtype=np.uint64), np.asarray(bottom, dtype=np.uint64)
        if top.shape[0] != self.channels or bottom.shape[0] != self.channels:
            raise ValueError(f"keys for {top.shape[0]} channels merged into a selector of {self.channels}")
        self._top = _keep(np.concatenate([self._top, top], axis=1), self.m, largest=True)
        self._bottom = _keep(np.concatenate([self._bottom, bottom], axis=1), self.m, largest=False)
        self.seen += int(seen)

    def result(self, m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(positives, negatives): [C, m] listing indices, positives by descending key, negatives by
        ascending key. ``m`` may be smaller than the selector's (the prefix of the top M is the top m)."""
        m = self.m if m is None else m
        if m > min(self.m, self.seen):
            raise ValueError(f"m={m}: the selector kept {min(self.m, self.seen)} per side")
        top = np.sort(self._top, axis=1)[:, ::-1]
        bottom = np.sort(self._bottom, axis=1)
        return self._ids(top[:, :m]), self._ids(bottom[:, :m])

    def _ids(self, keys: np.ndarray) -> np.ndarray:
        return self._order[(keys & _RANK_MASK).astype(np.int64)]
