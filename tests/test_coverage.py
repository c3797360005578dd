"""The coverage matrix (benchmarks/coverage.py) on its fast subset: ResNet-18 at the default layer
and the stage before it, at 64x64 (two slices at once, sharing the results), plus a model that
does not exist.

The cells run as the full matrix runs them (a child process per cell, calibrated BatchNorm, parity
against pytorch-grad-cam and float64 eager autograd), so the fast subset checks the same numbers
the README's coverage claims rest on, and that the matrix resumes instead of redoing cells.
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

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "coverage.py"
SETTINGS = ["--layers", "default,stage-1", "--methods", "gradcam", "--input-size", "64", "--threads", "1"]


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], capture_output=True, text=True,
                          timeout=1200)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """The two cells as two slices run at once into one results folder (as on parallel machines)."""
    out = tmp_path_factory.mktemp("coverage")
    runs = [
        subprocess.Popen([sys.executable, str(SCRIPT), "--models", "torchvision:resnet18", *SETTINGS, "--slice",
                          f"{i}/2", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in (1, 2)
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=1200)
        assert run.returncode == 0, stderr[-2000:]
    return out


def test_fast_cells_export_verify_and_match_the_references(matrix):
    cells = json.loads((matrix / "coverage.json").read_text())["cells"]
    assert set(cells) == {"torchvision:resnet18|default|gradcam", "torchvision:resnet18|stage-1|gradcam"}
    default, inner = cells["torchvision:resnet18|default|gradcam"], cells["torchvision:resnet18|stage-1|gradcam"]
    assert (default["layer_name"], inner["layer_name"]) == ("layer4", "layer3")
    assert inner["grid"] == [2 * g for g in default["grid"]]
    for cell in (default, inner):
        assert cell["status"] == "ok" and cell["verification"]["passed"] is True
        assert cell["heatmap_max_abs"] <= 1e-4 and cell["logits_rel"] <= 1e-4
        assert cell["heatmap_vs_fp64_onnx"] <= 1e-4
        assert cell["tensorrt_static"]["compatible"] is True
        assert 0.99 < cell["onnx_vs_weights"] < 1.1  # the joint graph stores the weights once
        assert cell["export_s"] > 0 and cell["peak_rss_mb"] > cell["model_rss_mb"] > 0
        assert cell["parity_peak_rss_mb"] > 0  # the references ran in a process of their own
        assert set(cell["timings"]) >= {"trace_s", "onnx_export_s", "verify_s"}
        assert cell["cause"] == ""
    table = (matrix / "coverage.md").read_text()
    assert "torchvision at the default layer: **1/1 (100%)**" in table and "all cells: **2/2 (100%)**" in table


def test_a_rerun_resumes_and_a_failing_cell_is_recorded_with_its_reason(matrix):
    before = json.loads((matrix / "coverage.json").read_text())["cells"]
    done = _run(matrix, "--models", "torchvision:resnet18", "torchvision:no_such_net", *SETTINGS)
    assert done.returncode == 0, done.stderr[-2000:]
    cells = json.loads((matrix / "coverage.json").read_text())["cells"]
    for key, cell in before.items():
        assert cells[key] == cell  # not redone
    failed = {k: v for k, v in cells.items() if k.startswith("torchvision:no_such_net|")}
    assert len(failed) == 2 and all(c["status"] == "export failed" for c in failed.values())
    assert all("no_such_net" in c["error"] for c in failed.values())
    assert "all cells: **2/4 (50%)**" in (matrix / "coverage.md").read_text()
