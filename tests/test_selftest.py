"""The conformance self-test: building it, a correct host passing, wrong hosts and damaged files failing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from PIL import Image
from safetensors.numpy import load

from textcam.errors import TextcamError
from textcam.runtime import Explainer, images
from textcam.runtime.bundle import Bundle
from textcam.runtime.bundle_update import update_bundle
from textcam.runtime.manifest import SelftestSection
from textcam.runtime.selftest import (
    IMAGE_SIZES,
    SelftestReport,
    build_selftest,
    compare_outputs,
    read_selftest,
    run_selftest,
    selftest_images,
    widened,
)


def _record(path: Path, data: bytes, fields: dict) -> None:
    with update_bundle(path) as update:
        ref = update.add_bytes("selftest", ".safetensors", data)
        update.manifest = update.manifest.replace(selftest=SelftestSection(ref, **fields))


def _with_selftest(bundle: Path) -> Path:
    data, fields = build_selftest(bundle)
    _record(bundle, data, fields)
    return bundle


@pytest.fixture(scope="module")
def default_st(make_bundle):
    return _with_selftest(make_bundle("default", copy=True))


@pytest.fixture(scope="module")
def small_st(make_bundle, small_bundle):
    return _with_selftest(make_bundle(small_bundle, copy=True))


@pytest.fixture(params=["default", "small"])
def st_bundle(request):
    return request.getfixturevalue(f"{request.param}_st")


class _Session:
    """A runner on an arbitrary ONNX model (bytes or path), as a wrong host would run."""

    def __init__(self, model, optimization=None):
        options = ort.SessionOptions()
        if optimization is not None:
            options.graph_optimization_level = optimization
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def run(self, batch, target):
        return dict(zip(self.names, self.session.run(None, {"image": batch, "target_class": target}), strict=True))


def _perturbed(model_path: Path, scale: float) -> bytes:
    model = onnx.load(str(model_path))
    rng = np.random.default_rng(7)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            noisy = array * (1 + scale * rng.standard_normal(array.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    return model.SerializeToString()


def _failed(report: SelftestReport) -> set[tuple[str, str]]:
    return {(row.group, row.name) for row in report.failed}


# ---- images ----------------------------------------------------------------------------------------

def test_images_are_deterministic_sized_and_smooth():
    first, again = selftest_images(6), selftest_images(6)
    assert [im.shape[:2] for im in first] == list(IMAGE_SIZES[:6])
    assert all(im.dtype == np.uint8 and im.shape[2] == 3 for im in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(selftest_images(4), first, strict=False))
    for image in first:
        values = image.astype(np.float64)
        step = np.abs(np.diff(values, axis=1)).mean() if image.shape[1] > 1 else 0
        assert 0.5 < step < 20  # textured, yet far smoother than noise (~85 levels between neighbours)
        assert values.std() > 15  # structure, not a flat field
    assert len({im.shape for im in selftest_images(20)}) == 20


@pytest.mark.parametrize("count", [0, -1, 257, 2.5, True, "4"])
def test_image_count_is_checked(count):
    with pytest.raises(TextcamError, match="count="):
        selftest_images(count)


# ---- building and passing --------------------------------------------------------------------------

def test_fields_and_file(default_st):
    bundle = Bundle.open(default_st)
    section = bundle.info.selftest
    assert section.images == 4 and section.concepts
    data = read_selftest(bundle)
    assert data.expected["input"].shape == (4, 3, 64, 64)
    assert data.expected["concept_ids"].shape == (4, 5)
    pool = {im.shape for im in selftest_images(8)}
    assert all(im.shape in pool for im in data.images) and len({im.shape for im in data.images}) == 4
    tolerances = section.tolerances
    assert tolerances["input"] == pytest.approx(1 / (255 * 0.224) + 1e-5)
    assert tolerances["class_index"] == 0 and tolerances["end_to_end.concept_ids"] == 0
    assert tolerances["end_to_end.logits"] >= tolerances["logits"]
    assert json.loads(json.dumps(bundle.manifest))["selftest"]["tolerances"] == tolerances


def _margins(bundle: Path) -> np.ndarray:
    """The pool's relative top-2 logit margins, as the self-test measures them (all 8 images)."""
    from textcam.runtime import selftest

    explainer = Explainer(bundle)
    batch = selftest._preprocess(selftest_images(8), Bundle.open(bundle).input)
    logits = explainer.runner.run(batch, np.full(len(batch), -1, dtype=np.int64))["logits"].astype(np.float64)
    top = np.sort(logits, axis=1)
    return (top[:, -1] - top[:, -2]) / np.abs(logits).max(axis=1)


