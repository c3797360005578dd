"""The OpenVINO backend: a host of the bundle like any other (it passes the bundle's self-test),
float32 pinned, outputs held to ONNX Runtime's on fresh inputs, safe from several threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("openvino")

from click.testing import CliRunner

from textcam.cli import main
from textcam.errors import TextcamError
from textcam.runtime.backends import create_runner
from textcam.runtime.bundle import Bundle
from textcam.runtime.explainer import Explainer
from textcam.runtime.selftest import run_selftest
from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

SPURIOUS_BUNDLE = DEFAULT_BUNDLE.parent / "spurious.textcam"


@pytest.mark.parametrize("bundle", [DEFAULT_BUNDLE, SPURIOUS_BUNDLE], ids=["color", "spurious"])
def test_selftest_passes_on_openvino(bundle):
    report = run_selftest(bundle, "openvino")
    assert report.passed, report.table()
    assert report.precision == "fp32"


def test_selftest_passes_on_a_resnet_bundle(small_bundle):
    report = run_selftest(small_bundle, "openvino")
    assert report.passed, report.table()


def _cpu_capabilities() -> list[str]:
    import openvino as ov

    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


HAS_BF16 = "BF16" in _cpu_capabilities()
AVX2_CAPABILITIES = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]  # what the plugin reports on an AVX2-only x86 CPU


@pytest.fixture
def cpu_reports(monkeypatch):
    """``cpu_reports(capabilities)``: OpenVINO's CPU device claims these capabilities (the rest is real)."""
    import openvino as ov

    def claim(capabilities):
        real = ov.Core.get_property

        def get_property(self, *args):
            if args[-1] == "OPTIMIZATION_CAPABILITIES":
                return list(capabilities)
            return real(self, *args)

        monkeypatch.setattr(ov.Core, "get_property", get_property)

    return claim


def test_float32_is_pinned():
    fp32 = create_runner("openvino", Bundle.open(DEFAULT_BUNDLE))
    assert fp32.precision == "fp32"
    assert fp32.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bfloat16 (the refusal is tested instead)")
def test_bf16_only_when_asked_on_a_cpu_with_bf16():
    bf16 = create_runner("openvino", Bundle.open(DEFAULT_BUNDLE), precision="bf16")
    assert bf16.precision == "bf16"
    assert bf16.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"


@pytest.mark.skipif(HAS_BF16, reason="this CPU has bfloat16 (bf16 runs and is checked instead)")
def test_bf16_is_refused_on_this_cpu_without_bf16():
    capabilities = ", ".join(_cpu_capabilities())
    with pytest.raises(TextcamError, match=r"^precision='bf16': .*no BF16 .*" + capabilities):
        create_runner("openvino", Bundle.open(DEFAULT_BUNDLE), precision="bf16")


def test_bf16_is_refused_where_the_cpu_reports_no_bf16(cpu_reports):
    """Whatever this machine is: a CPU that reports an AVX2-only capability list gets the refusal."""
    cpu_reports(AVX2_CAPABILITIES)
    with pytest.raises(TextcamError, match=r"^precision=.bf16.: .*capabilities: FP32, INT8, BIN, EXPORT_IMPORT"):
        create_runner("openvino", Bundle.open(DEFAULT_BUNDLE), precision="bf16")
    assert create_runner("openvino", Bundle.open(DEFAULT_BUNDLE)).precision == "fp32"  # fp32 still runs


def test_a_bf16_hint_the_plugin_ignores_is_refused(monkeypatch, cpu_reports):
    """The compiled model's precision is read back: a plugin that compiles f32 for a bf16 hint is caught."""
    import openvino as ov

    real = ov.Core.compile_model

    def compile_f32(self, model, device, config):
        return real(self, model, device, {**config, "INFERENCE_PRECISION_HINT": "f32"})

    monkeypatch.setattr(ov.Core, "compile_model", compile_f32)
    cpu_reports([*AVX2_CAPABILITIES, "BF16"])  # the capability check passes: the read-back is what refuses
    with pytest.raises(TextcamError, match=r"^precision='bf16': .*compiled the graph in f32, not bf16"):
        create_runner("openvino", Bundle.open(DEFAULT_BUNDLE), precision="bf16")


