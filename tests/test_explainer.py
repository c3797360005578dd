"""textcam.runtime.explainer (and the Explanation it returns): agreement with running the graph by hand,
input types, batches, threads, bad arguments, and the public API: explain / explain_batch, grouped
options, deprecated spellings, the context manager, ``textcam.TextcamError``."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from textcam.errors import TextcamError
from textcam.runtime import Explainer
from textcam.runtime.images import preprocess


def random_image(seed: int, size=(90, 70)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def explainer(small_bundle):
    return Explainer(small_bundle, batch_size=4)


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


def test_center_crop_maps_back_to_the_crop_box(make_bundle, small_bundle, tmp_path):
    copy = make_bundle(small_bundle, copy=tmp_path / "crop.textcam")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["input"]["resize"] = "center_crop"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = Explainer(copy).explain(random_image(5, (128, 64)))
    assert result.heatmap.shape == (64, 128)
    assert result.heatmap[:, :30].max() == 0 and result.heatmap[:, 98:].max() == 0  # outside the box
    assert result.heatmap[:, 33:95].max() > 0


def test_bad_arguments(explainer):
    with pytest.raises(TextcamError, match="class_index 5 out of range"):
        explainer.explain(random_image(0), class_index=5)
    with pytest.raises(TextcamError, match=r"float batch of shape \(2, 3, 32, 32\)"):
        explainer.explain_batch(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(TextcamError, match="uint8"):
        explainer.explain(np.zeros((10, 10, 3), np.float64))
    with pytest.raises(TextcamError, match="batch_size"):
        Explainer(explainer.bundle, batch_size=0)


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


def _session_config(explainer, key: str) -> str | None:
    try:
        return explainer.runner.session.get_session_options().get_session_config_entry(key)
    except RuntimeError:  # ONNX Runtime's answer for a key never set
        return None


def test_without_prepacked_weights_the_answers_are_the_same(small_bundle):
    """prepack_weights=False: ONNX Runtime keeps one copy of the weights; same answers, same checks."""
    with Explainer(small_bundle) as packed, Explainer(small_bundle, backend_options={"prepack_weights": False}) as one:
        assert _session_config(one, "session.disable_prepacking") == "1"
        assert _session_config(packed, "session.disable_prepacking") is None
        for seed in range(3):
            a, b = packed.explain(random_image(seed)), one.explain(random_image(seed))
            assert a.class_index == b.class_index
            np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-5)
        assert one.selftest().passed
    with pytest.raises(TextcamError, match="prepack_weights='no': expected True or False"):
        Explainer(small_bundle, backend_options={"prepack_weights": "no"})


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


def test_textcam_error_is_exported_at_the_top():
    import textcam

    assert textcam.TextcamError is TextcamError