@pytest.mark.parametrize("unstable_first", [0, 1])
def test_the_rest_of_the_pool_runs_only_when_a_first_image_is_unstable(default_st, monkeypatch, unstable_first):
    """The first images alone when they are stable; otherwise the choice the whole pool gives: the
    stable ones first, in order (the thresholds are set from the model's own margins)."""
    from textcam.runtime import selftest

    margins = _margins(default_st)
    threshold = 0.0
    if unstable_first:  # just above the smallest of the first four margins: that image becomes unstable
        low = np.sort(margins[:4])
        threshold = (low[0] + low[1]) / 2
        assert (margins[4:] > threshold).any()
    monkeypatch.setattr(selftest, "MARGIN_FACTOR", threshold / selftest.GRAPH_TOLERANCES["logits"])
    runs = []
    original = selftest._graph_and_concepts
    monkeypatch.setattr(selftest, "_graph_and_concepts", lambda e, b, s: runs.append(len(b)) or original(e, b, s))
    data, _ = build_selftest(default_st)
    chosen = json.loads(_metadata(data)["generated_indices"])
    stable = [i for i in range(8) if margins[i] > threshold]
    assert chosen == stable[:4]
    assert runs == ([4] * 4 if not unstable_first else [4] * 4 + [4] * 4)
    assert len(load(data)["logits"]) == 4


def _metadata(data: bytes) -> dict:
    header = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + header])["__metadata__"]


def test_small_bundle_has_no_concepts(small_st):
    bundle = Bundle.open(small_st)
    assert not bundle.info.selftest.concepts
    assert "concept_ids" not in read_selftest(bundle).expected


@pytest.mark.parametrize("threads", [1, 2])
def test_passes_on_onnxruntime_cpu(st_bundle, threads):
    report = Explainer(st_bundle, backend_options={"intra_op_threads": threads}).selftest()
    assert report.passed, report.table()
    assert report.backend == "onnxruntime" and report.precision == "fp32"
    assert {row.group for row in report.rows} == {"preprocess", "graph", "end-to-end"}


@pytest.mark.parametrize("options", [{"batch_size": 1}, {"use_fused": False}, {"concepts": {"top_k": 3}}])
def test_passes_with_other_explainer_settings(default_st, options):
    assert Explainer(default_st, **options).selftest().passed