def test_cli_refuses_bf16_in_one_line_where_the_cpu_has_none(cpu_reports, tmp_path):
    from PIL import Image

    cpu_reports(AVX2_CAPABILITIES)
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    result = CliRunner().invoke(main, ["explain", str(DEFAULT_BUNDLE), str(image), "--backend", "openvino",
                                       "--precision", "bf16"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no BF16 support" in lines[0] and "FP32, INT8, BIN" in lines[0], result.output


def test_outputs_match_onnxruntime_on_fresh_inputs(small_bundle):
    bundle = Bundle.open(small_bundle)
    ort, ov = create_runner("onnxruntime", bundle), create_runner("openvino", bundle)
    rng = np.random.default_rng(2026)
    h, w = bundle.input.height, bundle.input.width
    for batch in (1, 3, 2):
        images = rng.standard_normal((batch, 3, h, w)).astype(np.float32)
        targets = np.array([-1, *list(rng.integers(0, len(bundle.classes), batch - 1))], dtype=np.int64)
        want, got = ort.run(images, targets), ov.run(images, targets)
        assert set(got) == set(want)
        # row 0 explains the predicted class: where its top two logits tie to rounding, the two engines may
        # pick either, and that row is left out (rows 1.. explain given classes)
        top2 = np.sort(want["logits"], axis=1)[:, -2:]
        rows = (top2[:, 1] - top2[:, 0]) > 1e-4 * np.abs(want["logits"]).max(axis=1)
        rows[1:] = True
        if not rows.any():
            continue
        np.testing.assert_array_equal(got["class_index"][rows], want["class_index"][rows])
        for name in ("logits", "channel_weights", "channel_activation"):
            scale = np.abs(want[name][rows]).max()
            assert np.abs(got[name][rows] - want[name][rows]).max() <= 1e-4 * scale, name
        assert np.abs(got["cam"][rows] - want["cam"][rows]).max() <= 1e-3


def test_threads_share_one_runner():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, size=(48 + 4 * i, 40 + 3 * i, 3), dtype=np.uint8) for i in range(8)]
    with Explainer(DEFAULT_BUNDLE, backend="openvino") as explainer:
        serial = [explainer.explain(image) for image in images]
        results: list = [None] * len(images)

        def work(i: int) -> None:
            results[i] = explainer.explain(images[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for one, other in zip(serial, results, strict=True):
        assert one.class_index == other.class_index
        np.testing.assert_array_equal(one.heatmap, other.heatmap)


@pytest.mark.parametrize(("options", "message"), [
    ({"precision": "fp16"}, "precision='fp16': the openvino backend runs fp32 or bf16"),
    ({"threads": 0}, "threads=0: expected a positive number of threads"),
    ({"device": "NPU7"}, "device='NPU7': not an OpenVINO device here; available: CPU"),
    ({"intra_op_threads": 2}, "backend 'openvino' has no option 'intra_op_threads'"),
])
def test_bad_options_get_one_line(options, message):
    with pytest.raises(TextcamError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        create_runner("openvino", Bundle.open(DEFAULT_BUNDLE), **options)


def test_cli_explain_on_openvino(tmp_path):
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    result = CliRunner().invoke(main, ["explain", str(DEFAULT_BUNDLE), str(image), "--backend", "openvino",
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    with Explainer(DEFAULT_BUNDLE) as reference:
        assert reference.classes[reference.explain(image).class_index] in result.output
    bad = CliRunner().invoke(main, ["explain", str(DEFAULT_BUNDLE), str(image), "--backend", "openvino",
                                    "--precision", "fp16"])
    assert bad.exit_code != 0 and "the openvino backend runs fp32 or bf16" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bfloat16 (the refusal is tested instead)")
def test_bf16_runs_in_bf16_and_is_held_to_the_reduced_precision_tolerances():
    fp32 = run_selftest(DEFAULT_BUNDLE, "openvino")
    bf16 = run_selftest(DEFAULT_BUNDLE, "openvino", {"precision": "bf16"})
    assert bf16.precision == "bf16"
    assert bf16.passed, bf16.table()
    rows = {(row.group, row.name): row for row in bf16.rows}
    assert rows[("graph", "logits")].tolerance == 5e-2 and rows[("graph", "concept_ids")].tolerance == 0
    # bf16 is really on: its logits are orders of magnitude further from the reference than fp32's
    fp32_logits = {(row.group, row.name): row for row in fp32.rows}[("graph", "logits")].worst
    assert rows[("graph", "logits")].worst > 10 * fp32_logits


@pytest.mark.skipif(HAS_BF16, reason="this CPU has bfloat16 (bf16 runs and is checked instead)")
def test_selftest_with_bf16_is_refused_on_this_cpu_without_bf16():
    with pytest.raises(TextcamError, match=r"^precision='bf16': .*no BF16"):
        run_selftest(DEFAULT_BUNDLE, "openvino", {"precision": "bf16"})
