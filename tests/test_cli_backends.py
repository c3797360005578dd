"""The command line's GPU options (textcam.cli: --backend, --precision, build-engine's profile, info's
engine list): one-line errors without a GPU, the default backend unchanged; and
``@pytest.mark.gpu`` (deselected by default): ``textcam bench`` on a TensorRT engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textcam.cli import main
from textcam.runtime.backends.availability import unavailable_reason

TENSORRT_MISSING = unavailable_reason("tensorrt")
needs_tensorrt = pytest.mark.skipif(
    TENSORRT_MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: {TENSORRT_MISSING}"
)


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str):
    assert result.exit_code == 1, result.output
    # bench warns on a loaded machine (ratios mislead then); that line is not the error
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.skipif(TENSORRT_MISSING is None, reason="TensorRT is usable here; the error path cannot be seen")
def test_cli_backend_tensorrt_without_gpu(tiny_bundle, image_file):
    assert_one_line_error(invoke("explain", tiny_bundle, image_file, "--backend", "tensorrt"),
                          "backend 'tensorrt': not available here", "available here: onnxruntime")
    assert_one_line_error(invoke("bench", tiny_bundle, "--backend", "tensorrt", "--rounds", "1"),
                          "available here: onnxruntime")
    assert_one_line_error(invoke("build-engine", tiny_bundle), "tensorrt package is not installed")


def test_cli_bad_precision_and_profile(tiny_bundle, image_file):
    usage = invoke("build-engine", tiny_bundle, "--precision", "fp8")
    assert usage.exit_code == 2 and "'fp8' is not one of 'fp32', 'fp16', 'bf16'" in usage.output
    assert_one_line_error(invoke("build-engine", tiny_bundle, "--min-batch", "8", "--max-batch", "4"),
                          "expected min <= opt <= max")
    assert_one_line_error(invoke("build-engine", tiny_bundle, "--opt-batch", "0"), "--opt-batch 0")
    assert_one_line_error(invoke("explain", tiny_bundle, image_file, "--precision", "fp16"),
                          "the onnxruntime (CPU) backend runs the fp32 graph")
    usage = invoke("explain", tiny_bundle, image_file, "--backend", "trt")
    assert usage.exit_code == 2 and "Invalid value for '--backend'" in usage.output and "Traceback" not in usage.output


def test_cli_explain_and_bench_default_backend_still_work(tiny_bundle, image_file):
    result = invoke("explain", tiny_bundle, image_file, "--backend", "onnxruntime", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{image_file}\t")
    result = invoke("bench", tiny_bundle, "--rounds", "1", "--batch-sizes", "1,2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["backend"] == "onnxruntime" and [r["batch"] for r in report["results"]] == [1, 2]
    assert all(r["plain_ms"] > 0 and r["explain_over_plain"] > 0 for r in report["results"])


def test_info_lists_engines(tiny_bundle_copy, add_fake_engine):
    add_fake_engine(tiny_bundle_copy, b"engine", precision="fp16")
    result = invoke("info", tiny_bundle_copy)
    assert result.exit_code == 0, result.output
    assert "fp16, sm90, TensorRT 10.8.0.43, batch 1-8-32 (engines/fp16-sm90-trt10.8.0.43.plan)" in result.output


# --- on a GPU ------------------------------------------------------------------------------------------------------
# Targets (issue #6): fp32 engine heatmaps within 1e-3 of ONNX Runtime on the CPU; fp16 within 2e-2 with
# the same predicted class and top-3 phrases on >= 99% of images.


@pytest.mark.gpu
@needs_tensorrt
def test_bench_command_on_tensorrt(gpu_bundle, fp32_engine):
    result = invoke("bench", gpu_bundle, "--backend", "tensorrt", "--rounds", "2", "--batch-sizes", "1,4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["backend"] == "tensorrt" and all(r["plain_ms"] > 0 for r in report["results"])
