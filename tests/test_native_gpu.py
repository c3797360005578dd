"""The native core's GPU backends on a GPU (``@pytest.mark.gpu``, deselected by default).

``textcam_native`` built with ``-DTEXTCAM_WITH_TENSORRT=ON`` runs the bundle's TensorRT engine itself
(``cpp/src/tensorrt_runner.cpp``): it must pass the bundle self-test, give the Python TensorRT runner's
answers on the same engine, and serve concurrent callers from its pool of execution contexts. The
native ``onnxruntime-cuda`` backend must pass the self-test too. Every test skips, saying why, where
there is no GPU, no TensorRT or onnxruntime-gpu, no ``textcam_native``, or a core built without TensorRT.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from textcam.runtime.backends.availability import unavailable_reason
from textcam.runtime.explainer import Explainer
from textcam.runtime.native import native_module, onnxruntime_library

pytestmark = pytest.mark.gpu


def tensorrt_library() -> str:
    """``libnvinfer.so.<major>`` of the tensorrt wheel (``tensorrt_libs``), for the core to dlopen; "" if none."""
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return ""
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("libnvinfer.so.*"))
    return str(found[0]) if found else ""


def selftest_table(rows) -> str:
    return "\n".join(
        f"{stage:10} {output:18} {measure:10} {value:.3g} <= {tolerance:.3g} {'ok' if passed else 'FAIL'}"
        for stage, output, measure, value, tolerance, passed in rows
    )


def assert_selftest_passes(core) -> None:
    images, rows = core.selftest()
    assert images > 0 and rows, "the self-test compared nothing"
    assert all(row[5] for row in rows), selftest_table(rows)


@pytest.fixture(scope="module")
def native():
    """``textcam_native`` with the TensorRT runner, on a machine that can run it (else a skip saying why)."""
    reason = unavailable_reason("tensorrt")
    if reason:
        pytest.skip(f"tensorrt: {reason}")
    module = native_module(force=True)
    if module is None:
        pytest.skip("textcam_native is not installed (pip install ./native)")
    try:  # the backend is checked before the bundle is opened: a missing bundle tells whether it is built in
        module.Explainer(str(Path(__file__).parent / "no-such.textcam"), backend="tensorrt")
    except Exception as exc:  # textcam_native raises TextcamError
        if "built without TensorRT" in str(exc):
            pytest.skip(f"textcam_native: {exc}")
    return module


# The bundle and its engine are asked for only after the checks above, so that a machine that cannot run
# these tests skips them without exporting a bundle first (pytest sets up wider-scoped fixtures first).


@pytest.fixture(scope="module")
def native_tensorrt(native, request):
    """A native ``tensorrt`` Explainer on ``gpu_bundle``'s fp32 engine (batch 1-4-8, two contexts)."""
    import tensorrt  # noqa: F401  (loads the wheel's libnvinfer into the process, as the Python runner does)

    gpu_bundle = request.getfixturevalue("gpu_bundle")
    request.getfixturevalue("fp32_engine")
    library = tensorrt_library()
    with pytest.MonkeyPatch.context() as patch:
        if library:
            patch.setenv("TEXTCAM_TENSORRT_LIBRARY", library)
        return native.Explainer(
            str(gpu_bundle), backend="tensorrt", onnxruntime_library=onnxruntime_library(), batch_size=16
        )


def random_batch(seed: int, count: int, hw=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, *hw)).astype(np.float32)


def test_native_tensorrt_passes_the_bundle_selftest(native_tensorrt):
    assert native_tensorrt.summary["backend"] == "tensorrt"
    assert_selftest_passes(native_tensorrt)


@pytest.mark.parametrize("count", [1, 5, 11])  # within one profile run, and split into runs of at most 8
def test_native_tensorrt_matches_the_python_tensorrt_runner(native_tensorrt, request, count):
    gpu_bundle = request.getfixturevalue("gpu_bundle")
    images = random_batch(600 + count, count)
    with Explainer(gpu_bundle, backend="tensorrt") as python:
        expected = python.explain_batch(images)
        given = [e.class_index for e in expected]
        expected_given = python.explain_batch(images, given[::-1])
    for classes, reference in (([], expected), (given[::-1], expected_given)):
        found = native_tensorrt.explain_batch(images, classes)
        assert len(found) == count
        for ours, theirs in zip(found, reference, strict=True):
            assert ours["class_index"] == theirs.class_index
            assert ours["label"] == theirs.label
            np.testing.assert_allclose(ours["logits"], theirs.logits, rtol=0, atol=1e-4)
            np.testing.assert_allclose(ours["heatmap"], theirs.heatmap, rtol=0, atol=1e-4)
            assert [c[0] for c in ours["concepts"]] == [c.phrase for c in theirs.concepts]


def test_native_tensorrt_serves_concurrent_callers(native_tensorrt):
    """More threads than execution contexts: each waits for a free one and gets its own answers."""
    batches = [random_batch(700 + i, 3 + i) for i in range(6)]
    serial = [native_tensorrt.explain_batch(b) for b in batches]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(native_tensorrt.explain_batch, batches))
    for one, other in zip(serial, concurrent, strict=True):
        for a, b in zip(one, other, strict=True):
            assert a["class_index"] == b["class_index"]
            np.testing.assert_allclose(a["heatmap"], b["heatmap"], rtol=0, atol=1e-5)


def test_native_onnxruntime_cuda_passes_the_bundle_selftest(request):
    reason = unavailable_reason("onnxruntime-cuda")
    if reason:
        pytest.skip(f"onnxruntime-cuda: {reason}")
    module = native_module(force=True)
    if module is None:
        pytest.skip("textcam_native is not installed (pip install ./native)")
    gpu_bundle = request.getfixturevalue("gpu_bundle")
    core = module.Explainer(str(gpu_bundle), backend="onnxruntime-cuda", onnxruntime_library=onnxruntime_library())
    assert core.summary["backend"] == "onnxruntime-cuda"
    assert_selftest_passes(core)
