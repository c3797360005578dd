"""The committed shapes-world artifacts: complete, small, and as good as promised, measured on
fresh held-out scenes (seeds no build step uses)."""

import numpy as np
import pytest

from textcam.runtime import Bundle, Explainer
from textcam.shapes_world import BACKGROUNDS, SHAPES, ShapesWorld, artifacts

FRESH_SEED = 424_242


def fresh_scenes(count: int, **fixed):
    world = ShapesWorld(64, seed=FRESH_SEED)
    return [world.scene(i, **fixed) for i in range(count)]


def test_committed_artifacts_are_complete_and_under_20_mb():
    bundles = [Bundle.open(artifacts.DEFAULT_BUNDLE), Bundle.open(artifacts.SPURIOUS_BUNDLE)]
    expected = [artifacts.CLIP_CHECKPOINT, artifacts.REPORT, artifacts.classifier_weights("color"),
                artifacts.classifier_weights("spurious")]
    expected += [b.path / name for b in bundles for name in b.info.files()]
    assert [p for p in expected if not p.is_file()] == []
    assert all(b.semantics_path and b.fused_graph_path and b.selftest_path for b in bundles)  # checked files
    # nothing else: no file that no manifest names (an update that did not tidy up)
    for bundle in bundles:
        assert {p.name for p in bundle.path.iterdir()} == {"manifest.json", *bundle.info.files()}
    total = sum(p.stat().st_size for p in artifacts.ARTIFACTS.rglob("*") if p.is_file())
    assert total < 20 * 2**20


def test_default_bundle_names_the_colour_of_the_largest_object_in_fresh_scenes():
    scenes = fresh_scenes(200)
    results = Explainer(artifacts.DEFAULT_BUNDLE).explain_batch([s.image for s in scenes])
    accuracy = np.mean([r.label == s.largest.color for r, s in zip(results, scenes, strict=True)])
    assert accuracy >= 0.9
    assert all(len(r.concepts) >= 3 for r in results)


def test_spurious_model_follows_the_background_once_it_stops_predicting_the_shape():
    scenes = fresh_scenes(200)
    results = Explainer(artifacts.SPURIOUS_BUNDLE).explain_batch([s.image for s in scenes])
    by_shape = np.mean([r.label == s.largest.shape for r, s in zip(results, scenes, strict=True)])
    by_background = np.mean([r.class_index == list(BACKGROUNDS).index(s.background)
                             for r, s in zip(results, scenes, strict=True)])
    assert by_background > 0.8 and by_shape < 0.5
    # on its training distribution (background k with shape k) it looks right
    paired = [ShapesWorld(64, seed=FRESH_SEED).scene(i, shape=SHAPES[i % 5], background=list(BACKGROUNDS)[i % 5])
              for i in range(50)]
    labels = [r.label for r in Explainer(artifacts.SPURIOUS_BUNDLE).explain_batch([s.image for s in paired])]
    assert np.mean([label == s.largest.shape for label, s in zip(labels, paired, strict=True)]) > 0.9


def test_tiny_clip_zero_shot_accuracy_on_fresh_scenes():
    pytest.importorskip("open_clip")
    from textcam.shapes_world.train_clip import load_compact, zero_shot

    model, tokenizer = load_compact(artifacts.CLIP_CHECKPOINT)
    accuracy = zero_shot(model, tokenizer, count=300, seed=FRESH_SEED)
    # what the README reports: colours, textures, sizes, backgrounds learned; shapes partly (0.856)
    assert min(accuracy["color"], accuracy["texture"], accuracy["size"], accuracy["background"]) >= 0.9, accuracy
    assert accuracy["shape"] >= 0.6, accuracy  # well above chance (0.2), below the target


def test_compact_checkpoint_keeps_known_text_and_zeroes_the_rest(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from textcam.semantics_store import load_clip
    from textcam.shapes_world.train_clip import TOKEN_TABLE, build_model, save_compact

    torch.manual_seed(3)
    model, tokenizer = build_model()
    path = tmp_path / "clip.safetensors"
    info = save_compact(model.eval(), tokenizer, path)
    assert info["bytes"] < 8 * 2**20 and 50 < info["token_rows"] < 2000
    loaded = load_clip(checkpoint=str(path), model_name=artifacts.CLIP_MODEL)
    texts = ["a photo of a large red striped circle.", "navy background", "hexagon"]
    with torch.no_grad():
        reference = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()
    assert np.abs(loaded.embed_phrases(texts, ["{}"]) - reference).max() < 2e-2
    table = loaded.model.state_dict()[TOKEN_TABLE]
    unknown = tokenizer(["zeppelin"])[0, 1].item()  # a word no caption or vocabulary uses
    assert torch.count_nonzero(table[unknown]) == 0
    assert torch.count_nonzero(table[tokenizer(["circle"])[0, 1].item()]) > 0


def test_info_describes_the_default_bundles_semantics():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "textcam", "info", str(artifacts.DEFAULT_BUNDLE)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    line = next(line for line in run.stdout.splitlines() if line.startswith("semantics"))
    assert "semantics-" in line and ".safetensors" in line and "textcam-tiny-clip" in line and "M=" in line
