"""The torch-free runtime: Explainer, Explanation, preprocessing, bad inputs, threads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from textcam.errors import TextcamError
from textcam.runtime import Explainer
from textcam.runtime.bundle import Bundle
from textcam.runtime.images import load_image, preprocess


def random_image(seed: int, size=(90, 70)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def explainer(small_bundle):
    return Explainer(small_bundle, batch_size=4)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i in range(5):
        Image.fromarray(random_image(i, (80 + 10 * i, 60))).save(folder / f"img{i}.png")
    return folder


def test_matches_direct_onnxruntime_call(small_bundle, explainer):
    """Preprocessing + decoding agree with running the graph by hand on the same pixels."""
    image = random_image(1)
    result = explainer.explain(image, class_index=2)
    tensor, _ = preprocess(Image.fromarray(image), explainer.bundle.input)
    # independent preprocessing: PIL resize, then numpy normalization from the manifest
    resized = np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR), np.float32) / 255
    manual = ((resized - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_allclose(tensor[None], manual, atol=1e-5)
    session = ort.InferenceSession(str(Path(small_bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, chosen, cam = session.run(["logits", "class_index", "cam"], {"image": manual, "target_class": [2]})
    assert result.class_index == int(chosen[0]) == 2
    np.testing.assert_allclose(result.logits, logits[0], rtol=1e-4, atol=1e-5)
    probabilities = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    assert result.score == pytest.approx(float(probabilities[2]), rel=1e-5)
    assert result.heatmap.shape == (70, 90)  # original resolution
    assert result.heatmap.dtype == np.float32
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    # mapped back: shrinking the original-resolution map recovers the graph's map closely
    back = np.asarray(Image.fromarray(result.heatmap).resize((64, 64), Image.Resampling.BILINEAR))
    assert np.abs(back - cam[0]).mean() < 0.05


def test_input_types_agree(explainer, tmp_path):
    image = random_image(2)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    from_array = explainer.explain(image)
    from_pil = explainer.explain(Image.fromarray(image))
    from_path = explainer.explain(path)
    from_str = explainer.explain(str(path))
    for other in (from_pil, from_path, from_str):
        assert other.class_index == from_array.class_index
        np.testing.assert_allclose(other.heatmap, from_array.heatmap, atol=1e-6)
    tensor, _ = preprocess(Image.fromarray(image), explainer.bundle.input)
    [from_batch] = explainer.explain_batch(tensor[None])
    np.testing.assert_allclose(from_batch.logits, from_array.logits, rtol=1e-5, atol=1e-6)
    assert from_batch.heatmap.shape == (64, 64)
    assert from_path.source == str(path) and from_array.source is None


def test_batches_split_and_class_lists(explainer):
    images = [random_image(i) for i in range(10)]  # batch_size=4 -> 3 graph calls
    together = explainer.explain_batch(images, class_index=list(range(5)) * 2)
    assert [r.class_index for r in together] == list(range(5)) * 2
    alone = [explainer.explain(img, class_index=i % 5) for i, img in enumerate(images)]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-5)
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-5)


def test_shared_by_eight_threads(explainer):
    images = [random_image(100 + i) for i in range(6)]
    serial = [explainer.explain(img) for img in images]

    def work(seed):
        order = np.random.default_rng(seed).permutation(len(images))
        return [(int(i), explainer.explain(images[i])) for i in order]

    with ThreadPoolExecutor(max_workers=8) as pool:
        for results in pool.map(work, range(8)):
            for i, result in results:
                assert result.class_index == serial[i].class_index
                np.testing.assert_array_equal(result.heatmap, serial[i].heatmap)
                np.testing.assert_array_equal(result.logits, serial[i].logits)


def test_to_dict_is_json_and_overlay_is_an_image(explainer):
    image = random_image(3)
    result = explainer.explain(image)
    data = json.loads(json.dumps(result.to_dict(include_heatmap=True)))
    assert data["label"] == explainer.classes[data["class_index"]]
    assert np.asarray(data["heatmap"]).shape == (70, 90)
    overlay = result.overlay(Image.fromarray(image), alpha=0.4)
    assert overlay.size == (90, 70) and overlay.mode == "RGB"
    assert not np.array_equal(np.asarray(overlay), image)  # something was drawn
    assert np.array_equal(np.asarray(result.overlay(image, alpha=0.0)), image)


@pytest.mark.parametrize(
    "mode",
    ["L", "RGBA", "P", "I;16", "1", "CMYK", "LA"],
)
def test_unusual_image_modes_are_converted(explainer, tmp_path, mode):
    base = Image.fromarray(random_image(4))
    sixteen_bit = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    image = sixteen_bit if mode == "I;16" else base.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    result = explainer.explain(path)
    assert result.heatmap.shape == (70, 90)


def test_tiny_image_works(explainer, tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "one.png")
    assert explainer.explain(tmp_path / "one.png").heatmap.shape == (1, 1)


def test_center_crop_maps_back_to_the_crop_box(small_bundle, tmp_path):
    copy = tmp_path / "crop.textcam"
    shutil.copytree(small_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["input"]["resize"] = "center_crop"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = Explainer(copy).explain(random_image(5, (128, 64)))
    assert result.heatmap.shape == (64, 128)
    assert result.heatmap[:, :30].max() == 0 and result.heatmap[:, 98:].max() == 0  # outside the box
    assert result.heatmap[:, 33:95].max() > 0


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"not an image at all", "not an image")],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(TextcamError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(random_image(6, (300, 300))).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(TextcamError, match=r"cut\.jpg: cannot decode"):
        load_image(path)


def test_huge_image_refused_without_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (20000, 20000)).save(path, optimize=False)  # compresses to a small file
    with pytest.raises(TextcamError, match=r"huge.png: .*limit"):
        load_image(path)


def test_bad_arguments(explainer):
    with pytest.raises(TextcamError, match="class_index 5 out of range"):
        explainer.explain(random_image(0), class_index=5)
    with pytest.raises(TextcamError, match=r"float batch of shape \(2, 3, 32, 32\)"):
        explainer.explain_batch(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(TextcamError, match="uint8"):
        explainer.explain(np.zeros((10, 10, 3), np.float64))
    with pytest.raises(TextcamError, match="batch_size"):
        Explainer(explainer.bundle, batch_size=0)


def test_bundle_problems(small_bundle, tmp_path):
    broken = tmp_path / "b.textcam"
    shutil.copytree(small_bundle, broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(TextcamError, match=r"model\.onnx: the graph named in the manifest is missing"):
        Bundle.open(broken)
    shutil.copy(Path(small_bundle) / "model.onnx", broken / "model.onnx")
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(TextcamError, match="truncated"):
        Bundle.open(broken)
    shutil.copy(Path(small_bundle) / "model.onnx", broken / "model.onnx")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["format_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TextcamError, match="newer than this textcam supports"):
        Bundle.open(broken)
    with pytest.raises(TextcamError, match=r"not a directory|missing"):
        Bundle.open(tmp_path / "nowhere")


TORCH_BLOCKED = (
    "import sys\n"
    "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
    "sys.modules['torchvision'] = None\n"
    "{body}\n"
    "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
)


def test_runtime_and_cli_work_without_torch(small_bundle, image_dir, tmp_path):
    body = (
        "from textcam.runtime import Explainer\n"
        f"r = Explainer({str(small_bundle)!r}).explain({str(image_dir / 'img0.png')!r})\n"
        "print('API', r.label, r.heatmap.shape)\n"
        "from textcam.cli import main\n"
        f"sys.argv = ['textcam', 'explain', {str(small_bundle)!r}, {str(image_dir)!r}, '--json', "
        f"'--out', {str(tmp_path / 'ov')!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", TORCH_BLOCKED.format(body=body)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "API" in run.stdout
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 5 and all(r["label"] in ("circle", "square", "triangle", "star", "cross") for r in records)
    assert len(list((tmp_path / "ov").glob("*.cam.png"))) == 5


def test_cli_explain_reports_bad_files_and_continues(small_bundle, image_dir, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    run = subprocess.run(
        [sys.executable, "-m", "textcam", "explain", str(small_bundle), str(image_dir / "img1.png"),
         str(tmp_path / "bad.jpg"), str(image_dir / "img2.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1
    assert len(run.stdout.strip().splitlines()) == 2
    assert "bad.jpg" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--class-index", "7"], "error: --class-index 7 out of range"),
        (["{empty}"], "holds no images"),
    ],
)
def test_cli_explain_bad_arguments(small_bundle, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    image = tmp_path / "x.png"
    Image.fromarray(random_image(0)).save(image)
    extra = [] if any("empty" in a for a in args) else [str(image)]
    run = subprocess.run(
        [sys.executable, "-m", "textcam", "explain", str(small_bundle), *args, *extra],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr


def test_cli_info(small_bundle):
    run = subprocess.run([sys.executable, "-m", "textcam", "info", str(small_bundle)], capture_output=True, text=True)
    assert run.returncode == 0
    assert "layer4" in run.stdout and "gradcam" in run.stdout and "circle" in run.stdout


# --- the public API: one object, explain / explain_batch, options grouped, deprecations ---------------------


def test_explain_returns_one_explain_batch_a_list(explainer):
    from textcam.runtime import Explanation

    image = random_image(3)
    one = explainer.explain(image)
    assert isinstance(one, Explanation)
    several = explainer.explain_batch([image, random_image(4)])
    assert isinstance(several, list) and len(several) == 2 and all(isinstance(r, Explanation) for r in several)
    np.testing.assert_allclose(several[0].heatmap, one.heatmap, atol=1e-5)  # batch size may change kernels
    assert explainer.explain_batch([]) == []
    tensor, _ = preprocess(Image.fromarray(image), explainer.bundle.input)
    [from_batch] = explainer.explain_batch(tensor[None])
    assert from_batch.class_index == one.class_index
    with pytest.raises(TextcamError, match="for one image use explain"):
        explainer.explain_batch(image)


def test_old_spellings_warn_and_still_work(small_bundle, explainer):
    image = random_image(5)
    with pytest.warns(DeprecationWarning, match="explain_batch"):
        results = explainer.explain([image])
    assert isinstance(results, list) and len(results) == 1
    tensor, _ = preprocess(Image.fromarray(image), explainer.bundle.input)
    with pytest.warns(DeprecationWarning, match="explain_batch"):
        assert len(explainer.explain(tensor[None])) == 1
    with pytest.warns(DeprecationWarning) as caught:
        old = Explainer(small_bundle, intra_op_threads=1, allow_spinning=False)
    assert sorted(str(w.message) for w in caught) == [
        "Explainer(allow_spinning=...) is deprecated: pass backend_options={'allow_spinning': False}",
        "Explainer(intra_op_threads=...) is deprecated: pass backend_options={'intra_op_threads': 1}",
    ]
    assert old.explain(image).class_index == results[0].class_index
    with pytest.warns(DeprecationWarning, match=r"concepts=\{'top_k': 3\}"):
        assert Explainer(small_bundle, top_k=3).concept_settings.top_k == 3
    with pytest.warns(DeprecationWarning, match="backend_options"), \
            pytest.raises(TextcamError, match="apply to the onnxruntime backends"):
        _old_threads_on_other_backend()  # (tensorrt need not be installed: the check comes first)
    with pytest.raises(TypeError, match="unexpected keyword argument 'top_kk'"):
        Explainer(small_bundle, top_kk=3)


def _old_threads_on_other_backend():
    from textcam.runtime.explainer import _backend_options

    _backend_options("tensorrt", None, {"intra_op_threads": 1})


def test_backend_options_and_concepts_are_grouped(small_bundle):
    from textcam.runtime.concepts import ConceptSettings

    explainer = Explainer(small_bundle, backend_options={"intra_op_threads": 1, "allow_spinning": False},
                          concepts={"top_k": 2, "steps": None})
    assert explainer.concept_settings.top_k == 2 and explainer.concept_settings.steps == ConceptSettings.steps
    exact = ConceptSettings(top_k=3, candidates=8)
    assert Explainer(small_bundle, concepts=exact).concept_settings is exact
    with pytest.raises(TextcamError, match="has no option 'threads'"):
        Explainer(small_bundle, backend_options={"threads": 2})
    with pytest.raises(TextcamError, match="concepts: no setting 'topk'"):
        Explainer(small_bundle, concepts={"topk": 2})
    with pytest.raises(TextcamError, match="top_k=3: expected at most candidates=2"):
        Explainer(small_bundle, concepts=ConceptSettings(top_k=3, candidates=2))
    with pytest.warns(DeprecationWarning), pytest.raises(TextcamError, match="once, in concepts="):
        Explainer(small_bundle, concepts={"top_k": 2}, l1=0.1)


def test_context_manager_closes_the_runner(small_bundle):
    from textcam.runtime.backends import GraphRunner

    closed = []
    with Explainer(small_bundle) as explainer:
        assert isinstance(explainer.runner, GraphRunner)
        explainer.runner.close = lambda: closed.append(True)
        explainer.explain(random_image(0))
    assert closed == [True]
    GraphRunner.close(explainer.runner)  # the base class's close: a no-op for runners that hold nothing


def test_check_class_index(explainer):
    np.testing.assert_array_equal(explainer.check_class_index(None, 3), [-1, -1, -1])
    np.testing.assert_array_equal(explainer.check_class_index(2, 2), [2, 2])
    np.testing.assert_array_equal(explainer.check_class_index([0, -1], 2), [0, -1])
    assert explainer.check_class_index(1, 1).dtype == np.int64
    with pytest.raises(TextcamError, match=r"class_index 5 out of range: the model has 5 classes \(0\.\.4"):
        explainer.check_class_index(5, 1)
    with pytest.raises(TextcamError, match="class_index -2 out of range"):
        explainer.check_class_index([0, -2], 2)
    with pytest.raises(TextcamError, match="class_index: 2 values for 3 images"):
        explainer.check_class_index([0, 1], 3)
    with pytest.raises(TextcamError, match="expected an integer"):
        explainer.check_class_index("cat", 1)


def test_bundle_with_graph(small_bundle, tmp_path):
    from textcam.runtime.backends import OnnxRuntimeRunner

    bundle = Bundle.open(small_bundle)
    copy = tmp_path / "copy.onnx"
    shutil.copy(bundle.model_path, copy)
    other = bundle.with_graph(copy)
    assert other.model_path == copy and bundle.model_path == Path(small_bundle) / "model.onnx"
    assert other.classes == bundle.classes and other.path == bundle.path
    runner = OnnxRuntimeRunner(other)
    outputs = runner.run(np.zeros((1, 3, 64, 64), np.float32), np.array([-1]))
    assert outputs["cam"].shape == (1, 64, 64)
    assert bundle.with_graph(bundle.info.model.graph).model_path == bundle.model_path  # a FileRef: checked
    with pytest.raises(TextcamError, match=r"graph='.*missing\.onnx': not a file"):
        bundle.with_graph(tmp_path / "missing.onnx")
    with pytest.raises(TextcamError, match="no fused ranking graph"):
        bundle.with_fused_graph()


def test_textcam_error_is_exported_at_the_top():
    import textcam

    assert textcam.TextcamError is TextcamError


def test_cli_explain_decodes_each_image_once_and_overlays_upright(small_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import textcam.runtime.explainer as explainer_module
    from textcam.cli import main

    stored = random_image(2, (60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 40 wide, 60 high
    paths = [tmp_path / "portrait.jpg", tmp_path / "plain.png"]
    Image.fromarray(stored).save(paths[0], exif=exif)
    Image.fromarray(random_image(3)).save(paths[1])
    calls = []
    real = explainer_module.load_image
    monkeypatch.setattr(explainer_module, "load_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(small_bundle), *map(str, paths), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(map(Path, calls)) == sorted(paths)  # once per file: the overlay reuses the decoded image
    with Image.open(out / "portrait.cam.png") as overlay:
        assert overlay.size == (40, 60)
    with Image.open(out / "plain.cam.png") as overlay:
        assert overlay.size == (90, 70)


def test_cli_says_flags_where_the_library_says_parameters():
    from textcam.cli import flag_message

    assert flag_message("input_size=3x5: expected H or HxW", "export") == "--input-size 3x5: expected H or HxW"
    assert flag_message("target_layer='fc': its output (2, 5) at input_size=64x64 has no grid", "export") == \
        "--layer 'fc': its output (2, 5) at --input-size 64x64 has no grid"
    assert flag_message("class_names: 2 names given", "export") == "--class-names: 2 names given"
    assert flag_message("method=cam needs a head; use method=gradcam", "export") == \
        "--method cam needs a head; use --method gradcam"
    assert flag_message("m=0: expected a positive number", "semantics") == "-m 0: expected a positive number"
    assert flag_message("vocab x.txt: file not found", "semantics") == "--vocab x.txt: file not found"
    assert flag_message("class_index 7 out of range", "explain") == "--class-index 7 out of range"
    # other commands' parameters, and names inside words or values, stay as they are
    assert flag_message("input_size=3x5: bad", "explain") == "input_size=3x5: bad"
    assert flag_message("/data/my_input_size=3/x.png: no such file", "export") == \
        "/data/my_input_size=3/x.png: no such file"
    assert flag_message("meander: nothing", "export") == "meander: nothing"
