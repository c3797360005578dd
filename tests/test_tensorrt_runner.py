"""textcam.runtime.backends.tensorrt_runner: batch splitting (with a plain function standing in for
the engine), textcam's engine-loading messages (with a stand-in for TensorRT and the CUDA binding,
which proves nothing about TensorRT itself), and ``@pytest.mark.gpu`` (deselected by default):
real engines, split batches, the context pool, CUDA graphs and allocators. Those skip, saying why,
where TensorRT or a CUDA device is missing."""

from __future__ import annotations

import threading
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from textcam.engines.entries import BatchProfile
from textcam.errors import TextcamError
from textcam.runtime.backends import create_runner
from textcam.runtime.backends.availability import unavailable_reason
from textcam.runtime.backends.tensorrt_runner import pad_batch, run_in_chunks
from textcam.runtime.bundle import Bundle
from textcam.runtime.bundle_files import read_manifest

TENSORRT_MISSING = unavailable_reason("tensorrt")
needs_tensorrt = pytest.mark.skipif(
    TENSORRT_MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: {TENSORRT_MISSING}"
)


# --- batch splitting (the runner's logic, with a plain function standing in for the engine) ------------------


def test_pad_batch_repeats_the_last_row():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = pad_batch(rows, 5)
    assert padded.shape == (5, 2)
    np.testing.assert_array_equal(padded[3:], [[4, 5], [4, 5]])
    assert pad_batch(rows, 3) is rows


def test_run_in_chunks_splits_pads_trims_and_keeps_order():
    seen = []

    def engine(feeds):
        seen.append(len(feeds["image"]))
        assert 4 <= len(feeds["image"]) <= 8, "the profile's limits must hold for every run"
        return {"logits": feeds["image"][:, :1] * 2, "class_index": feeds["target_class"] + 100}

    images = np.arange(21 * 3, dtype=np.float32).reshape(21, 3)
    classes = np.arange(21, dtype=np.int64)
    outputs = run_in_chunks({"image": images, "target_class": classes}, BatchProfile(4, 4, 8), engine)
    assert seen == [8, 8, 5]
    np.testing.assert_array_equal(outputs["logits"][:, 0], images[:, 0] * 2)
    np.testing.assert_array_equal(outputs["class_index"], classes + 100)
    small = run_in_chunks({"image": images[:2], "target_class": classes[:2]}, BatchProfile(4, 4, 8), engine)
    assert seen[-1] == 4 and len(small["logits"]) == 2  # padded to the minimum, trimmed back
    with pytest.raises(TextcamError, match="different batch sizes"):
        run_in_chunks({"image": images, "target_class": classes[:3]}, BatchProfile(1, 8, 32), engine)
    with pytest.raises(TextcamError, match="empty batch"):
        run_in_chunks({"image": images[:0], "target_class": classes[:0]}, BatchProfile(1, 8, 32), engine)


# --- textcam's engine-loading messages, with a stand-in for TensorRT ------------------------------------------


class _FakeMemory:
    """Stands in for the CUDA binding; only what the runner asks before deserializing."""

    name, supports_graphs = "fake", False

    def info(self):
        from textcam.runtime.backends.cuda_memory import GpuInfo

        return GpuInfo(0, "Fake GPU", "9.0", 1 << 30)

    def activate(self):
        from contextlib import nullcontext

        return nullcontext()


def _fake_tensorrt(deserialized=None):
    class Runtime:
        def __init__(self, _logger):
            pass

        def deserialize_cuda_engine(self, _data):
            return deserialized

    class Logger:
        ERROR = 0

        def __init__(self, _level):
            pass

    return types.SimpleNamespace(__version__="10.8.0.43", Runtime=Runtime, Logger=Logger)


@pytest.fixture
def fake_gpu(monkeypatch):
    import textcam.runtime.backends.tensorrt_runner as runner_module

    monkeypatch.setattr(runner_module, "import_tensorrt", _fake_tensorrt)
    monkeypatch.setattr(runner_module, "open_device_memory", lambda allocator, device: _FakeMemory())
    return runner_module


def test_corrupt_engine_is_one_line_with_the_rebuild_command(fake_gpu, tiny_bundle_copy, add_fake_engine):
    add_fake_engine(tiny_bundle_copy, b"\x00not an engine")
    with pytest.raises(TextcamError) as exc:
        fake_gpu.TensorRTRunner(Bundle.open(tiny_bundle_copy))
    message = str(exc.value)
    assert "\n" not in message and "cannot deserialize it" in message
    assert message.endswith(f"`textcam build-engine {tiny_bundle_copy} --precision fp32 --min-batch 1 "
                            "--opt-batch 8 --max-batch 32`")


