"""benchmarks/native.py runs end to end in its --quick mode and writes well-formed results.

Only structure and sanity are checked (files, keys, positive numbers, the hosts agreeing): timings
of a smoke run on a shared machine mean nothing, so no wall-clock assertion is made. Skips when
the native core is not installed, unless ``TEXTCAM_REQUIRE_NATIVE=1`` (``scripts/test.sh``), where
a missing core fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textcam.runtime.native import native_module

if native_module(force=True) is None:
    if os.environ.get("TEXTCAM_REQUIRE_NATIVE") == "1":
        raise RuntimeError("textcam_native is not installed but TEXTCAM_REQUIRE_NATIVE=1: pip install ./native")
    pytest.skip("textcam_native is not installed (pip install ./native)", allow_module_level=True)

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "native.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_native_benchmark_quick(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "native.json").read_text())

    assert {"machine", "settings", "bundles", "targets"} <= report.keys()
    assert report["settings"]["quick"] is True
    assert report["settings"]["ort_allow_spinning"] is False
    assert {"onnxruntime", "textcam_native"} <= report["machine"]["versions"].keys()
    host = report["machine"]["cpp_host"]
    assert [b["name"] for b in report["bundles"]] == ["default", "resnet18"]

    for config in report["bundles"]:
        assert config["semantics"] and config["fused"] is True
        assert [r["batch"] for r in config["end_to_end"]] == report["settings"]["batches"]
        for row in config["end_to_end"]:
            assert set(row["per_image"]) == {"native", "python", "graph"}
            assert all(positive(v) for side in row["per_image"].values() for v in side.values())
            assert positive(row["ratios"]["python_over_native_wall"])
            assert positive(row["ratios"]["python_over_native_cpu"])
        assert config["agreement"]["same_classes"] and config["agreement"]["same_phrases"]

        steps = config["steps"]
        assert positive(steps["graph_ms"])
        for side in ("native_ms", "python_ms"):
            assert set(steps[side]) == {"decode", "preprocess", "select", "map_back"}
            assert all(positive(v) for v in steps[side].values())
        assert positive(steps["native_non_graph_share"]) and steps["select"]["same_ids"] is True

        paths = {(r["path"], r["threads"]) for r in config["threads"]["rows"]}
        expected = {"native", "python"} | ({"cpp_host"} if host else set())
        assert paths == {(p, n) for p in expected for n in report["settings"]["thread_counts"]}
        # the host's rows are differences of two short runs: in a smoke run they may come out negative
        assert all(positive(r["images_per_s"]) for r in config["threads"]["rows"] if r["path"] != "cpp_host")

        processes = config["processes"]
        assert set(processes["rows"]) == {"python-numpy", "python-native"} | ({"cpp_host"} if host else set())
        for row in processes["rows"].values():
            # the launcher keeps this (large) process's peak out of the children's
            assert 10 < row["peak_rss_mb"] < 4000
        assert all(a["same_classes"] and a["same_phrases"] for a in processes["agreement"].values())

    for target in report["targets"]:
        assert {"bundle", "value", "threshold", "pass"} <= target.keys()
        assert isinstance(target["pass"], bool)

    text = (out / "native.md").read_text()
    assert "onnxruntime" in text and "## default" in text and "## resnet18" in text
    assert "non-graph total" in text and "## Targets" in text
    png = (out / "native.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
