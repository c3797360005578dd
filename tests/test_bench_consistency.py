"""``textcam bench`` cannot print ratios that contradict each other (textcam.runtime.timing.contradiction).

An explanation contains its graph and the graph contains plain inference on the same engine, so a
row where one measures faster than what it contains, beyond the noise of its rounds, is refused.
The timings here come from a fake clock that each contender advances by a chosen cost, so no test
depends on (or asserts) the machine's wall clock; the contenders themselves still run.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from textcam.cli import main
from textcam.runtime import timing
from textcam.runtime.timing import CONTRADICTION_ADVICE, MIN_CHECKED_ROUNDS, contradiction, summarize

CONTAINS = (("explain", "graph"), ("graph", "plain"), ("explain", "plain"))


def stats(median: float, spread: float = 0.0, rounds: int = 10) -> dict:
    """Summary stats of ``rounds`` samples around ``median`` whose interquartile range is about ``spread``."""
    return summarize([median + spread * (i / (rounds - 1) - 0.5) * 2 for i in range(rounds)])


class FakeClock:
    """Stands in for the ``time`` module timing.py reads: only the contenders move it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.now


@pytest.fixture
def fake_costs(monkeypatch):
    """``fake_costs({"plain": ms, ...})``: from then on each contender of interleaved_medians takes its cost
    on the fake clock (with a 1% spread over the rounds), whatever it really takes."""
    clock = FakeClock()
    real = timing.interleaved_medians

    def use(costs: dict[str, float]) -> None:
        def interleaved(contenders, rounds, **options):
            calls = {name: [0] for name in contenders}

            def timed(name, call):
                def run():
                    call()
                    calls[name][0] += 1
                    clock.now += costs[name] * (1 + 0.01 * (calls[name][0] % 3 - 1)) / 1e3

                return run

            return real({name: timed(name, call) for name, call in contenders.items()}, rounds, **options)

        monkeypatch.setattr(timing, "time", clock)
        monkeypatch.setattr(timing, "interleaved_medians", interleaved)

    return use


def bench(*args: str):
    return CliRunner().invoke(main, ["bench", "default", "--threads", "1", *args])


# --- the rule ---------------------------------------------------------------------------------------------------


def test_an_explanation_faster_than_its_graph_beyond_the_noise_is_a_contradiction():
    reason = contradiction({"plain": stats(48.8, 1.0), "graph": stats(70.0, 2.0), "explain": stats(52.0, 2.0)},
                           CONTAINS)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("explain (52.00 ms) measured faster than graph (70.00 ms), which it contains")
    assert reason.endswith(CONTRADICTION_ADVICE)


def test_the_graph_faster_than_plain_inference_is_a_contradiction_too():
    reason = contradiction({"plain": stats(90.0, 3.0), "graph": stats(70.0, 2.0), "explain": stats(72.0, 2.0)},
                           CONTAINS)
    assert reason is not None and reason.startswith("graph (70.00 ms) measured faster than plain (90.00 ms)")


def test_consistent_timings_and_gaps_within_the_noise_are_not():
    assert contradiction({"plain": stats(48.8, 1), "graph": stats(49.5, 1), "explain": stats(51.6, 1)},
                         CONTAINS) is None
    # explain 3 ms under graph, but the rounds spread over 8 ms: noise, not a contradiction
    assert contradiction({"plain": stats(48.0, 8), "graph": stats(53.0, 8), "explain": stats(50.0, 8)},
                         CONTAINS) is None
    # under 2% of the graph's median is never called a contradiction, however tight the rounds
    assert contradiction({"graph": stats(100.0), "explain": stats(98.5)}, CONTAINS) is None
    assert contradiction({"graph": stats(100.0), "explain": stats(97.5)}, CONTAINS) is not None


def test_too_few_rounds_or_a_missing_contender_are_not_judged():
    few = MIN_CHECKED_ROUNDS - 1
    assert contradiction({"graph": stats(70.0, 0, few), "explain": stats(50.0, 0, few)}, CONTAINS) is None
    assert contradiction({"explain": stats(50.0)}, CONTAINS) is None


def test_summarize_gives_quartiles_for_one_and_many_samples():
    one = summarize([5.0])
    assert one["median_ms"] == one["q1_ms"] == one["q3_ms"] == 5.0 and one["rounds"] == 1
    many = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (many["q1_ms"], many["median_ms"], many["q3_ms"], many["min_ms"]) == (2.0, 3.0, 4.0, 1.0)


# --- textcam bench ----------------------------------------------------------------------------------------------


def test_bench_refuses_a_row_whose_explanation_is_faster_than_its_graph(fake_costs):
    fake_costs({"plain": 10.0, "graph": 20.0, "explain": 12.0})
    result = bench("--batch-sizes", "1", "--rounds", "5")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    refused = [line for line in lines if "refused:" in line]
    assert len(refused) == 1 and refused[0].split()[:2] == ["1", "refused:"]
    assert "explain" in refused[0] and "faster than graph" in refused[0] and CONTRADICTION_ADVICE in refused[0]
    assert not any(line.split()[:1] == ["1"] and "refused" not in line for line in lines)  # no numbers row
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert errors == ["error: 1 of 1 row(s) refused: their timings contradict each other"]


