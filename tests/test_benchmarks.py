"""The benchmark scripts run end to end in their --quick mode and write well-formed results.

Only structure and sanity are checked (files, keys, positive numbers): timings of a smoke run on
a shared machine mean nothing, so no wall-clock assertion is made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("torchcam")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
LATENCY_CONTENDERS = {"plain", "graph", "explain", "torchcam", "pytorch-grad-cam"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Start both scripts' --quick runs at once (they are mostly single-threaded; this halves the
    wall clock on a 2-core machine); each test waits for its own."""
    runs = {}
    for name in ("latency.py", "export_cost.py"):
        out = tmp_path_factory.mktemp(name.removesuffix(".py"))
        process = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / name), "--quick", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        runs[name] = (process, out)
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


def finished(quick_runs, name: str) -> Path:
    process, out = quick_runs[name]
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"{name} --quick did not finish in 300 s")
    assert process.returncode == 0, stderr[-3000:]
    return out


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_latency_quick(quick_runs):
    tmp_path = finished(quick_runs, "latency.py")
    report = json.loads((tmp_path / "latency.json").read_text())

    assert {"machine", "settings", "configs", "targets"} <= report.keys()
    machine = report["machine"]
    assert positive(machine["cpu_count"])
    assert {"torch", "onnxruntime", "grad-cam", "torchcam", "textcam"} <= machine["versions"].keys()
    assert report["settings"]["quick"] is True
    assert report["settings"]["threads"] == 2

    names = [c["name"] for c in report["configs"]]
    assert "resnet18@layer4" in names
    for config in report["configs"]:
        assert positive(config["bundle_onnx_bytes"]) and positive(config["plain_onnx_bytes"])
        assert [r["batch"] for r in config["results"]] == report["settings"]["batches"]
        for row in config["results"]:
            assert set(row["median_ms"]) == LATENCY_CONTENDERS
            assert all(positive(v) for v in row["median_ms"].values())
            assert all(positive(v) for v in row["min_ms"].values())
            assert {"explain_over_plain", "graph_over_plain", "explain_over_torchcam",
                    "torchcam_over_explain", "pytorch_grad_cam_over_explain"} <= row["ratios"].keys()
            assert all(positive(v) for v in row["ratios"].values())
        first = config["results"][0]["agreement"]
        assert first["same_predictions_as_plain"] is True
        assert first["plain_logits_max_abs_diff"] < 1e-3
        assert first["cam_max_abs_diff_vs_pytorch_grad_cam"] < 1e-2
    vit = [c for c in report["configs"] if c["model"].startswith("vit")]
    assert vit and vit[0]["reshape_transform"]

    targets = report["targets"]
    kinds = {t["target"].split(" ")[0] for t in targets}
    assert {"explain/plain", "explain", "pytorch-grad-cam/explain"} <= kinds
    for target in targets:
        assert {"config", "batch", "value", "threshold", "pass"} <= target.keys()
        assert isinstance(target["pass"], bool) and positive(target["value"])

    text = (tmp_path / "latency.md").read_text()
    assert "| batch |" in text and "explain/plain" in text and "## Targets" in text
    assert ("PASS" in text) or ("MISS" in text)
    png = (tmp_path / "latency.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_export_cost_quick(quick_runs):
    tmp_path = finished(quick_runs, "export_cost.py")
    report = json.loads((tmp_path / "export_cost.json").read_text())

    assert {"machine", "settings", "configs"} <= report.keys()
    assert report["settings"]["quick"] is True
    (config,) = report["configs"]
    assert config["name"] == "resnet18@layer4"
    textcam, plain = config["textcam"], config["plain"]
    assert all(positive(textcam[key]) for key in ("wall_s", "onnx_bytes", "peak_rss_mb"))
    assert set(textcam["phases_s"]) >= {"probe_s", "trace_s", "onnx_export_s", "verify_s"}
    assert all(v >= 0 for v in textcam["phases_s"].values())
    assert textcam["verification"]["passed"] is True
    assert positive(plain["wall_s"]) and positive(plain["onnx_bytes"])
    assert positive(config["ratios"]["time_over_plain"]) and positive(config["ratios"]["size_over_plain"])
    assert positive(config["ratios"]["peak_growth_over_plain"]) and positive(textcam["weights_mb"])

    text = (tmp_path / "export_cost.md").read_text()
    assert "resnet18@layer4" in text and "export s" in text
