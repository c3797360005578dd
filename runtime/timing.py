"""Interleaved latency measurement: every contender runs once per round, in a shuffled order,
so slow drifts of a noisy machine hit all of them alike; ratios come from the same rounds.

It also holds the rule that keeps a benchmark from printing ratios that contradict each other
(:func:`contradiction`): a contender that does all of another's work and more cannot be faster
than it, so when it measures faster by more than the measured noise, something else (another
load, a thread pool starving the next contender) was timed, and the row is refused.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping

MIN_CHECKED_ROUNDS = 3
"""With fewer rounds there is no spread to tell noise from a contradiction: rows are not judged."""
NOISE_FLOOR = 0.02
"""The least noise assumed, as a share of the contained contender's median: a clock and a cache
differ by this much even when the rounds agree closely."""
CONTRADICTION_ADVICE = ("check for other load on the machine and that every contender runs with the same "
                        "threads and spinning off (a spinning thread pool starves the next contender), then rerun")
"""What a refused row tells the reader to check."""


def summarize(values: list[float]) -> dict[str, float]:
    """Median, min, p90 and quartiles (inclusive method) of one contender's samples in ms."""
    if not values:
        raise ValueError("no samples to summarize")
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {
        "median_ms": statistics.median(ordered),
        "min_ms": ordered[0],
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "q1_ms": q1,
        "q3_ms": q3,
        "rounds": len(ordered),
    }


def interleaved_medians(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Time each callable ``rounds`` times, interleaved; return per-contender stats in ms
    (:func:`summarize`'s keys).

    ``cpu_median_ms`` is the median process CPU time of a call (every thread of this process: with
    one intra-op thread, spinning off and nothing else running, the call's own CPU)."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    for function in contenders.values():
        for _ in range(warmup):
            function()
    order = list(contenders)
    shuffle = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in order}
    cpu: dict[str, list[float]] = {name: [] for name in order}
    for index in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            contenders[name]()
            cpu[name].append((time.process_time() - cpu_start) * 1e3)
            samples[name].append((time.perf_counter() - start) * 1e3)
        if progress:
            progress(index + 1)
    return {name: {**summarize(values), "cpu_median_ms": statistics.median(cpu[name])}
            for name, values in samples.items()}


def contradiction(stats: Mapping[str, Mapping[str, float]], contains: Iterable[tuple[str, str]]) -> str | None:
    """Why these timings contradict each other (one line), or None when they are consistent.

    ``contains`` lists ``(outer, inner)`` pairs where ``outer`` does all of ``inner``'s work and more
    (an explanation contains its graph; the joint graph contains the logits-only graph on the same
    engine). A pair contradicts when ``outer``'s median is below ``inner``'s by more than the noise:
    the wider of the two interquartile ranges, and at least :data:`NOISE_FLOOR` of ``inner``'s median.
    Pairs with a contender missing, or with fewer than :data:`MIN_CHECKED_ROUNDS` rounds, are not judged.
    The first contradicting pair is reported.
    """
    for outer, inner in contains:
        a, b = stats.get(outer), stats.get(inner)
        if a is None or b is None or min(a["rounds"], b["rounds"]) < MIN_CHECKED_ROUNDS:
            continue
        noise = max(a["q3_ms"] - a["q1_ms"], b["q3_ms"] - b["q1_ms"], NOISE_FLOOR * b["median_ms"])
        gap = b["median_ms"] - a["median_ms"]
        if gap > noise:
            return (f"{outer} ({a['median_ms']:.2f} ms) measured faster than {inner} ({b['median_ms']:.2f} ms), "
                    f"which it contains, by {gap:.2f} ms, more than the noise measured ({noise:.2f} ms): "
                    f"{CONTRADICTION_ADVICE}")
    return None
