"""The GPU backends (textcam.runtime.backends: selection, availability, onnxruntime_gpu): importing
loads no GPU library, one-line errors on a machine without a GPU, backend options; and
``@pytest.mark.gpu`` (deselected by default): the ONNX Runtime GPU backends against the CPU, every
GPU backend held to the bundle self-test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from textcam.errors import TextcamError
from textcam.runtime import Explainer
from textcam.runtime.backends import BACKENDS, create_runner
from textcam.runtime.backends.availability import unavailable_reason
from textcam.runtime.bundle import Bundle

TENSORRT_MISSING = unavailable_reason("tensorrt")


def test_importing_the_runtime_loads_no_gpu_library():
    code = ("import sys, textcam.runtime, textcam.runtime.backends; "
            "from textcam.runtime.backends import create_runner; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'pycuda', 'torch')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(TENSORRT_MISSING is None, reason="TensorRT is usable here; the error path cannot be seen")
def test_tensorrt_backend_without_tensorrt_or_gpu_is_one_line(tiny_bundle):
    with pytest.raises(TextcamError) as exc:
        Explainer(tiny_bundle, backend="tensorrt")
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("backend 'tensorrt': not available here (")
    assert TENSORRT_MISSING in message
    assert "; available here: onnxruntime" in message


@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_onnxruntime_gpu_backends_without_onnxruntime_gpu(tiny_bundle, backend):
    reason = unavailable_reason(backend)
    if reason is None:
        pytest.skip(f"{backend} is usable here")
    with pytest.raises(TextcamError) as exc:
        create_runner(backend, Bundle.open(tiny_bundle))
    assert "\n" not in str(exc.value) and reason in str(exc.value) and "available here:" in str(exc.value)


def test_unknown_backend_and_options(tiny_bundle):
    with pytest.raises(TextcamError, match="did you mean tensorrt"):
        Explainer(tiny_bundle, backend="tensorrtt")
    with pytest.raises(TextcamError, match="has no option 'precision'; its options: providers"):
        Explainer(tiny_bundle, backend_options={"precision": "fp16"})
    assert set(BACKENDS) == {"onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "openvino"}


def test_onnxruntime_settings_are_refused_for_tensorrt():
    """The deprecated ONNX Runtime keywords go into backend_options where they apply, as before."""
    from textcam.runtime.explainer import _backend_options

    with pytest.warns(DeprecationWarning, match="backend_options"):
        assert _backend_options("onnxruntime", None, {"intra_op_threads": 2, "allow_spinning": False}) == {
            "intra_op_threads": 2, "allow_spinning": False}
        assert _backend_options("onnxruntime-cuda", {"precision": "fp16"}, {"allow_spinning": True}) == {
            "precision": "fp16", "allow_spinning": True}
        assert _backend_options("tensorrt", {"contexts": 2}, {"allow_spinning": True}) == {"contexts": 2}
        with pytest.raises(TextcamError, match="not 'tensorrt'"):
            _backend_options("tensorrt", None, {"intra_op_threads": 4})
        with pytest.raises(TextcamError, match="chooses its own execution providers"):
            _backend_options("onnxruntime-cuda", None, {"providers": ["CPUExecutionProvider"]})
    assert _backend_options("onnxruntime", {"intra_op_threads": 2}, {}) == {"intra_op_threads": 2}


def test_default_backend_is_unchanged(tiny_bundle):
    explainer = Explainer(tiny_bundle)
    assert explainer.backend == "onnxruntime" and explainer.runner.name == "onnxruntime"
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert explainer.explain(image).heatmap.shape == (40, 30)
    explainer.close()


def test_gpu_benchmark_exits_with_one_line_without_a_gpu():
    if TENSORRT_MISSING is None:
        pytest.skip("TensorRT is usable here")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_latency.py"
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"gpu_latency: cannot run here: {TENSORRT_MISSING}"


# --- on a GPU ------------------------------------------------------------------------------------------------------
# Targets (issue #6): fp32 engine heatmaps within 1e-3 of ONNX Runtime on the CPU; fp16 within 2e-2 with
# the same predicted class and top-3 phrases on >= 99% of images.


def random_batch(seed: int, count: int, hw=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, *hw)).astype(np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_onnxruntime_gpu_backends_match_the_cpu(gpu_bundle, backend):
    reason = unavailable_reason(backend)
    if reason:
        pytest.skip(f"{backend}: {reason}")
    images = random_batch(400, 6)
    cpu = Explainer(gpu_bundle)
    for precision, limit in (("fp32", 1e-3), ("fp16", 2e-2)):
        gpu = Explainer(gpu_bundle, backend=backend, backend_options={"precision": precision})
        given = [r.class_index for r in cpu.explain_batch(images)]
        for a, b in zip(gpu.explain_batch(images, given), cpu.explain_batch(images, given), strict=True):
            assert np.abs(a.heatmap - b.heatmap).max() <= limit, (backend, precision)
    if backend == "onnxruntime-tensorrt":
        assert any((gpu_bundle / "engines" / "onnxruntime-tensorrt").iterdir()), "the engine cache was written"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_gpu_backend_passes_the_bundle_selftest(gpu_bundle, backend, precision, request):
    """The bundle's conformance self-test is what every host is held to (fp16 gets the engine tolerances)."""
    reason = unavailable_reason(backend)
    if reason:
        pytest.skip(f"{backend}: {reason}")
    if backend == "tensorrt":
        request.getfixturevalue("fp32_engine")
        if precision == "fp16":
            from textcam.engines.build import build_engine

            build_engine(gpu_bundle, "fp16", 1, 4, 8)
    explainer = Explainer(gpu_bundle, backend=backend, backend_options={"precision": precision})
    report = explainer.selftest()
    assert report.passed, report.table()
    explainer.close()
