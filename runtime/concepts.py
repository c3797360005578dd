"""From channel weights to words: aggregation, ranking, diverse selection, channel groups (numpy only).

docs/architecture.md section 4, steps 5 to 8 (sections 4.5-4.8), vectorized over the batch:

- :func:`aggregate`: q = normalize(beta @ S), beta = w ("weights") or ReLU(w * a) ("contribution");
- :func:`rank`: cosines q @ T^T and the top-N candidate phrases;
- :func:`select_diverse`: over the candidates E [N, D], a fixed number of FISTA steps on

      min_{alpha >= 0} 1/2 ||q - E^T alpha||^2 + l1 ||alpha||_1 + l2 alpha^T (G - I) alpha,  G = E E^T,

  then the phrases with the largest alpha (near-duplicates such as "red", "crimson", "red color"
  share one alpha instead of filling the list);
- :func:`channel_groups`: the top-contributing channels of one image assigned to the selected
  phrases, each group with its own map.

Only q's direction matters and S, T have unit rows, so the solver needs nothing but the candidate
cosines b = E q and the Gram matrix G: 1/2 ||q - E^T alpha||^2 = 1/2 - b^T alpha + 1/2 alpha^T G alpha.
(With ``center=False`` the fused graph's ``concept_scores`` are that b, and q is not needed.)

Two decisions beyond the formula (both switchable, both to be confirmed by the quality benchmark):

- ``l1`` is relative to the best candidate's cosine (the solver runs with l1 * max_k b_k). Solving
  for q rescaled so that its best match has cosine 1 is the same problem with l1 scaled by that
  cosine, so this only makes l1 independent of how close image-side directions get to text
  embeddings in absolute terms, which varies between CLIP models (the l2 term is scale-free).
- ``center``: the selection sees the candidates relative to the vocabulary's mean embedding. CLIP
  text embeddings share a large common component (unrelated phrases typically have cosines of
  about 0.5 to 0.8),
  so the raw G is large for every pair, the l2 term penalizes unrelated phrases nearly as much as
  near-duplicates, and alpha collapses onto one phrase. Ranking and reported scores stay the plain
  cosines with q.

Order of the phrases (``Explanation.concepts``, ``Selection.ids``): **selection order**. The
phrases with alpha > 0 come first, by alpha descending (``Concept.weight`` is each one's share of
the row's total alpha); the rest of top_k is filled by cosine descending (weight 0.0). Ties are
broken explicitly: alpha, then cosine, then phrase id. Why not sort the list by score: the first
phrase is what a reader (and the quality benchmark's hit@1) takes as *the* answer, and plain cosine
order puts a near-duplicate or a co-occurring phrase first ("green background" above "green
object"): hit@1 0.551 for plain ranking vs 1.000 for selection order (docs/quality.md). So
a phrase with a lower score may be listed above a higher one; its weight says why.

One ranking, whichever path ran it. The fused graph (:mod:`textcam.runtime.fused_ranking`) and
:func:`rank` give the same candidates: the Explainer re-scores the graph's ``concept_ids`` from q
here (:func:`cosines`, one computation for every path) and orders them by (cosine, id) like
:func:`rank`; :func:`select_diverse` solves over the candidates sorted by phrase id, so equal
candidate sets give bit-identical alpha. ``candidates >= V`` means all V phrases on both paths.
The graph's own ``concept_ids`` order is the plain cosine ranking (the candidates), not the
selection: a host that reads the graph alone and takes ``concept_ids[0]`` gets plain ranking.

No BLAS: every product here is ``np.einsum`` (numpy's own single-threaded loops), never ``@``
or LAPACK. The matrices are small, and OpenBLAS's worker threads, on a busy machine or next to
ONNX Runtime's spinning threads in the same process, turned a 1 ms step into 30-50 ms per image
(measured on 2 cores: ``beta @ S`` alone took 8 ms median instead of 0.05 ms).

Defaults (l1 = 0.3 relative, l2 = 0.2, 100 steps, N = 64): on synthetic vocabularies of 100
concept clusters of 1-5 near-duplicate phrases (within-cluster cosine 0.95-0.99, a common
component of 0 to 0.9), D = 512, and queries mixing 1-3 concepts, the top-n selection named
exactly the n mixed concepts as often as an oracle that deduplicates the ranking by true cluster
(plain top-n: 0.06-0.33 for 2-3 concepts) for l1 in 0.2-0.4 and l2 in 0.1-0.3; l2 >= 0.5 starts
merging distinct concepts (the problem becomes strongly non-convex), l1 <= 0.1 lets small
spurious weights in. 100 steps reach the 5000-step objective to ~1e-10 (50 steps: up to 10% off on
a few rows, same selections in this benchmark).
Without centering the same benchmark fell to 0.3-0.67 once the common component was 0.8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from textcam.errors import TextcamError
from textcam.runtime.explanation import Group
from textcam.runtime.heatmap import finish_map, map_to_original
from textcam.runtime.images import Geometry
from textcam.runtime.manifest import CHANNEL_WEIGHT_METHODS

BETA_MODES = ("contribution", "weights")

DEFAULT_BETA = "contribution"
DEFAULT_TOP_K = 5
DEFAULT_CANDIDATES = 64
DEFAULT_L1 = 0.3
"""Fraction of the best candidate's cosine; see the module docstring."""
DEFAULT_L2 = 0.2
DEFAULT_STEPS = 100
DEFAULT_GROUP_CHANNELS = 64
DEFAULT_GROUP_COVERAGE = 0.95
ALPHA_CAP = 10.0
"""Upper bound on each alpha. With more candidates than embedding dimensions (or near-duplicates after
centering) the l2 term makes the objective unbounded below along some direction and FISTA overflowed;
inside the box it stays a bounded problem. A unit q against unit candidates needs alpha near 1 at most,
so the cap never binds on a well-posed set (the default bundle's largest alpha is 0.6)."""
MAX_STEPS = 10_000
"""100x the default. 100 steps already reach the 5,000-step objective to ~1e-10 (module docstring),
so more buys nothing. The cost is linear in steps: 10,000 steps took 0.12 s for one image at N = 64
(one core; ~2 s for a batch of 16), while a manifest asking for 10**9 would never return."""
MAX_CANDIDATES = 4_096
"""The solver holds an [N, N] Gram matrix per image (4,096**2 float64 = 128 MiB) and each step costs N**2."""
MAX_TOP_K = 256
MAX_GROUP_CHANNELS = 65_536
MAX_L1 = 10.0
"""l1 is relative to the best cosine: from l1 = 1 on every alpha is 0 (plain ranking); 10 leaves room."""
MAX_L2 = 10.0
"""l2 >= 0.5 already merges distinct concepts (module docstring); larger values only mean a typo."""
_TINY = 1e-12