def test_passes_without_graph_optimizations(st_bundle):
    explainer = Explainer(st_bundle)
    explainer.runner = _Session(str(Bundle.open(st_bundle).model_path), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    report = explainer.selftest()
    assert report.passed, report.table()
    assert 0 < report.row("graph", "logits").worst < 1e-5  # another kernel order: tiny differences


def test_run_selftest_opens_a_path(default_st):
    report = run_selftest(str(default_st))
    assert report.passed
    assert report.to_dict()["rows"][0] == {"stage": "preprocess", "output": "input", "measure": "max abs",
                                           "worst": 0.0, "tolerance": report.rows[0].tolerance, "passed": True}
    lines = report.table().splitlines()
    assert len(lines) == 2 + len(report.rows) and len({len(line) for line in lines[:2]}) == 1


# ---- wrong hosts fail, in the right rows -----------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-3, 1e-2])
def test_perturbed_weights_fail_the_graph_rows(st_bundle, scale):
    explainer = Explainer(st_bundle)
    explainer.runner = _Session(_perturbed(Bundle.open(st_bundle).model_path, scale))
    report = explainer.selftest()
    assert not report.passed
    assert {("graph", "logits"), ("graph", "cam"), ("graph", "channel_weights")} <= _failed(report)
    assert report.row("preprocess", "input").passed


def test_another_cam_method_fails_the_cam_row(make_bundle, small_st):
    other = make_bundle(method="layercam")  # the same weights as small_bundle, explained by LayerCAM instead
    explainer = Explainer(small_st)
    explainer.runner = _Session(str(Bundle.open(other).model_path))
    report = explainer.selftest()
    assert {("graph", "cam"), ("graph", "channel_weights")} <= _failed(report)
    assert report.row("graph", "cam").worst > 0.1
    assert report.row("graph", "logits").passed and report.row("preprocess", "input").passed


def _preprocess_with(resample):
    def preprocess(image, spec):
        box = images.crop_box(image.width, image.height, spec)
        pixels = np.asarray(image.resize((spec.width, spec.height), resample, box=box), np.float32)
        pixels = (pixels * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std,
                                                                                                  np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), None
    return preprocess


@pytest.mark.parametrize("resample", [Image.Resampling.NEAREST, Image.Resampling.BICUBIC])
def test_other_resize_fails_the_input_row_only_there(st_bundle, monkeypatch, resample):
    monkeypatch.setattr(images, "preprocess", _preprocess_with(resample))
    report = Explainer(st_bundle).selftest()
    assert not report.passed
    assert ("preprocess", "input") in _failed(report)
    assert report.row("preprocess", "input").worst > 5 * report.row("preprocess", "input").tolerance
    assert not any(stage == "graph" for stage, _ in _failed(report))  # the graph is fine


def test_one_grey_level_everywhere_still_passes(st_bundle, monkeypatch):
    real = images.preprocess

    def shifted(image, spec):
        tensor, geometry = real(image, spec)
        return tensor + (np.float32(spec.scale) / np.asarray(spec.std, np.float32))[:, None, None], geometry

    monkeypatch.setattr(images, "preprocess", shifted)
    assert Explainer(st_bundle).selftest().passed


@pytest.mark.parametrize("change, row", [
    (lambda o: o.update(logits=o["logits"] * 1.01), "logits"),
    (lambda o: o.update(cam=np.clip(o["cam"] + 0.01, 0, 1)), "cam"),
    (lambda o: o.update(channel_weights=o["channel_weights"] * 1.01), "channel_weights"),
    (lambda o: o.update(channel_activation=o["channel_activation"] * 0.99), "channel_activation"),
    (lambda o: o.update(class_index=(o["class_index"] + 1) % 5), "class_index"),
    (lambda o: o.update(concept_ids=o["concept_ids"][:, ::-1]), "concept_ids"),
    (lambda o: o.update(concept_scores=o["concept_scores"] + 1e-3), "concept_scores"),
    (lambda o: o.update(cam=o["cam"][:, :-1]), "cam"),
    (lambda o: o.pop("channel_weights"), "channel_weights"),
    (lambda o: o.update(logits=np.where(o["logits"] > 0, np.nan, o["logits"])), "logits"),
])
def test_comparison_flags_the_changed_output(default_st, change, row):
    data = read_selftest(Bundle.open(default_st))
    expected = {k: v for k, v in data.expected.items() if k != "input"}
    candidate = {k: v.copy() for k, v in expected.items()}
    change(candidate)
    rows = compare_outputs("graph", expected, candidate, data.tolerances)
    assert [r.name for r in rows if not r.passed] == [row]


def test_reduced_precision_widens_numeric_tolerances_only():
    tolerances = {"input": 0.0175, "logits": 1e-3, "class_index": 0.0, "end_to_end.cam": 0.03,
                  "end_to_end.concept_ids": 0.0}
    assert widened(tolerances, "fp32") == tolerances
    assert widened(tolerances, "fp16") == {"input": 0.0175, "logits": 2e-2, "class_index": 0.0,
                                           "end_to_end.cam": 0.03, "end_to_end.concept_ids": 0.0}


# ---- damaged or missing self-tests -----------------------------------------------------------------

def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _without_selftest(plain: Path) -> Path:
    with update_bundle(plain) as update:
        update.manifest = update.manifest.replace(selftest=None)
    return plain


def test_bundle_without_selftest(default_bundle_copy):
    plain = _without_selftest(default_bundle_copy)
    with pytest.raises(TextcamError, match=r"no self-test.*re-run `textcam export`") as exc:
        Explainer(plain).selftest()
    _one_line(exc)


def test_corrupted_file_fails_its_checksum(make_bundle, default_st, tmp_path):
    bundle = make_bundle(default_st, copy=tmp_path / default_st.name)
    path = bundle / Bundle.open(bundle).info.selftest.data.file
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(TextcamError, match=r"checksum differs.*re-run `textcam export`") as exc:
        run_selftest(bundle)
    _one_line(exc)


def _rewrite(bundle: Path, change, fields_change=None) -> None:
    """Rewrite the self-test file with ``change(tensors, metadata)`` applied, recorded properly."""
    from safetensors import safe_open
    from safetensors.numpy import save

    opened = Bundle.open(bundle)
    with safe_open(str(opened.selftest_path), framework="numpy") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    change(tensors, metadata)
    section = opened.info.selftest
    fields = {"images": section.images, "tolerances": dict(section.tolerances), "concepts": section.concepts}
    if fields_change:
        fields_change(fields)
    _record(bundle, save(tensors, metadata=metadata), fields)


@pytest.mark.parametrize("change, fields_change, message", [
    (lambda t, m: t.pop("logits"), None, "lacks the tensor 'logits'"),
    (lambda t, m: t.pop("image_2"), None, "lacks the tensor 'image_2'"),
    (lambda t, m: t.pop("concept_scores"), None, "lacks the tensor 'concept_scores'"),
    (lambda t, m: t.update(input=t["input"][:, :, :32]), None, r"'input' is float32 \[4, 3, 32, 64\]; expected"),
    (lambda t, m: t.update(logits=np.zeros((4, 9), np.float32)), None, r"'logits' .*expected float32 \[4, 8\]"),
    (lambda t, m: t.update(channel_weights=t["channel_weights"][:, :-1]), None, r"expected float32 \[4, 128\]"),
    (lambda t, m: t.update(class_index=t["class_index"].astype(np.int32)), None, "'class_index' is int32"),
    (lambda t, m: t.update(class_index=t["class_index"] + 8), None, "class outside 0..7"),
    (lambda t, m: t.update(image_0=t["image_0"][..., :2].copy()), None, "'image_0' is uint8"),
    (lambda t, m: t.update(cam=t["cam"] * np.nan), None, "'cam' holds NaN"),
    (lambda t, m: t.update(concept_ids=t["concept_ids"] + 100), None, "outside the vocabulary"),
    (lambda t, m: t.update(concept_ids=t["concept_ids"][:, :3].copy(),
                           concept_scores=t["concept_scores"][:, :3].copy()), None, "3 phrases per image"),
    (lambda t, m: m.update(format="other"), None, "not a textcam self-test"),
    (lambda t, m: m.update(format_version="9"), None, "newer than this textcam"),
    (lambda t, m: m.update(model_sha256="0" * 64), None, "another graph"),
    (lambda t, m: m.update(semantics_sha256="0" * 64), None, "other channel semantics"),
    (lambda t, m: m.update(concept_settings="{"), None, "damaged concept_settings"),
    (lambda t, m: None, lambda f: f.update(images=3), "more images than"),
    (lambda t, m: None, lambda f: f.update(images=5), r"lacks the tensor 'image_4'|'input' is float32 \[4"),
    (lambda t, m: None, lambda f: f["tolerances"].pop("cam"), "'selftest.tolerances' lacks cam"),
    (lambda t, m: None, lambda f: f.update(concepts=False), "manifest's selftest.concepts is false"),
])
def test_bad_contents_are_one_line_errors(make_bundle, default_st, tmp_path, change, fields_change, message):
    bundle = make_bundle(default_st, copy=tmp_path / default_st.name)
    _rewrite(bundle, change, fields_change)
    with pytest.raises(TextcamError, match=message) as exc:
        run_selftest(bundle)
    assert "re-run `textcam export`" in _one_line(exc) or "upgrade textcam" in str(exc.value)


# ---- the command -----------------------------------------------------------------------------------

def test_cli_pass_table_and_json(default_st):
    from textcam.cli import main

    result = CliRunner().invoke(main, ["selftest", str(default_st)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("PASS") and "end-to-end  concept_ids" in result.output
    result = CliRunner().invoke(main, ["selftest", str(default_st), "--json", "--threads", "1"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["passed"] and len(report["rows"]) == 15


def test_cli_fail_exit_status(default_st, monkeypatch):
    from textcam.cli import main

    monkeypatch.setattr(images, "preprocess", _preprocess_with(Image.Resampling.NEAREST))
    result = CliRunner().invoke(main, ["selftest", str(default_st)])
    assert result.exit_code == 1
    assert "FAIL" in result.output.splitlines()[-1]


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp16"], "--precision fp16"),
    (["--backend", "nope"], "nope"),
])
def test_cli_errors(default_st, args, message):
    from textcam.cli import main

    result = CliRunner().invoke(main, ["selftest", str(default_st), *args])
    assert result.exit_code in (1, 2) and message in result.output


def test_cli_without_selftest_is_one_line(default_bundle_copy):
    from textcam.cli import main

    result = CliRunner().invoke(main, ["selftest", str(_without_selftest(default_bundle_copy))])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "re-run `textcam export`" in result.output


def test_runtime_module_never_imports_torch():
    code = ("import sys, textcam.runtime.selftest, textcam.cli.selftest_cmd; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
