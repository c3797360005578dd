"""GPU backends and TensorRT engines.

Runs everywhere: the reduced-precision rewrite of a small exported bundle, checked with ONNX
Runtime on the CPU (the fp16 graph must run, gradients must stay fp32 and close to the fp32
graph's), backend selection and the one-line errors on a machine without a GPU, the CLI's error
paths, and textcam's own engine-loading messages (with a stand-in for TensorRT, which proves
nothing about TensorRT itself).

``@pytest.mark.gpu`` (deselected by default; ``pytest -m gpu``): real engine builds and runs.
They skip, saying why, where TensorRT or a CUDA device is missing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from textcam.cli import main
from textcam.engines.build import record_engine
from textcam.engines.entries import BatchProfile, EngineEntry, engine_file_name
from textcam.engines.graph_surgery import downstream_nodes, forward_nodes
from textcam.engines.parity import check_parity
from textcam.engines.precision import reduce_precision, reduced_graph, write_reduced_graph
from textcam.errors import TextcamError
from textcam.runtime import Explainer
from textcam.runtime.backends import BACKENDS, create_runner
from textcam.runtime.backends.availability import unavailable_reason
from textcam.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
from textcam.runtime.bundle import Bundle
from textcam.runtime.bundle_files import read_manifest, sha256_file
from textcam.runtime.bundle_update import update_bundle

FP16_MIN_NORMAL = 6.104e-5
TENSORRT_MISSING = unavailable_reason("tensorrt")
needs_tensorrt = pytest.mark.skipif(
    TENSORRT_MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: {TENSORRT_MISSING}"
)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A small CNN (conv-relu-maxpool, two more convs, GAP, linear; 4 classes) explained at its
    middle block, 32x32 input: forward nodes on both sides of the target layer, a MaxPool whose
    backward is rebuilt, and a weight used by both the forward and the backward pass."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from textcam.export import export_bundle

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
            self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.head = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.head(self.block(self.stem(x))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "tiny.textcam"
    return export_bundle(Tiny().eval(), "block", out, input_size=(32, 32), class_names=["a", "b", "c", "d"]).path


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    copy = tmp_path / "copy.textcam"
    shutil.copytree(tiny_bundle, copy)
    return copy


def run_graph(path: Path, images: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": images, "target_class": classes}), strict=True))


def float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (after ONNX's own type inference)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types_ = {t.name: t.data_type for t in inferred.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types_[value.name] = value.type.tensor_type.elem_type
    return types_


# --- the reduced-precision rewrite ---------------------------------------------------------------------------


def test_fp16_graph_runs_and_keeps_the_backward_pass_in_fp32(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    reduced, report = reduce_precision(model, "fp16")
    types_ = float_types(reduced)
    graph = reduced.graph
    # the interface is unchanged: fp32 in, fp32 out
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("image", onnx.TensorProto.FLOAT), ("target_class", onnx.TensorProto.INT64)]
    for output in graph.output:
        assert output.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64), output.name
    # every node downstream of the class choice (one-hot seed, backward, CAM) sees and makes no fp16 tensor
    seeded = downstream_nodes(graph, "target_class")
    assert seeded, "the graph must have a backward part"
    for index in seeded:
        node = graph.node[index]
        for name in [*node.input, *node.output]:
            assert types_.get(name) != onnx.TensorProto.FLOAT16, f"{node.op_type} {node.name}: {name} is fp16"
    # the forward convolutions do run in fp16, and a weight shared with the backward pass exists twice
    forward = [graph.node[i] for i in forward_nodes(graph)]
    convs = [n for n in forward if n.op_type == "Conv"]
    assert len(convs) == 3 and all(types_[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
    backward_convs = [graph.node[i] for i in seeded if graph.node[i].op_type == "ConvTranspose"]
    assert backward_convs and all(types_[n.input[1]] == onnx.TensorProto.FLOAT for n in backward_convs)
    assert report.reduced_nodes == len(forward_nodes(model.graph))  # counted on the original graph
    assert report.weights_duplicated >= 1 and report.casts_added >= 2
    # and ONNX Runtime on the CPU runs it
    path = tiny_bundle.parent / "model.fp16.test.onnx"
    onnx.save(reduced, str(path))
    images = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    outputs = run_graph(path, images, np.array([0, 3, -1]))
    for name in ("logits", "cam", "channel_weights", "channel_activation"):
        assert outputs[name].dtype == np.float32, name


def test_fp16_graph_meets_the_fp16_parity_targets_on_the_cpu(tiny_bundle):
    opened = Bundle.open(tiny_bundle)
    path = tiny_bundle.parent / "parity.fp16.onnx"
    write_reduced_graph(opened.model_path, path, "fp16")
    reference = OnnxRuntimeRunner(opened)
    candidate = OnnxRuntimeRunner(opened.with_graph(path))
    report = check_parity(reference.run, candidate.run, (32, 32), 4, "fp16", batch_sizes=(1, 5))
    assert report.passed, report.table()
    strict = check_parity(reference.run, candidate.run, (32, 32), 4, "fp32", batch_sizes=(5,))
    assert not strict.passed, "an fp16 forward pass should not pass the fp32 limits (else the check is blind)"


def test_tiny_gradients_survive_because_the_backward_pass_stays_fp32(tiny_bundle, tmp_path):
    """Scale the backward copy of the last layer's weight so every gradient is far below fp16's
    normal range: a half-precision backward would flush them; the rewrite keeps them exact."""
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    graph = model.graph
    seeded = downstream_nodes(graph, "target_class")
    matmul = next(graph.node[i] for i in sorted(seeded) if graph.node[i].op_type == "MatMul")
    weight = next(t for t in graph.initializer if t.name == matmul.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1e-6, weight.name))
    scaled = tmp_path / "scaled.onnx"
    onnx.save(model, str(scaled))
    reduced, _ = reduce_precision(model, "fp16")
    reduced_path = tmp_path / "scaled.fp16.onnx"
    onnx.save(reduced, str(reduced_path))
    images = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    classes = np.array([0, 1, 2, 3])
    full, half = run_graph(scaled, images, classes), run_graph(reduced_path, images, classes)
    magnitude = np.abs(full["channel_weights"]).max()
    assert 0 < magnitude < FP16_MIN_NORMAL / 10, "the test needs gradients below fp16's normal range"
    assert np.abs(half["channel_weights"] - full["channel_weights"]).max() < 2e-2 * magnitude
    assert np.abs(half["cam"] - full["cam"]).max() < 2e-2


def test_bf16_graph_moves_to_opset_22_and_type_checks(tiny_bundle):
    reduced, report = reduce_precision(onnx.load(str(tiny_bundle / "model.onnx")), "bf16")
    assert next(o.version for o in reduced.opset_import if o.domain in ("", "ai.onnx")) == 22
    types_ = float_types(reduced)
    convs = [n for i, n in enumerate(reduced.graph.node) if n.op_type == "Conv" and i in forward_nodes(reduced.graph)]
    assert convs and all(types_[n.output[0]] == onnx.TensorProto.BFLOAT16 for n in convs)
    for index in downstream_nodes(reduced.graph, "target_class"):
        node = reduced.graph.node[index]
        assert all(types_.get(name) != onnx.TensorProto.BFLOAT16 for name in [*node.input, *node.output])
    assert [o.type.tensor_type.elem_type for o in reduced.graph.output if o.name == "cam"] == [onnx.TensorProto.FLOAT]
    assert report.precision == "bf16"


def test_the_logits_only_graph_can_be_reduced_too(tiny_bundle, tmp_path):
    """``textcam bench``'s plain baseline: the pruned graph has no target_class input."""
    from textcam.engines.graph_surgery import extract_logits_graph

    plain = extract_logits_graph(tiny_bundle / "model.onnx", tmp_path / "plain.onnx")
    report = write_reduced_graph(plain, tmp_path / "plain.fp16.onnx", "fp16")
    assert report.fp32_nodes == 0
    session = ort.InferenceSession(str(tmp_path / "plain.fp16.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (logits,) = session.run(None, {"image": images})
    reference = run_graph(tiny_bundle / "model.onnx", images, np.array([-1, -1]))["logits"]
    assert logits.dtype == np.float32 and np.abs(logits - reference).max() < 2e-2 * np.abs(reference).max()


def test_reduce_precision_refuses_what_it_cannot_do(tiny_bundle, tmp_path):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    with pytest.raises(TextcamError, match="already fp32"):
        reduce_precision(model, "fp32")
    with pytest.raises(TextcamError, match="precision 'int8'"):
        reduce_precision(model, "int8")
    renamed = onnx.ModelProto.FromString(model.SerializeToString())
    renamed.graph.output[0].name = "scores"
    with pytest.raises(TextcamError, match="'logits' output"):
        reduce_precision(renamed, "fp16")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(TextcamError, match="cannot read the ONNX graph"):
        write_reduced_graph(broken, tmp_path / "out.onnx", "fp16")


def test_reduced_graph_is_reused_until_the_model_changes(bundle_copy):
    opened = Bundle.open(bundle_copy)
    sha = opened.manifest["model"]["sha256"]
    folder = bundle_copy / "engines"
    path = reduced_graph(opened.model_path, sha, folder, "fp16")
    assert path == folder / "model.fp16.onnx"
    stamp = path.stat().st_mtime_ns
    assert reduced_graph(opened.model_path, sha, folder, "fp16").stat().st_mtime_ns == stamp
    path.write_bytes(b"stale")
    rewritten = reduced_graph(opened.model_path, sha, folder, "fp16")
    props = {p.key: p.value for p in onnx.load(str(rewritten)).metadata_props}
    assert props == {"textcam.source_sha256": sha, "textcam.precision": "fp16"}


# --- backend selection without a GPU ----------------------------------------------------------------------------


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
    assert set(BACKENDS) == {"onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"}


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


def _add_engine(bundle: Path, data: bytes, cc="9.0", trt="10.8.0.43", precision="fp32") -> EngineEntry:
    name = engine_file_name(precision, cc, trt)
    (bundle / "engines").mkdir(exist_ok=True)
    (bundle / "engines" / name).write_bytes(data)
    entry = EngineEntry(f"engines/{name}", precision, trt, cc, BatchProfile(1, 8, 32), 2, "Some GPU",
                        model_sha256=read_manifest(bundle).model.graph.sha256,
                        sha256=sha256_file(bundle / "engines" / name), size_bytes=len(data))
    record_engine(bundle, entry)
    return entry


def test_corrupt_engine_is_one_line_with_the_rebuild_command(fake_gpu, bundle_copy):
    _add_engine(bundle_copy, b"\x00not an engine")
    with pytest.raises(TextcamError) as exc:
        fake_gpu.TensorRTRunner(Bundle.open(bundle_copy))
    message = str(exc.value)
    assert "\n" not in message and "cannot deserialize it" in message
    assert message.endswith(f"`textcam build-engine {bundle_copy} --precision fp32 --min-batch 1 --opt-batch 8 "
                            "--max-batch 32`")


def test_engine_for_another_gpu_is_refused_before_loading(fake_gpu, bundle_copy):
    _add_engine(bundle_copy, b"engine", cc="8.6")
    with pytest.raises(TextcamError) as exc:
        fake_gpu.TensorRTRunner(Bundle.open(bundle_copy))
    assert "sm86" in str(exc.value) and "this machine has sm90" in str(exc.value)
    entry = read_manifest(bundle_copy).engines[0]
    with pytest.raises(TextcamError, match=r"built for sm86 with TensorRT 10\.8\.0\.43; this machine has sm90"):
        fake_gpu.TensorRTRunner(Bundle.open(bundle_copy), engine=entry)


def test_truncated_engine_file_is_caught_by_the_manifest(fake_gpu, bundle_copy):
    entry = _add_engine(bundle_copy, b"0123456789")
    (bundle_copy / entry.file).write_bytes(b"01234")
    with pytest.raises(TextcamError, match=r"5 bytes, the manifest says 10 \(truncated or replaced\); "
                                           r"rebuild it with `textcam build-engine .* --precision fp32"):
        fake_gpu.TensorRTRunner(Bundle.open(bundle_copy))


# --- the command line -------------------------------------------------------------------------------------------


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


def test_info_lists_engines(bundle_copy):
    _add_engine(bundle_copy, b"engine", precision="fp16")
    result = invoke("info", bundle_copy)
    assert result.exit_code == 0, result.output
    assert "fp16, sm90, TensorRT 10.8.0.43, batch 1-8-32 (engines/fp16-sm90-trt10.8.0.43.plan)" in result.output


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


@pytest.fixture(scope="module")
def gpu_bundle(tiny_bundle, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("gpu") / "tiny.textcam"
    shutil.copytree(tiny_bundle, copy)
    return copy


@pytest.fixture(scope="module")
def fp32_engine(gpu_bundle):
    from textcam.engines.build import build_engine

    return build_engine(gpu_bundle, "fp32", 1, 4, 8, concurrency=2)


def random_batch(seed: int, count: int, hw=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, *hw)).astype(np.float32)


@pytest.mark.gpu
@needs_tensorrt
def test_fp32_engine_build_records_the_engine_and_matches_onnxruntime(gpu_bundle, fp32_engine):
    import tensorrt

    assert fp32_engine.parity.passed, fp32_engine.parity.table()
    entry = read_manifest(gpu_bundle).engines[-1]
    assert entry.precision == "fp32" and entry.tensorrt == tensorrt.__version__
    assert entry.profile == BatchProfile(1, 4, 8) and entry.concurrency == 2
    assert (gpu_bundle / entry.file).is_file() and entry.sha256 == sha256_file(gpu_bundle / entry.file)
    cpu = Explainer(gpu_bundle)
    gpu = Explainer(gpu_bundle, backend="tensorrt")
    images = random_batch(11, 16)
    for classes in (None, [int(i) % 4 for i in range(16)]):
        ours, reference = gpu.explain_batch(images, classes), cpu.explain_batch(images, classes)
        for a, b in zip(ours, reference, strict=True):
            assert a.class_index == b.class_index
            assert np.abs(a.heatmap - b.heatmap).max() <= 1e-3
            np.testing.assert_allclose(a.channel_weights, b.channel_weights, rtol=1e-3,
                                       atol=1e-3 * np.abs(b.channel_weights).max())
    gpu.close()


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
def test_corrupt_and_foreign_engines_on_a_gpu(gpu_bundle, fp32_engine, tmp_path):
    bundle = tmp_path / "b.textcam"
    shutil.copytree(gpu_bundle, bundle)
    entry = read_manifest(bundle).engines[-1]
    plan = bundle / entry.file
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    # the manifest agrees with the damaged file: TensorRT decides
    entry = dataclasses.replace(entry, size_bytes=plan.stat().st_size, sha256=sha256_file(plan))
    record_engine(bundle, entry)
    with pytest.raises(TextcamError, match=r"cannot deserialize it.*textcam build-engine"):
        Explainer(bundle, backend="tensorrt")
    with update_bundle(bundle) as update:
        update.manifest = update.manifest.replace(engines=(dataclasses.replace(entry, compute_capability="1.0"),))
    with pytest.raises(TextcamError, match="textcam build-engine"):
        Explainer(bundle, backend="tensorrt")


@pytest.mark.gpu
@needs_tensorrt
def test_fp16_engine_parity_on_the_default_bundle(tmp_path):
    """Item 4 of issue #6 on real images: the built-in default (colour classifier with semantics)."""
    from textcam.engines.build import build_engine
    from textcam.shapes_world import ShapesWorld, artifacts

    if not (artifacts.DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"the shapes-world bundle is not built ({artifacts.REBUILD_HINT})")
    bundle = tmp_path / artifacts.DEFAULT_BUNDLE.name
    shutil.copytree(artifacts.DEFAULT_BUNDLE, bundle)
    result = build_engine(bundle, "fp16", 1, 16, 32)
    assert result.parity.passed, result.parity.table()
    cpu, gpu = Explainer(bundle), Explainer(bundle, backend="tensorrt", backend_options={"precision": "fp16"})
    assert gpu.runner.entry.precision == "fp16"
    spec = cpu.bundle.input
    world = ShapesWorld(min(spec.height, spec.width), seed=4242)
    images = [world.scene(i).image for i in range(300)]
    ours, reference = gpu.explain_batch(images), cpu.explain_batch(images)
    same_class = [a.class_index == b.class_index for a, b in zip(ours, reference, strict=True)]
    same_phrases = [[c.phrase for c in a.concepts[:3]] == [c.phrase for c in b.concepts[:3]]
                    for a, b in zip(ours, reference, strict=True)]
    assert np.mean(same_class) >= 0.99, np.mean(same_class)
    assert np.mean(same_phrases) >= 0.99, np.mean(same_phrases)
    given = [b.class_index for b in reference]  # the same class on both sides: maps comparable everywhere
    worst = max(np.abs(a.heatmap - b.heatmap).max()
                for a, b in zip(gpu.explain_batch(images, given), cpu.explain_batch(images, given), strict=True))
    assert worst <= 2e-2, worst
    gpu.close()


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


@pytest.mark.gpu
@needs_tensorrt
def test_bench_command_on_tensorrt(gpu_bundle, fp32_engine):
    result = invoke("bench", gpu_bundle, "--backend", "tensorrt", "--rounds", "2", "--batch-sizes", "1,4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["backend"] == "tensorrt" and all(r["plain_ms"] > 0 for r in report["results"])


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
