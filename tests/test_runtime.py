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
    [from_batch] = explainer.explain(tensor[None])
    np.testing.assert_allclose(from_batch.logits, from_array.logits, rtol=1e-5, atol=1e-6)
    assert from_batch.heatmap.shape == (64, 64)
    assert from_path.source == str(path) and from_array.source is None


def test_batches_split_and_class_lists(explainer):
    images = [random_image(i) for i in range(10)]  # batch_size=4 -> 3 graph calls
    together = explainer.explain(images, class_index=list(range(5)) * 2)
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
        explainer.explain(np.zeros((2, 3, 32, 32), np.float32))
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
        (["--class-index", "7"], "class_index 7 out of range"),
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
