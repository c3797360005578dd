"""The C++ core (``textcam_native``) against the numpy path: every output, every step, every error.

The reference is the Python runtime (numpy + Pillow + onnxruntime's Python API), run on the same
fresh inputs in the same process. ``scripts/test.sh`` builds and installs the core and sets
``TEXTCAM_REQUIRE_NATIVE=1``, so there a missing core fails these tests instead of skipping them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from semantics_helpers import make_store

from textcam.errors import TextcamError
from textcam.runtime import concepts, heatmap, images
from textcam.runtime.bundle import Bundle
from textcam.runtime.explainer import Explainer
from textcam.runtime.native import native_module, onnxruntime_library
from textcam.runtime.selftest import selftest_images
from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

native = native_module(force=True)
if native is None:
    if os.environ.get("TEXTCAM_REQUIRE_NATIVE") == "1":
        raise RuntimeError("textcam_native is not installed but TEXTCAM_REQUIRE_NATIVE=1: pip install ./native")
    pytest.skip("textcam_native is not installed (pip install ./native)", allow_module_level=True)

SPURIOUS_BUNDLE = DEFAULT_BUNDLE.parent / "spurious.textcam"
LIBRARY = onnxruntime_library()


def _scenes(count: int, seed: int) -> list[np.ndarray]:
    """Smooth coloured scenes of varied sizes and aspect ratios (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(9, 260, size=2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        channels = [np.sin(rng.uniform(1, 9) * xx + rng.uniform(1, 9) * yy + rng.uniform(0, 6)) for _ in range(3)]
        base = (np.stack(channels, axis=-1) * 100 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255)
        # a solid shape, as in the shapes world
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, max(4, min(h, w) // 2))
        base[(np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
        result.append(base.astype(np.uint8))
    return result


def _assert_same(ours, theirs, heat_tol=1e-5):
    assert ours.class_index == theirs.class_index
    assert ours.label == theirs.label
    assert ours.score == pytest.approx(theirs.score, abs=1e-6)
    np.testing.assert_allclose(ours.logits, theirs.logits, rtol=0, atol=1e-5)
    assert ours.heatmap.shape == theirs.heatmap.shape
    np.testing.assert_allclose(ours.heatmap, theirs.heatmap, rtol=0, atol=heat_tol)
    assert [c.phrase for c in ours.concepts] == [c.phrase for c in theirs.concepts]
    np.testing.assert_allclose([c.score for c in ours.concepts], [c.score for c in theirs.concepts], atol=1e-5)
    np.testing.assert_allclose([c.weight for c in ours.concepts], [c.weight for c in theirs.concepts], atol=1e-5)
    assert ours.source == theirs.source


@pytest.fixture(scope="module")
def pair():
    with Explainer(DEFAULT_BUNDLE, native=True) as core, Explainer(DEFAULT_BUNDLE, native=False) as numpy_path:
        assert core.native and not numpy_path.native
        yield core, numpy_path


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_files_match_python(pair, tmp_path, suffix):
    core, numpy_path = pair
    paths = []
    for index, scene in enumerate(_scenes(24, seed=1 if suffix == ".png" else 2)):
        path = tmp_path / f"scene{index}{suffix}"
        Image.fromarray(scene).save(path, quality=90)
        paths.append(path)
    ours = dict(core.explain_files(paths))
    theirs = dict(numpy_path.explain_files(paths))
    assert list(ours) == list(theirs) == paths
    labels = set()
    for path in paths:
        _assert_same(ours[path], theirs[path])
        labels.add(ours[path].label)
    assert len(labels) > 1  # the scenes exercise more than one class


def test_arrays_pil_and_batches_match_python(pair):
    core, numpy_path = pair
    scenes = _scenes(10, seed=3)
    gray = scenes[0].mean(axis=2).astype(np.uint8)
    rgba = np.dstack([scenes[1], np.random.default_rng(0).integers(0, 256, scenes[1].shape[:2], dtype=np.uint8)])
    inputs = [*scenes[2:], gray, rgba, Image.fromarray(scenes[0]).convert("P")]
    for ours, theirs in zip(core.explain_batch(inputs, class_index=-1), numpy_path.explain_batch(inputs), strict=True):
        _assert_same(ours, theirs)
    for cls in range(len(core.classes)):
        _assert_same(core.explain(scenes[0], class_index=cls), numpy_path.explain(scenes[0], class_index=cls))
    batch = np.stack([images.preprocess(Image.fromarray(s), Bundle.open(DEFAULT_BUNDLE).input)[0] for s in scenes])
    for ours, theirs in zip(core.explain_batch(batch), numpy_path.explain_batch(batch), strict=True):
        _assert_same(ours, theirs)


def test_groups_match_python(pair):
    core, numpy_path = pair
    for scene in _scenes(6, seed=4):
        ours, theirs = core.explain(scene, groups=True), numpy_path.explain(scene, groups=True)
        _assert_same(ours, theirs)
        assert [g.phrase for g in ours.groups] == [g.phrase for g in theirs.groups]
        for a, b in zip(ours.groups, theirs.groups, strict=True):
            np.testing.assert_array_equal(a.channels, b.channels)
            assert a.share == pytest.approx(b.share, abs=1e-9)
            np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-5)
            np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)


@pytest.mark.parametrize("settings", [
    {"top_k": 3, "candidates": 8},
    {"beta": "weights", "center": False},
    {"candidates": 4096, "top_k": 10, "l1": 0.1, "l2": 0.4, "steps": 300},
])
def test_concept_settings_match_python(settings):
    scenes = _scenes(6, seed=5)
    with Explainer(DEFAULT_BUNDLE, native=True, concepts=settings) as core, \
            Explainer(DEFAULT_BUNDLE, native=False, concepts=settings) as numpy_path:
        assert core.fused == numpy_path.fused
        for ours, theirs in zip(core.explain_batch(scenes), numpy_path.explain_batch(scenes), strict=True):
            _assert_same(ours, theirs)


def test_eight_threads_agree_with_serial(pair):
    core, _ = pair
    scenes = _scenes(32, seed=6)
    serial = [core.explain(scene) for scene in scenes]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(core.explain, scenes))
    for a, b in zip(threaded, serial, strict=True):
        assert a.class_index == b.class_index
        assert [c.phrase for c in a.concepts] == [c.phrase for c in b.concepts]
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
        np.testing.assert_array_equal(a.logits, b.logits)


@pytest.mark.parametrize("bundle", [DEFAULT_BUNDLE, SPURIOUS_BUNDLE], ids=["color", "spurious"])
def test_selftest_passes_through_the_core(bundle):
    with Explainer(bundle, native=True) as core:
        report = core.selftest()
    assert report.passed, report.table()
    assert {row.group for row in report.rows} == {"preprocess", "graph", "end-to-end"}
    assert {row.name for row in report.rows} >= {"input", "logits", "cam", "concept_ids", "concept_scores"}


def test_selftest_through_the_core_fails_a_row_over_its_tolerance(default_bundle_copy):
    """The gate is real: with the cam tolerance below any possible difference the report fails on that row."""
    manifest = json.loads((default_bundle_copy / "manifest.json").read_text())
    manifest["selftest"]["tolerances"]["cam"] = -1.0
    (default_bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with Explainer(default_bundle_copy, native=True) as core:
        report = core.selftest()
    assert not report.passed
    assert [(row.group, row.name) for row in report.rows if not row.passed] == [("graph", "cam")]


def test_store_of_another_model_is_refused_alike(default_bundle_copy):
    import hashlib

    other = (SPURIOUS_BUNDLE / "model.onnx").read_bytes()
    (default_bundle_copy / "model.onnx").write_bytes(other)
    manifest = json.loads((default_bundle_copy / "manifest.json").read_text())
    manifest["model"]["sha256"] = hashlib.sha256(other).hexdigest()
    manifest["model"]["size_bytes"] = len(other)
    (default_bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    theirs = _python_error(lambda: Explainer(default_bundle_copy, native=False))
    assert "computed for another model" in theirs
    assert _python_error(lambda: native.Explainer(str(default_bundle_copy), onnxruntime_library=LIBRARY)) == theirs


# ---- step by step --------------------------------------------------------------------------------

@pytest.mark.parametrize("resize", ["stretch", "center_crop"])
def test_preprocess_matches_pillow(resize):
    spec = {"height": 61, "width": 47, "mean": [0.48, 0.45, 0.40], "std": [0.26, 0.25, 0.27], "resize": resize,
            "scale": 1 / 255}
    section = Bundle.open(DEFAULT_BUNDLE).input.__class__(
        height=61, width=47, mean=tuple(spec["mean"]), std=tuple(spec["std"]), resize=resize)
    worst = 0.0
    for scene in [*_scenes(40, seed=7), *selftest_images(8), np.zeros((1, 1, 3), np.uint8)]:
        ours, box = native.preprocess(scene, spec)
        theirs, geometry = images.preprocess(Image.fromarray(scene), section)
        assert box == pytest.approx(geometry.box, abs=0)
        worst = max(worst, float(np.abs(ours - theirs).max()))
    assert worst <= 1 / (255 * 0.25) + 1e-5  # the stated tolerance: one grey level


def _encoded(scene: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(scene).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("variant", [
    ("JPEG", "RGB", {"quality": 92}), ("JPEG", "RGB", {"quality": 75, "subsampling": 0}),
    ("JPEG", "RGB", {"progressive": True}), ("JPEG", "L", {}),
    ("PNG", "RGB", {}), ("PNG", "RGBA", {}), ("PNG", "L", {}), ("PNG", "LA", {}), ("PNG", "P", {}),
    ("PNG", "I;16", {}), ("PNG", "1", {}),
], ids=lambda v: f"{v[0]}-{v[1]}-{'-'.join(map(str, v[2].values()))}")
def test_decoding_matches_pillow(tmp_path, variant):
    fmt, mode, options = variant
    for index, scene in enumerate(_scenes(4, seed=8)):
        image = Image.fromarray(scene)
        if mode == "RGBA":
            image.putalpha(Image.fromarray((scene[..., 0] // 2 + 60).astype(np.uint8)))
        elif mode == "LA":
            image = image.convert("L")
            image.putalpha(Image.fromarray(scene[..., 1]))
        elif mode == "I;16":
            image = Image.fromarray(scene[..., 0].astype(np.uint16) * 257)
        elif mode != "RGB":
            image = image.convert(mode)
        path = tmp_path / f"image{index}.{fmt.lower()}"
        image.save(path, fmt, **options)
        np.testing.assert_array_equal(native.load_image(str(path)), np.asarray(images.load_image(path)))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    scene = _scenes(1, seed=9)[0]
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    Image.fromarray(scene).save(path, exif=exif, quality=95)
    np.testing.assert_array_equal(native.load_image(str(path)), np.asarray(images.load_image(path)))


def test_map_back_matches_numpy():
    rng = np.random.default_rng(10)
    for _ in range(30):
        cam = rng.random((int(rng.integers(2, 70)), int(rng.integers(2, 70))), dtype=np.float32)
        width, height = (int(v) for v in rng.integers(1, 400, size=2))
        for policy in ("stretch", "center_crop"):
            section = Bundle.open(DEFAULT_BUNDLE).input.__class__(height=cam.shape[0], width=cam.shape[1],
                                                                  mean=(0, 0, 0), std=(1, 1, 1), resize=policy)
            geometry = images.Geometry(width, height, images.crop_box(width, height, section))
            ours = native.map_to_original(cam, width, height, geometry.box)
            np.testing.assert_allclose(ours, heatmap.map_to_original(cam, geometry), rtol=0, atol=2e-6)


@pytest.mark.parametrize("seed", range(6))
def test_selection_matches_numpy_on_random_stores(seed):
    rng = np.random.default_rng(100 + seed)
    store = make_store(channels=int(rng.integers(8, 700)), dim=int(rng.integers(8, 96)),
                       vocabulary=int(rng.integers(20, 800)), seed=seed, common=float(rng.uniform(0, 0.9)))
    S, T = store.channel_semantics, store.text_embeddings
    batch, channels = int(rng.integers(1, 9)), S.shape[0]
    weights = rng.standard_normal((batch, channels)).astype(np.float32)
    activation = np.maximum(rng.standard_normal((batch, channels)), 0).astype(np.float32)
    settings = concepts.ConceptSettings(
        beta=str(rng.choice(["contribution", "weights"])), candidates=int(rng.integers(5, 80)),
        top_k=int(rng.integers(1, 5)), center=bool(rng.integers(0, 2)))
    theirs = concepts.select_for_outputs({"channel_weights": weights, "channel_activation": activation}, S, T,
                                         settings)
    given = {k: getattr(settings, k) for k in ("beta", "top_k", "candidates", "l1", "l2", "steps", "center")}
    ids, scores, shares = native.select(weights, activation, S, T, given)
    np.testing.assert_array_equal(ids, theirs.ids)
    np.testing.assert_allclose(scores, theirs.scores, atol=1e-5)
    np.testing.assert_allclose(shares, theirs.weights, atol=1e-5)
    # a fused graph's candidates (here: the true top-N, shuffled) give the same answer
    q = concepts.aggregate(weights, activation, S, settings.beta)
    among, _ = concepts.rank(q, T, settings.candidates + 3)
    among = np.ascontiguousarray(rng.permuted(among, axis=1))
    fused_ids, _, _ = native.select(weights, activation, S, T, given, among)
    np.testing.assert_array_equal(fused_ids, theirs.ids)


def test_channel_groups_match_numpy():
    rng = np.random.default_rng(11)
    store = make_store(channels=96, dim=24, vocabulary=40, seed=3)
    S, T = store.channel_semantics, store.text_embeddings
    for _ in range(5):
        w = rng.standard_normal(96).astype(np.float32)
        a = np.abs(rng.standard_normal(96)).astype(np.float32)
        A = rng.standard_normal((96, 7, 5)).astype(np.float32)
        selected = [int(v) for v in rng.choice(40, 4, replace=False)]
        theirs, _rest = concepts.channel_groups(w, a, A, S, T, selected, 30)
        ours = native.channel_groups(w, a, A, S, T, selected, 30)
        assert [g[0] for g in ours] == [g.phrase_id for g in theirs]
        for (phrase_id, channels, share, saliency), group in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(channels, group.channels)
            assert share == pytest.approx(group.share, abs=1e-12)
            np.testing.assert_allclose(saliency, group.saliency, atol=1e-5)
            assert phrase_id == group.phrase_id


# ---- the bad-input battery: the same one-line errors ---------------------------------------------

def _python_error(call) -> str:
    with pytest.raises(TextcamError) as caught:
        call()
    return str(caught.value)


def _damage(bundle: Path, case: str) -> Path:
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if case == "no manifest":
        manifest_path.unlink()
    elif case == "not json":
        manifest_path.write_text("{not json")
    elif case == "nan":
        manifest_path.write_text(manifest_path.read_text().replace('"scale": 0.00392156862745098', '"scale": NaN'))
    elif case == "other format":
        manifest["format"] = "something-else"
    elif case == "newer":
        manifest["format_version"] = 99
    elif case == "missing key":
        del manifest["method"]
    elif case == "wrong type":
        manifest["input"]["height"] = "224"
    elif case == "float int":
        manifest["input"]["height"] = 64.0
    elif case == "unknown method":
        manifest["method"] = "scorecam"
    elif case == "duplicate classes":
        manifest["classes"][1] = manifest["classes"][0]
    elif case == "escape":
        manifest["model"]["file"] = "../model.onnx"
    elif case == "absolute":
        manifest["model"]["file"] = "/etc/passwd"
    elif case == "model missing":
        (bundle / "model.onnx").unlink()
    elif case == "model truncated":
        data = (bundle / "model.onnx").read_bytes()
        (bundle / "model.onnx").write_bytes(data[: len(data) // 2])
    elif case == "model changed":
        data = bytearray((bundle / "model.onnx").read_bytes())
        data[-1] ^= 1
        (bundle / "model.onnx").write_bytes(bytes(data))
    elif case == "model symlink out":
        outside = bundle.parent / "outside.onnx"
        shutil.copy(bundle / "model.onnx", outside)
        (bundle / "model.onnx").unlink()
        (bundle / "model.onnx").symlink_to(outside)
    elif case == "model fifo":
        (bundle / "model.onnx").unlink()
        os.mkfifo(bundle / "model.onnx")
    elif case == "bad sha":
        manifest["model"]["sha256"] = "xyz"
    elif case == "store changed":
        store = bundle / manifest["semantics"]["file"]
        data = bytearray(store.read_bytes())
        data[-3] ^= 1
        store.write_bytes(bytes(data))
    elif case == "deep nesting":
        manifest["producer"] = json.loads("[" * 40 + "]" * 40)
    elif case == "not a directory":
        shutil.rmtree(bundle)
        bundle.write_text("x")
    if case not in ("no manifest", "not json", "nan", "not a directory", "model missing", "model truncated",
                    "model changed", "model symlink out", "model fifo", "store changed"):
        manifest_path.write_text(json.dumps(manifest))
    return bundle


BUNDLE_CASES = ["no manifest", "not json", "nan", "other format", "newer", "missing key", "wrong type", "float int",
                "unknown method", "duplicate classes", "escape", "absolute", "model missing", "model truncated",
                "model changed", "model symlink out", "model fifo", "bad sha", "store changed", "deep nesting",
                "not a directory"]


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_bundle_errors_match_python(default_bundle_copy, case):
    bundle = _damage(default_bundle_copy, case)
    theirs = _python_error(lambda: Explainer(bundle, native=False))
    ours = _python_error(lambda: native.Explainer(str(bundle), onnxruntime_library=LIBRARY))
    assert ours == theirs


IMAGE_CASES = ["missing", "empty", "directory", "text", "truncated jpeg", "truncated png", "too large", "zero png",
               "corrupt png"]


def _bad_image(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"bad.{'png' if 'png' in case else 'jpg'}"
    scene = _scenes(1, seed=12)[0]
    if case == "missing":
        return tmp_path / "nowhere.jpg"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    elif case == "text":
        path.write_text("hello, not an image")
    elif case == "truncated jpeg":
        path.write_bytes(_encoded(scene, "JPEG")[:400])
    elif case == "truncated png":
        path.write_bytes(_encoded(scene, "PNG")[:200])
    elif case == "too large":
        path.write_bytes(_encoded(np.zeros((300, 400, 3), np.uint8), "PNG"))
    elif case == "zero png":
        data = bytearray(_encoded(scene, "PNG"))
        data[16:24] = bytes(8)  # width = height = 0 in IHDR
        path.write_bytes(bytes(data))
    elif case == "corrupt png":
        data = bytearray(_encoded(scene, "PNG"))
        data[60:80] = bytes(20)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_errors_match_python(tmp_path, case):
    path = _bad_image(tmp_path, case)
    limit = 100_000 if case == "too large" else images.DEFAULT_MAX_PIXELS
    theirs = _python_error(lambda: images.load_image(path, limit))
    ours = _python_error(lambda: native.load_image(str(path), limit))
    assert ours == theirs
    with Explainer(DEFAULT_BUNDLE, native=True, max_pixels=limit) as core, \
            Explainer(DEFAULT_BUNDLE, native=False, max_pixels=limit) as numpy_path:
        assert _python_error(lambda: core.explain(path)) == _python_error(lambda: numpy_path.explain(path))
        (_, ours_item), = core.explain_files([path])
        (_, theirs_item), = numpy_path.explain_files([path])
        assert str(ours_item) == str(theirs_item)


def test_argument_errors_match_python(pair):
    core, numpy_path = pair
    for call in (lambda e: e.explain(_scenes(1, 0)[0], class_index=99),
                 lambda e: e.explain_batch(_scenes(2, 0), class_index=[0, 1, 2]),
                 lambda e: e.explain_batch(np.full((1, 3, 64, 64), np.nan, np.float32)),
                 lambda e: e.explain(np.zeros((0, 5, 3), np.uint8)),
                 lambda e: e.explain(np.zeros((5, 5, 3), np.float32))):
        assert _python_error(lambda c=call: c(core)) == _python_error(lambda c=call: c(numpy_path))
    for settings in ({"top_k": 0}, {"beta": "x"}, {"l1": -1.0}, {"top_k": 9, "candidates": 4}):
        theirs = _python_error(lambda s=settings: Explainer(DEFAULT_BUNDLE, native=False, concepts=s))
        ours = _python_error(lambda s=settings: native.Explainer(str(DEFAULT_BUNDLE), onnxruntime_library=LIBRARY,
                                                                   concepts=s))
        assert ours == theirs


def test_missing_onnxruntime_library_is_named(tmp_path):
    """The core loads libonnxruntime once per process: an explicit path that does not exist is only
    reported when nothing was loaded yet, so this runs in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import textcam_native, textcam.errors\n"
            "try:\n"
            f"    textcam_native.Explainer({str(DEFAULT_BUNDLE)!r}, onnxruntime_library={str(tmp_path / 'no.so')!r})\n"
            "except textcam.errors.TextcamError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "no libonnxruntime could be loaded" in out.stdout and "no.so" in out.stdout, out.stdout + out.stderr
    assert "1.21" in out.stdout


def test_environment_switch_and_native_argument(monkeypatch):
    monkeypatch.delenv("TEXTCAM_NATIVE", raising=False)
    with Explainer(DEFAULT_BUNDLE) as default, Explainer(DEFAULT_BUNDLE, native=False) as numpy_path:
        assert default.native and not numpy_path.native
    monkeypatch.setenv("TEXTCAM_NATIVE", "0")
    with Explainer(DEFAULT_BUNDLE) as switched_off, Explainer(DEFAULT_BUNDLE, native=True) as asked:
        assert not switched_off.native and asked.native
    assert _python_error(lambda: Explainer(DEFAULT_BUNDLE, native="yes")).startswith("native='yes'")


def test_info_says_which_path_runs(monkeypatch):
    from click.testing import CliRunner

    from textcam.cli import main

    monkeypatch.delenv("TEXTCAM_NATIVE", raising=False)
    shown = CliRunner().invoke(main, ["info", "default"]).output.splitlines()[-1]
    assert shown.startswith("runtime     native core libtextcam")
    monkeypatch.setenv("TEXTCAM_NATIVE", "0")
    shown = CliRunner().invoke(main, ["info", "default"]).output.splitlines()[-1]
    assert "TEXTCAM_NATIVE=0 switched it off" in shown


def test_native_path_runs_without_torch(tmp_path):
    """The core needs no torch, and runs without importing onnxruntime's Python module (only its library)."""
    import subprocess
    import sys

    image = tmp_path / "scene.png"
    Image.fromarray(_scenes(1, seed=13)[0]).save(image)
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision'):\n"
        "    sys.modules[name] = None\n"  # any import of them now raises ImportError
        "from textcam.runtime import Explainer\n"
        f"with Explainer({str(DEFAULT_BUNDLE)!r}, native=True) as e:\n"
        f"    r = e.explain({str(image)!r})\n"
        "    assert e.native and e.selftest().passed\n"
        "print('OK', r.label, [c.phrase for c in r.concepts][:1])\n"
        "assert not [m for m in ('torch', 'onnxruntime') if sys.modules.get(m) is not None], 'imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TEXTCAM_NATIVE"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("OK ")


def test_unpacked_weights_run_on_the_numpy_path():
    """The core's sessions always pre-pack: asking for one copy of the weights takes the Python path,
    and native=True says why it cannot."""
    with Explainer(DEFAULT_BUNDLE, backend_options={"prepack_weights": False}) as explainer:
        assert not explainer.native
    with pytest.raises(TextcamError, match="native=True: the native core cannot run without pre-packed weights"):
        Explainer(DEFAULT_BUNDLE, native=True, backend_options={"prepack_weights": False})