def test_engine_for_another_gpu_is_refused_before_loading(fake_gpu, tiny_bundle_copy, add_fake_engine):
    add_fake_engine(tiny_bundle_copy, b"engine", cc="8.6")
    with pytest.raises(TextcamError) as exc:
        fake_gpu.TensorRTRunner(Bundle.open(tiny_bundle_copy))
    assert "sm86" in str(exc.value) and "this machine has sm90" in str(exc.value)
    entry = read_manifest(tiny_bundle_copy).engines[0]
    with pytest.raises(TextcamError, match=r"built for sm86 with TensorRT 10\.8\.0\.43; this machine has sm90"):
        fake_gpu.TensorRTRunner(Bundle.open(tiny_bundle_copy), engine=entry)


def test_truncated_engine_file_is_caught_by_the_manifest(fake_gpu, tiny_bundle_copy, add_fake_engine):
    entry = add_fake_engine(tiny_bundle_copy, b"0123456789")
    (tiny_bundle_copy / entry.file).write_bytes(b"01234")
    with pytest.raises(TextcamError, match=r"5 bytes, the manifest says 10 \(truncated or replaced\); "
                                           r"rebuild it with `textcam build-engine .* --precision fp32"):
        fake_gpu.TensorRTRunner(Bundle.open(tiny_bundle_copy))


# --- on a GPU ------------------------------------------------------------------------------------------------------
# Targets (issue #6): fp32 engine heatmaps within 1e-3 of ONNX Runtime on the CPU; fp16 within 2e-2 with
# the same predicted class and top-3 phrases on >= 99% of images.


def random_batch(seed: int, count: int, hw=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, *hw)).astype(np.float32)


@pytest.mark.gpu
@needs_tensorrt
def test_batches_above_the_profile_are_split(gpu_bundle, fp32_engine):
    runner = create_runner("tensorrt", Bundle.open(gpu_bundle))
    assert runner.profile.max == 8
    images, classes = random_batch(12, 21), np.full(21, -1, dtype=np.int64)
    whole = runner.run(images, classes)
    assert whole["cam"].shape == (21, 32, 32)
    one_by_one = [runner.run(images[i:i + 1], classes[i:i + 1]) for i in range(21)]
    for name in ("logits", "cam", "channel_weights"):
        np.testing.assert_allclose(whole[name], np.concatenate([o[name] for o in one_by_one]), atol=1e-5)
    runner.close()


@pytest.mark.gpu
@needs_tensorrt
def test_context_pool_serves_threads(gpu_bundle, fp32_engine):
    runner = create_runner("tensorrt", Bundle.open(gpu_bundle), contexts=2)
    batches = [random_batch(100 + i, 1 + i % 8) for i in range(24)]
    expected = [runner.run(b, np.full(len(b), -1, dtype=np.int64)) for b in batches]
    running, peak, lock = [0], [0], threading.Lock()
    original = runner.pool._run_on_free_slot

    def counted(feeds):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return original(feeds)
        finally:
            with lock:
                running[0] -= 1

    runner.pool._run_on_free_slot = counted
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: runner.run(b, np.full(len(b), -1, dtype=np.int64)), batches))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got["cam"], want["cam"], atol=1e-6)
        np.testing.assert_array_equal(got["class_index"], want["class_index"])
    assert peak[0] >= 2, "two contexts should have run at once"
    runner.close()


@pytest.mark.gpu
@needs_tensorrt
def test_cuda_graph_replay_gives_the_same_outputs(gpu_bundle, fp32_engine):
    plain = create_runner("tensorrt", Bundle.open(gpu_bundle), contexts=1)
    graphed = create_runner("tensorrt", Bundle.open(gpu_bundle), contexts=1, cuda_graph_batch=4)
    for seed in range(5):  # new inputs each time: a replay must read them, not the captured ones
        images, classes = random_batch(200 + seed, 4), np.array([-1, 0, 1, 2])
        want, got = plain.run(images, classes), graphed.run(images, classes)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)
    assert graphed.pool._all[0].graphs, "the graph was captured"
    mixed = graphed.run(random_batch(300, 3), np.full(3, -1))  # other sizes run without the graph
    assert mixed["cam"].shape[0] == 3
    plain.close()
    graphed.close()


@pytest.mark.gpu
@needs_tensorrt
def test_pycuda_allocator_gives_the_same_outputs(gpu_bundle, fp32_engine):
    pytest.importorskip("pycuda", reason="pycuda is not installed")
    images, classes = random_batch(500, 5), np.full(5, -1, dtype=np.int64)
    default = create_runner("tensorrt", Bundle.open(gpu_bundle), allocator="cuda-python")
    pycuda = create_runner("tensorrt", Bundle.open(gpu_bundle), allocator="pycuda")
    for name, value in default.run(images, classes).items():
        np.testing.assert_allclose(pycuda.run(images, classes)[name], value, atol=1e-6)
    default.close()
    pycuda.close()
