"""textcam.engines.build: recording engines in the manifest, optimisation-profile shapes and build
settings (no GPU needed), and ``@pytest.mark.gpu`` (deselected by default; ``pytest -m gpu``): real
engine builds, checked against ONNX Runtime on the CPU. Those skip, saying why, where TensorRT or a
CUDA device is missing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from textcam.engines.build import BuildSettings, profile_shapes, record_engine
from textcam.engines.entries import BatchProfile, EngineEntry, engine_file_name
from textcam.errors import TextcamError
from textcam.runtime import Explainer
from textcam.runtime.backends.availability import unavailable_reason
from textcam.runtime.bundle_files import read_manifest, sha256_file
from textcam.runtime.bundle_update import update_bundle

MODEL_SHA = "ab" * 32
TENSORRT_MISSING = unavailable_reason("tensorrt")
needs_tensorrt = pytest.mark.skipif(
    TENSORRT_MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: {TENSORRT_MISSING}"
)


def entry(precision="fp32", cc="9.0", trt="10.8.0.43", profile=(1, 8, 32), **extra) -> EngineEntry:
    return EngineEntry(
        file=f"engines/{engine_file_name(precision, cc, trt)}", precision=precision, tensorrt=trt,
        compute_capability=cc, profile=BatchProfile(*profile), concurrency=2, model_sha256=MODEL_SHA, **extra,
    )


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- manifest updates, build settings ---------------------------------------------------------------------------


def test_record_engine_replaces_the_same_key_and_keeps_the_rest(default_bundle_copy):
    bundle = default_bundle_copy
    (bundle / "engines").mkdir()

    def plan(precision, data, **extra):
        e = entry(precision, **extra)
        (bundle / e.file).write_bytes(data)
        return dataclasses.replace(e, sha256=sha256_file(bundle / e.file), size_bytes=len(data))

    before = read_manifest(bundle)
    record_engine(bundle, plan("fp16", b"one", profile=(1, 8, 32)))
    record_engine(bundle, plan("fp32", b"two"))
    record_engine(bundle, plan("fp16", b"three", profile=(2, 4, 8)))
    written = read_manifest(bundle)
    assert [(e.precision, e.profile.to_dict()) for e in written.engines] == [
        ("fp32", {"min": 1, "opt": 8, "max": 32}), ("fp16", {"min": 2, "opt": 4, "max": 8})]
    assert written.semantics.store.sha256 == before.semantics.store.sha256  # other sections untouched
    assert not list(bundle.glob(".manifest.json.*"))  # atomic write left no temp file
    with pytest.raises(TextcamError, match=r"engines\[\]\.(size_bytes|sha256)"):
        record_engine(bundle, entry("bf16"))  # an entry without its file's size and checksum is refused


def test_profile_shapes_follow_the_dynamic_batch():
    shapes = profile_shapes((-1, 3, 32, 48), BatchProfile(1, 8, 32), "image")
    assert shapes == ((1, 3, 32, 48), (8, 3, 32, 48), (32, 3, 32, 48))
    assert profile_shapes((-1,), BatchProfile(2, 4, 8), "target_class") == ((2,), (4,), (8,))
    with pytest.raises(TextcamError, match="dynamic batch"):
        profile_shapes((1, 3, 32, 32), BatchProfile(1, 8, 32), "image")
    with pytest.raises(TextcamError, match="dynamic batch"):
        profile_shapes((-1, 3, -1, 32), BatchProfile(1, 8, 32), "image")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [({"concurrency": 0}, "--concurrency 0"), ({"concurrency": 17}, "--concurrency 17"),
     ({"workspace_gb": 0}, "--workspace-gb 0"), ({"workspace_gb": -2.0}, "--workspace-gb -2.0"),
     ({"precision": "fp8"}, "precision 'fp8'")],
)
def test_bad_build_settings(options, fragment, tmp_path):
    settings = {"precision": "fp16", "profile": BatchProfile.resolve(), **options}
    with pytest.raises(TextcamError) as exc:
        BuildSettings(**settings)
    assert fragment in one_line(exc)
    with pytest.raises(TextcamError, match="is a directory"):
        BuildSettings("fp32", BatchProfile.resolve(), timing_cache=tmp_path)


# --- on a GPU ------------------------------------------------------------------------------------------------------
# Targets (issue #6): fp32 engine heatmaps within 1e-3 of ONNX Runtime on the CPU; fp16 within 2e-2 with
# the same predicted class and top-3 phrases on >= 99% of images.


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
def test_corrupt_and_foreign_engines_on_a_gpu(gpu_bundle, fp32_engine, make_bundle, tmp_path):
    bundle = make_bundle(gpu_bundle, copy=tmp_path / "b.textcam")
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
def test_fp16_engine_parity_on_the_default_bundle(make_bundle, tmp_path):
    """Item 4 of issue #6 on real images: the built-in default (colour classifier with semantics)."""
    from textcam.engines.build import build_engine
    from textcam.shapes_world import ShapesWorld, artifacts

    if not (artifacts.DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"the shapes-world bundle is not built ({artifacts.REBUILD_HINT})")
    bundle = make_bundle("default", copy=tmp_path / artifacts.DEFAULT_BUNDLE.name)
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