class Selection(NamedTuple):
    ids: np.ndarray
    """int64 [B, top_k]: phrase ids, the most important first."""
    scores: np.ndarray
    """float32 [B, top_k]: each phrase's cosine with q."""
    alpha: np.ndarray
    """float64 [B, N]: the solver's weights over the candidates (in the order they were passed)."""
    weights: np.ndarray
    """float64 [B, top_k]: each listed phrase's share of the row's total alpha; 0.0 for phrases listed
    after the selected ones to fill top_k (see the module docstring, "Order")."""


@dataclass(frozen=True)
class ConceptSettings:
    """How phrases are chosen; the bundle's ``manifest["semantics"]["defaults"]`` fills what is not given."""

    beta: str = DEFAULT_BETA
    top_k: int = DEFAULT_TOP_K
    candidates: int = DEFAULT_CANDIDATES
    l1: float = DEFAULT_L1
    l2: float = DEFAULT_L2
    steps: int = DEFAULT_STEPS
    group_channels: int = DEFAULT_GROUP_CHANNELS
    center: bool = True

    @classmethod
    def resolve(cls, defaults: dict | None, **overrides) -> ConceptSettings:
        """Built-in defaults, then the manifest's, then the caller's (None = not given)."""
        values = {name: getattr(cls, name) for name in cls.__dataclass_fields__}
        for source in (defaults or {}, overrides):
            values.update({k: v for k, v in source.items() if k in values and v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """One-line TextcamError naming the setting and its limit for any value out of range or of the wrong type."""
        if not isinstance(self.beta, str) or self.beta not in BETA_MODES:
            raise TextcamError(f"beta={self.beta!r}: choose one of {', '.join(BETA_MODES)}")
        limits = (("top_k", 1, MAX_TOP_K), ("candidates", 1, MAX_CANDIDATES), ("steps", 0, MAX_STEPS),
                  ("group_channels", 1, MAX_GROUP_CHANNELS))
        for name, low, high in limits:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
                    or not low <= value <= high:
                raise TextcamError(f"{name}={value!r}: expected an integer from {low} to {high:,}")
        if self.top_k > self.candidates:
            raise TextcamError(
                f"top_k={self.top_k}: expected at most candidates={self.candidates} (the phrases are chosen among them)"
            )
        if not isinstance(self.center, (bool, np.bool_)):
            raise TextcamError(f"center={self.center!r}: expected true or false")
        for name, high in (("l1", MAX_L1), ("l2", MAX_L2)):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(value) or not 0 <= value <= high:
                raise TextcamError(f"{name}={value!r}: expected a finite number from 0 to {high:g}")


def beta_weights(weights: np.ndarray, activation: np.ndarray, mode: str = DEFAULT_BETA) -> np.ndarray:
    """[B, C] channel importances: w ("weights") or ReLU(w * a) ("contribution")."""
    if mode == "weights":
        return np.asarray(weights, dtype=np.float32)
    if mode == "contribution":
        return np.maximum(np.asarray(weights, np.float32) * np.asarray(activation, np.float32), 0.0)
    raise TextcamError(f"beta {mode!r}: choose one of {', '.join(BETA_MODES)}")


def aggregate(
    weights: np.ndarray, activation: np.ndarray, S: np.ndarray, mode: str = DEFAULT_BETA
) -> np.ndarray:
    """q [B, D]: the images' evidence as unit directions in CLIP space, normalize(beta @ S).

    A row whose beta is all zero (nothing contributed) gives q = 0, hence cosines 0. NaN or Inf
    in the graph's outputs raise a TextcamError naming the image row (they would otherwise turn
    every cosine into NaN and the ranking into an arbitrary order).
    """
    weights, activation = np.atleast_2d(weights), np.atleast_2d(activation)
    _check_finite(weights, "channel weights (channel_weights)")
    if mode == "contribution":
        _check_finite(activation, "channel activations (channel_activation)")
    beta = np.atleast_2d(beta_weights(weights, activation, mode))
    q = np.einsum("bc,cd->bd", beta, np.asarray(S, dtype=np.float32))
    _check_finite(q, "an evidence direction beta @ S that overflowed float32 (channel weights too large)")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    return (q / np.maximum(norms, _TINY)).astype(np.float32, copy=False)


def _check_finite(values: np.ndarray, what: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(len(values), -1).all(axis=1))
        more = f" (and {rows.size - 1} more)" if rows.size > 1 else ""
        raise TextcamError(
            f"the graph produced non-finite {what} for image row {int(rows[0])}{more} of the batch: NaN or Inf, "
            "so no phrase can be ranked; check that image's input values and the exported model"
        )


def cosines(q: np.ndarray, T: np.ndarray) -> np.ndarray:
    """float32 [B, V]: every phrase's cosine with q, computed one way for every path (so equal inputs give
    bit-identical scores whichever path asks)."""
    return np.einsum("bd,vd->bv", np.atleast_2d(np.asarray(q, dtype=np.float32)), np.asarray(T, dtype=np.float32))


def rank(
    q: np.ndarray, T: np.ndarray, n: int, among: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The n phrases closest to each q: ids int64 [B, n] and cosines float32 [B, n], best first.

    Order: cosine descending, equal cosines by phrase id ascending (explicit, whatever the sort
    algorithm). ``n >= V`` means all V phrases. ``among`` [B, M] (e.g. the fused graph's
    ``concept_ids``) are the candidates to pick from, re-scored here from q; a row where a phrase
    outside them would make the top n (the graph's float rounding swapped a near-tie at its last
    place) is ranked over the whole vocabulary instead, so the result is always identical to
    ``rank(q, T, n)``.
    """
    full = cosines(q, T)
    vocabulary = np.broadcast_to(np.arange(full.shape[1], dtype=np.int64), full.shape)
    n = max(1, min(int(n), full.shape[1]))
    among = None if among is None else np.atleast_2d(np.asarray(among, dtype=np.int64))
    if among is None or among.shape[1] < n:
        return _top(full, vocabulary, n)
    ids, scores = _top(np.take_along_axis(full, among, axis=1), among, n)
    inside = np.zeros(full.shape, dtype=bool)
    np.put_along_axis(inside, among, True, axis=1)
    last_score, last_id = scores[:, -1:], ids[:, -1:]
    beaten = (~inside & ((full > last_score) | ((full == last_score) & (vocabulary < last_id)))).any(axis=1)
    if beaten.any():
        ids[beaten], scores[beaten] = _top(full[beaten], vocabulary[beaten], n)
    return ids, scores


def _top(scores: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = _score_order(scores, ids)[:, :n]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _score_order(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row, the positions sorted by score descending, then id ascending."""
    return np.lexsort((np.broadcast_to(ids, scores.shape), -np.asarray(scores, dtype=np.float64)), axis=-1)


def objective(alpha: np.ndarray, b: np.ndarray, G: np.ndarray, l1: float, l2: float) -> np.ndarray:
    """The selection objective per row, up to the constant 1/2 ||q||^2 (alpha [B,N], b [B,N], G [B,N,N])."""
    Ga = np.einsum("bij,bj->bi", G, alpha)
    quad = np.einsum("bi,bi->b", alpha, Ga)
    sq = np.einsum("bi,bi->b", alpha, alpha)
    return 0.5 * quad - np.einsum("bi,bi->b", b, alpha) + l1 * alpha.sum(axis=1) + l2 * (quad - sq)


def solve_nonnegative(b: np.ndarray, G: np.ndarray, l1, l2: float, steps: int) -> np.ndarray:
    """FISTA for min_{alpha>=0} -b.alpha + 1/2 alpha^T G alpha + l1 sum(alpha) + l2 alpha^T (G - I) alpha.

    ``b`` [B, N], ``G`` [B, N, N], ``l1`` a number or [B]; returns alpha [B, N] (float64) after
    exactly ``steps`` steps (so the cost is fixed). The smooth part's Hessian is
    H = (1 + 2 l2) G - 2 l2 I; the step is 1/L with L >= its spectral norm by Gershgorin's bound
    (max absolute row sum; about 1.35x the largest eigenvalue on CLIP-like candidate sets, and,
    unlike eigvalsh, free of LAPACK and its BLAS threads: see the module docstring).
    The l2 term makes the problem non-convex where candidates are near-duplicates (that is what
    drives one of them to zero); momentum is restarted whenever it points uphill (O'Donoghue and
    Candes' gradient test), which keeps the iteration monotone in practice.
    """
    b = np.asarray(b, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    batch, n = b.shape
    H = (1.0 + 2.0 * l2) * G
    H[:, np.arange(n), np.arange(n)] -= 2.0 * l2
    lipschitz = np.maximum(np.abs(H).sum(axis=2).max(axis=1), _TINY)[:, None]  # Gershgorin: >= |eigenvalues|
    # one step: x+ = max(y - (H y - b + l1) / L, 0) = max(M y + c, 0)
    M = H / -lipschitz[:, :, None]
    M[:, np.arange(n), np.arange(n)] += 1.0
    l1 = np.broadcast_to(np.asarray(l1, dtype=np.float64), (batch,))[:, None]
    c = (b - l1) / lipschitz
    momentum = _fista_momentum(int(steps))
    x = np.zeros((batch, n))
    y = x
    since_restart = np.full((batch, 1), -1, dtype=np.int64)  # the first step is a (re)start
    for _ in range(int(steps)):
        x_next = np.clip(np.einsum("bij,bj->bi", M, y) + c, 0.0, ALPHA_CAP)
        step = x_next - x
        uphill = np.einsum("bi,bi->b", y - x_next, step)[:, None] > 0
        since_restart = np.where(uphill, 0, since_restart + 1)
        y = x_next + momentum[since_restart] * step
        x = x_next
    return x


def _fista_momentum(steps: int) -> np.ndarray:
    """[k] = (t_k - 1) / t_{k+1}, t_0 = 1, t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2: k steps after a (re)start."""
    coefficients = np.zeros(steps + 1)
    t = 1.0
    for k in range(steps + 1):
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        coefficients[k] = (t - 1.0) / t_next
        t = t_next
    return coefficients


def select_diverse(
    q: np.ndarray | None,
    T: np.ndarray,
    candidate_ids: np.ndarray,
    l1: float = DEFAULT_L1,
    l2: float = DEFAULT_L2,
    steps: int = DEFAULT_STEPS,
    top_k: int = DEFAULT_TOP_K,
    candidate_scores: np.ndarray | None = None,
    center: bool | np.ndarray = True,
) -> Selection:
    """The top_k phrases by the diverse-selection weights alpha (docs/architecture.md section 4.7).

    ``candidate_ids`` [B, N] come from :func:`rank` (or the fused graph's ``concept_ids``), in any
    order: the result depends only on the set (the solver always sees the candidates sorted by
    phrase id, so the same set gives bit-identical alpha however it arrived). With ``q``, every
    score is computed here from q (:func:`cosines`) and ``candidate_scores`` is ignored; without q
    (only with ``center=False``) ``candidate_scores`` are the cosines.
    ``l1`` is relative to each row's best cosine (see the module docstring).

    ``center``: solve over the candidates' directions relative to the vocabulary mean (True: the
    mean of T's rows; or pass that [D] vector; False: raw embeddings, the literal formula). Without
    it, CLIP's common text component makes the l2 term punish every pair and alpha collapses onto
    one phrase (module docstring). Centering needs q.

    Order (module docstring, "Order"): phrases with alpha > 0 first, by alpha descending; then, to
    fill top_k, the others by cosine descending; ties by cosine, then phrase id. ``weights`` gives
    each listed phrase's alpha share (0.0 for fill-ins). The reported scores are the plain cosines.
    """
    T = np.asarray(T, dtype=np.float32)
    given = np.atleast_2d(np.asarray(candidate_ids, dtype=np.int64))
    if given.size and (given.min() < 0 or given.max() >= len(T)):
        raise TextcamError(f"select_diverse: candidate ids outside the vocabulary (0..{len(T) - 1})")
    # canonical candidate order: by phrase id, so the solver is fed identically whatever the source
    canonical = np.argsort(given, axis=1, kind="stable")
    ids = np.take_along_axis(given, canonical, axis=1)
    E = T[ids]  # [B, N, D]
    if q is not None:
        q = np.atleast_2d(q).astype(np.float32)
        scores = np.take_along_axis(cosines(q, T), ids, axis=1)
    elif candidate_scores is None:
        raise TextcamError("select_diverse: pass q or candidate_scores")
    else:
        scores = np.take_along_axis(np.atleast_2d(np.asarray(candidate_scores, dtype=np.float32)), canonical, axis=1)
    if not np.isfinite(scores).all():
        raise TextcamError("select_diverse: non-finite candidate scores (NaN or Inf); no phrase can be ranked")
    if isinstance(center, (bool, np.bool_)) or center is None:
        mean = T.mean(axis=0) if center else None
    else:
        mean = np.asarray(center, dtype=np.float32)
    if mean is not None:
        if q is None:
            raise TextcamError("select_diverse: centering needs q (pass center=False to work from scores alone)")
        E = E - mean
        E /= np.maximum(np.linalg.norm(E, axis=2, keepdims=True), _TINY)
        b = np.einsum("bnd,bd->bn", E, q)
    else:
        b = scores
    b = b.astype(np.float64)
    G = np.einsum("bnd,bmd->bnm", E, E).astype(np.float64)
    best = np.maximum(b.max(axis=1), _TINY) if b.size else np.zeros(len(b))
    alpha = solve_nonnegative(b, G, l1 * best, l2, steps)
    n = ids.shape[1]
    chosen = alpha > 0
    # explicit keys, last is primary: chosen first, by alpha; then by cosine; then by phrase id
    order = np.lexsort((ids, -scores.astype(np.float64), -np.where(chosen, alpha, 0.0), ~chosen), axis=-1)
    order = order[:, : max(1, min(int(top_k), n))]
    total = alpha.sum(axis=1, keepdims=True)
    shares = np.where(chosen, alpha / np.maximum(total, _TINY), 0.0)
    in_given_order = np.empty_like(alpha)
    np.put_along_axis(in_given_order, canonical, alpha, axis=1)
    return Selection(
        np.take_along_axis(ids, order, axis=1),
        np.take_along_axis(scores, order, axis=1).astype(np.float32),
        in_given_order,
        np.take_along_axis(shares, order, axis=1),
    )



def select_for_outputs(outputs, S: np.ndarray, T: np.ndarray, settings: ConceptSettings,
                       vocabulary_mean: np.ndarray | None = None) -> Selection:
    """The phrases for a batch of graph outputs: aggregate, rank, select in one call.

    ``outputs`` holds ``channel_weights`` and ``channel_activation`` and, from a fused graph,
    ``concept_ids``: those candidates are re-ranked here by (cosine, id) exactly as :func:`rank`
    ranks, so the selection is the same whichever graph ran. ``vocabulary_mean``: T's row mean,
    precomputed by callers that select often (computed here otherwise). See docs/architecture.md 4.5-4.7.
    """
    q = aggregate(outputs["channel_weights"], outputs["channel_activation"], S, settings.beta)
    ids, _scores = rank(q, T, settings.candidates, among=outputs.get("concept_ids"))
    center = (vocabulary_mean if vocabulary_mean is not None else True) if settings.center else False
    return select_diverse(q, T, ids, settings.l1, settings.l2, settings.steps, settings.top_k, center=center)

def check_group_method(method: str) -> None:
    if method not in CHANNEL_WEIGHT_METHODS:
        raise TextcamError(
            f"channel groups need a channel-weight CAM method ({', '.join(CHANNEL_WEIGHT_METHODS)}), whose map is "
            f"sum_j w_j A_j; this bundle uses {method!r}, whose map does not split by channel: re-export with "
            "--method gradcam (or another channel-weight method)"
        )


def channel_groups(
    weights_row: np.ndarray,
    activation_row: np.ndarray,
    activations: np.ndarray,
    S: np.ndarray,
    T: np.ndarray,
    selected_ids,
    max_channels: int = DEFAULT_GROUP_CHANNELS,
    *,
    phrases=None,
    method: str | None = None,
    coverage: float = DEFAULT_GROUP_COVERAGE,
    input_hw: tuple[int, int] | None = None,
    geometry: Geometry | None = None,
) -> tuple[list[Group], np.ndarray]:
    """One image's map split by phrase (docs/architecture.md section 4.8): (groups, rest).

    The channels with the largest positive contributions ReLU(w_j a_j), in descending order, until
    ``coverage`` of the total positive contribution or ``max_channels``, each go to the selected
    phrase closest to its direction (argmax_k cos(s_j, t_k)). A group's ``saliency`` is
    sum_{j in g} w_j A_j (pre-ReLU, [h, w]); ``rest`` is the same sum over every other channel, so
    sum(groups) + rest == sum_j w_j A_j. ``heatmap`` is ReLU of the group's map, normalized and
    resized like the main heatmap (to ``input_hw``, then onto the original image by ``geometry``).
    Groups come out by share of the contribution, largest first; phrases that get no channel have
    no group.
    """
    if method is not None:
        check_group_method(method)
    w = np.asarray(weights_row, dtype=np.float64).reshape(-1)
    a = np.asarray(activation_row, dtype=np.float64).reshape(-1)
    A = np.asarray(activations, dtype=np.float64)
    if A.ndim != 3 or A.shape[0] != w.size or a.size != w.size:
        raise TextcamError(f"channel groups: activations {A.shape} do not match {w.size} channel weights")
    selected = np.asarray(selected_ids, dtype=np.int64).reshape(-1)
    contribution = np.maximum(w * a, 0.0)
    total = contribution.sum()
    order = np.argsort(-contribution, kind="stable")
    order = order[contribution[order] > 0]
    if order.size and total > 0:
        needed = int(np.searchsorted(np.cumsum(contribution[order]), coverage * total - 1e-12 * total)) + 1
        order = order[: min(needed, int(max_channels))]
    owner = np.full(w.size, -1)
    if order.size and selected.size:
        cosines = np.einsum("cd,kd->ck", np.asarray(S, np.float32)[order], np.asarray(T, np.float32)[selected])
        owner[order] = np.argmax(cosines, axis=1)
    groups = []
    for k in range(selected.size):
        members = np.flatnonzero(owner == k)
        if not members.size:
            continue
        saliency = np.einsum("c,chw->hw", w[members], A[members])
        heat = finish_map(saliency, input_hw)
        if input_hw is not None:
            heat = map_to_original(heat, geometry)
        phrase_id = int(selected[k])
        groups.append(
            Group(
                phrase=str(phrases[phrase_id]) if phrases is not None else str(phrase_id),
                phrase_id=phrase_id,
                channels=members[np.argsort(-contribution[members], kind="stable")],
                share=float(contribution[members].sum() / total) if total > 0 else 0.0,
                saliency=saliency.astype(np.float32),
                heatmap=heat,
            )
        )
    groups.sort(key=lambda g: -g.share)
    rest_members = np.flatnonzero(owner < 0)
    rest = np.einsum("c,chw->hw", w[rest_members], A[rest_members])
    return groups, rest.astype(np.float32)