def test_bench_json_marks_the_refused_row_and_gives_no_ratio(fake_costs):
    fake_costs({"plain": 20.0, "graph": 10.0, "explain": 25.0})  # the graph faster than plain
    result = bench("--batch-sizes", "1,2", "--rounds", "4", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["checked"] is True and report["allow_spinning"] is False and report["threads"] == 1
    for row in report["results"]:
        assert row["refused"].startswith("graph (10.") and "faster than plain" in row["refused"]
        assert row["graph_over_plain"] is None and row["explain_over_plain"] is None


def test_bench_prints_a_consistent_row_and_says_how_contenders_run(fake_costs):
    fake_costs({"plain": 10.0, "graph": 11.0, "explain": 12.0})
    result = bench("--batch-sizes", "1", "--rounds", "5")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("threads per contender: 1 (ONNX Runtime intra-op), spinning off; all in one process")
               for line in lines)
    (row,) = [line.split() for line in lines if line.split()[:1] == ["1"]]
    assert [float(v) for v in row[1:6]] == pytest.approx([10.0, 11.0, 12.0, 1.1, 1.2], abs=0.2)
    assert row[6].endswith("%") and float(row[6][:-1]) < 5  # the fake clock spreads the rounds by 1%
    assert "refused" not in result.output


def test_bench_with_too_few_rounds_prints_the_row_and_says_it_was_not_checked(fake_costs):
    fake_costs({"plain": 10.0, "graph": 20.0, "explain": 12.0})
    result = bench("--batch-sizes", "1", "--rounds", "2", "--json")
    assert result.exit_code == 0, result.output
    assert "too few to tell noise from a contradiction" in result.stderr
    report = json.loads(result.stdout)
    assert report["checked"] is False and report["results"][0]["refused"] is None
    assert report["results"][0]["explain_over_plain"] == pytest.approx(1.2, abs=0.05)


def test_bench_gives_every_contender_the_same_threads_and_no_spinning(monkeypatch):
    """The Explainer (graph, explain) and the plain baseline get the same thread count, spinning off."""
    import textcam.runtime
    from textcam.runtime import plain_baseline

    seen: dict = {}
    real_explainer, real_plain = textcam.runtime.Explainer, plain_baseline.plain_inference

    def explainer(*args, **kwargs):
        seen["explainer"] = kwargs["backend_options"]
        return real_explainer(*args, **kwargs)

    def plain(explainer, threads=None, allow_spinning=False):
        seen["plain"] = {"intra_op_threads": threads, "allow_spinning": allow_spinning}
        return real_plain(explainer, threads, allow_spinning)

    monkeypatch.setattr(textcam.runtime, "Explainer", explainer)
    monkeypatch.setattr(plain_baseline, "plain_inference", plain)
    result = bench("--batch-sizes", "1", "--rounds", "1", "--threads", "2")
    assert result.exit_code == 0, result.output
    assert seen["explainer"] == seen["plain"] == {"intra_op_threads": 2, "allow_spinning": False}


# --- the benchmarks use the same rule ---------------------------------------------------------------------------


def load_latency_script(monkeypatch):
    """benchmarks/latency.py as a module (a script, not part of the package; numpy is all it imports at
    the top), registered for this test only (its dataclass looks its module up)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "latency.py"
    spec = importlib.util.spec_from_file_location("latency_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_latency_benchmark_refuses_the_same_rows_and_keeps_consistent_ones(monkeypatch):
    latency = load_latency_script(monkeypatch)
    good = latency.result_row(1, 10, {"plain": stats(48.8, 1), "graph": stats(49.5, 1), "explain": stats(51.6, 1),
                                      "pytorch-grad-cam": stats(300.0, 5)})
    bad = latency.result_row(8, 10, {"plain": stats(85.0, 3), "graph": stats(70.0, 2), "explain": stats(52.0, 2),
                                     "pytorch-grad-cam": stats(300.0, 5)})
    assert good["refused"] is None and good["ratios"]["explain_over_plain"] == pytest.approx(51.6 / 48.8, abs=1e-3)
    assert bad["refused"].startswith("explain (52.00 ms) measured faster than graph") and bad["ratios"] == {}
    config = {"name": "resnet50@layer4", "layer": "layer4", "bundle_onnx_bytes": 1e8, "plain_onnx_bytes": 1e8,
              "layer_output_shape": [2048, 7, 7], "reshape_transform": None, "results": [good, bad]}
    report = {
        "machine": {"cpu_model": "cpu", "cpu_count": 2, "cpus_usable": 2, "platform": "linux",
                    "versions": dict.fromkeys(("textcam", "torch", "torchvision", "onnxruntime", "grad-cam",
                                               "torchcam"), "1")},
        "settings": {"threads": 1, "loadavg_before": [0, 0, 0], "loadavg_after": [0, 0, 0], "warmup": 2,
                     "num_classes": 1000, "input_size": 224, "quick": False},
        "configs": [config],
    }
    report["targets"] = latency.evaluate_targets(report["configs"])
    assert [t["batch"] for t in report["targets"]] == [1, 1]  # nothing is judged on the refused row
    text = latency.markdown(report)
    assert "| 1 | 10 | 48.80 | 49.50 | 51.60 | 300.00 | 1.057 |" in text
    (refused,) = [line for line in text.splitlines() if line.startswith("| 8 |")]
    assert refused.startswith("| 8 | 10 | refused: explain (52.00 ms)") and "85.00" not in refused
    assert latency.refused_rows(report) == ["resnet50@layer4 batch 8"]
