"""Interleaved latency measurement: every contender runs once per round, in a shuffled order,
so slow drifts of a noisy machine hit all of them alike; ratios come from the same rounds."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Time each callable ``rounds`` times, interleaved; return per-contender stats in ms.

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
    return {
        name: {
            "median_ms": statistics.median(values),
            "min_ms": min(values),
            "p90_ms": sorted(values)[min(len(values) - 1, int(0.9 * len(values)))],
            "rounds": len(values),
            "cpu_median_ms": statistics.median(cpu[name]),
        }
        for name, values in samples.items()
    }
