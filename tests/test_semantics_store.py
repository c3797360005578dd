"""`textcam semantics`: the offline builder end to end on a tiny CLIP, and its bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from semantics_helpers import tiny_clip

pytest.importorskip("open_clip")

from textcam.errors import TextcamError
from textcam.runtime.bundle import Bundle
from textcam.runtime.semantics_file import read_store
from textcam.semantics_store import build_semantics, load_clip
from textcam.semantics_store.probe_set import extreme_images
from textcam.semantics_store.vocabulary import load_templates, load_vocabulary
from textcam.shapes_world import ShapesWorld


def make_probe(folder: Path, count: int, seed: int = 0) -> Path:
    ShapesWorld(100, seed=seed).write_pngs(folder, count)
    return folder


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return make_probe(tmp_path_factory.mktemp("probe"), 40)


def store_path(bundle: Path) -> Path:
    return Bundle.open(bundle).semantics_path


@pytest.fixture()
def bundle(make_bundle, small_bundle, tmp_path):
    return make_bundle(small_bundle, copy=tmp_path / "b.textcam")


def test_build_writes_a_valid_store_bound_to_the_model(bundle, probe, clip, tmp_path):
    report = build_semantics(bundle, probe, clip, vocab=["builtin:attributes", "builtin:classes"], m=8,
                             cache=tmp_path / "cache", fuse=False, show_progress=False)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["semantics"]
    assert entry["file"].startswith("semantics-") and entry["channels"] == 512 and entry["m"] == 8
    store = read_store(store_path(bundle), manifest["model"]["sha256"], 512)
    assert store.channel_semantics.shape == (512, 64) and store.text_embeddings.shape[0] == len(store.phrases)
    assert np.allclose(np.linalg.norm(store.channel_semantics, axis=1), 1.0, atol=2e-3)  # fp16 storage
    assert "circle" in store.phrases and "striped texture" in store.phrases
    assert set(report.seconds) == {"scan", "select", "embed", "lda", "text", "write"}
    # the directions are the LDA of the recorded extremes: recompute one channel independently
    assert len(list((tmp_path / "cache").rglob("*.npy"))) > 0
    # a second build reuses the cached image embeddings and gives the same store
    again = build_semantics(bundle, probe, clip, vocab=["builtin:attributes", "builtin:classes"], m=8,
                            cache=tmp_path / "cache", fuse=False, show_progress=False)
    # counted, not timed: on a busy machine the cached pass need not be the faster one
    assert report.embedding_cache_hits == 0 < report.embedded_images
    assert again.embedding_cache_hits == again.embedded_images == report.embedded_images
    second = read_store(store_path(bundle))
    np.testing.assert_allclose(second.channel_semantics, store.channel_semantics, atol=1e-3)


def test_directions_point_from_low_to_high_activating_images(bundle, probe, clip):
    """Each s_j separates the embeddings of its P_j from its N_j (checked on the scan itself)."""
    from textcam.runtime.backends import create_runner
    from textcam.runtime.bundle import Bundle
    from textcam.semantics_store.probe_set import list_probe_images, scan_activations

    build_semantics(bundle, probe, clip, vocab=["builtin:classes", "builtin:attributes"], m=8, fuse=False,
                    show_progress=False)
    opened = Bundle.open(bundle)
    paths = list_probe_images(probe)
    scores, kept, _ = scan_activations(opened, create_runner("onnxruntime", opened), paths, 16)
    positives, negatives = extreme_images(scores, 8)
    embeddings = clip.embed_images([Image.open(p).convert("RGB") for p in kept])
    store = read_store(store_path(bundle))
    for channel in (0, 17, 300):
        s = store.channel_semantics[channel]
        assert (embeddings[positives[channel]] @ s).mean() > (embeddings[negatives[channel]] @ s).mean()


def test_extreme_images_break_ties_randomly_but_reproducibly():
    scores = np.zeros((100, 3), np.float32)
    scores[7, 0] = 5.0
    top, bottom = extreme_images(scores, 4, seed=1)
    assert top[0, 0] == 7 and 7 not in bottom[0]
    assert sorted(top[1]) != [96, 97, 98, 99]  # not simply the last files
    again, _ = extreme_images(scores, 4, seed=1)
    assert np.array_equal(top, again)


def test_small_probe_sets(bundle, tmp_path, clip):
    few = make_probe(tmp_path / "few", 10)
    report = build_semantics(bundle, few, clip, vocab=["builtin:classes"], m=50, fuse=False, show_progress=False)
    assert report.m == 5 and any("M capped" in note for note in report.notes)
    tiny = make_probe(tmp_path / "tiny", 3)
    with pytest.raises(TextcamError, match="3 readable image"):
        build_semantics(bundle, tiny, clip, vocab=["builtin:classes"], fuse=False, show_progress=False)


def test_unreadable_probe_files(bundle, tmp_path, clip):
    folder = make_probe(tmp_path / "p", 120)
    (folder / "broken.png").write_bytes(b"not a png")
    report = build_semantics(bundle, folder, clip, vocab=["builtin:classes"], m=4, fuse=False, show_progress=False)
    assert report.probe_images == 120 and [p.name for p, _ in report.failed] == ["broken.png"]
    for i in range(3):
        (folder / f"bad{i}.jpg").write_bytes(b"")
    before = Bundle.open(bundle).info
    with pytest.raises(TextcamError, match="more than 1%"):
        build_semantics(bundle, folder, clip, vocab=["builtin:classes"], m=4, fuse=False, show_progress=False)
    assert Bundle.open(bundle).info == before  # nothing half-written or recorded
    assert read_store(store_path(bundle)).phrases == read_store(Bundle.open(bundle).semantics_path).phrases


def test_vocabulary_files(tmp_path):
    good = tmp_path / "v.txt"
    good.write_text("red\n\nRed\nblue\n  striped   texture \nblue\n", encoding="utf-8")
    vocab = load_vocabulary([str(good)], [])
    assert vocab.phrases == ["red", "blue", "striped texture"] and vocab.dropped_duplicates == 2
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(TextcamError, match="empty"):
        load_vocabulary([str(empty)], [])
    latin = tmp_path / "l.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(TextcamError, match="not UTF-8"):
        load_vocabulary([str(latin)], [])
    dupes = tmp_path / "d.txt"
    dupes.write_text("red\nred\nRED\n")
    with pytest.raises(TextcamError, match="2 duplicate"):
        load_vocabulary([str(dupes)], [])
    with pytest.raises(TextcamError, match="unknown built-in"):
        load_vocabulary(["builtin:colours"], [])
    assert len(load_vocabulary(["builtin:attributes"], []).phrases) >= 200
    bad_templates = tmp_path / "t.txt"
    bad_templates.write_text("a photo of a thing\n")
    with pytest.raises(TextcamError, match="exactly one"):
        load_templates(str(bad_templates))


def test_clip_errors(tmp_path):
    with pytest.raises(TextcamError, match="unknown; did you mean"):
        load_clip("ViT-B-33")
    import torch

    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, wrong)
    with pytest.raises(TextcamError, match="does not fit --clip-model textcam-tiny-clip"):
        load_clip(checkpoint=str(wrong), model_name="textcam-tiny-clip")
    with pytest.raises(TextcamError, match="needs --clip-model"):
        load_clip(checkpoint=str(wrong))
    with pytest.raises(TextcamError, match="either --clip"):
        load_clip()


def test_checkpoint_round_trip(tmp_path, clip):
    import torch

    path = tmp_path / "clip.pt"
    torch.save(clip.model.state_dict(), path)
    loaded = load_clip(checkpoint=str(path), model_name="textcam-tiny-clip")
    assert loaded.model_id.startswith("textcam-tiny-clip@sha256:")
    np.testing.assert_allclose(loaded.embed_phrases(["red"], ["{}"]), clip.embed_phrases(["red"], ["{}"]), atol=1e-5)


def test_store_checks_against_the_bundle(bundle, probe, clip, tmp_path):
    build_semantics(bundle, probe, clip, vocab=["builtin:classes"], m=4, fuse=False, show_progress=False)
    with pytest.raises(TextcamError, match="another model"):
        read_store(store_path(bundle), model_sha256="0" * 64)
    with pytest.raises(TextcamError, match="512 channels, this model's layer has 2048"):
        read_store(store_path(bundle), channels=2048)
    from textcam.runtime.semantics_file import SemanticsStore, store_bytes

    with pytest.raises(TextcamError, match="dimension 64 but text embeddings 32"):
        store_bytes(SemanticsStore(np.ones((4, 64)), np.ones((2, 32)), ("a", "b"), "x", "clip"))


def test_cli_semantics_errors(small_bundle, tmp_path, probe):
    cases = [
        (["--probe", str(tmp_path / "none"), "--clip", "textcam-tiny-clip"], "no such directory"),
        (["--probe", str(probe), "--clip", "nonexistent-clip"], "unknown"),
        (["--probe", str(probe)], "either --clip"),
    ]
    for args, message in cases:
        run = subprocess.run([sys.executable, "-m", "textcam", "semantics", str(small_bundle), *args],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 1, run.stderr
        assert message in run.stderr and "Traceback" not in run.stderr


def test_built_bundle_explains_with_phrases_fused_or_not(bundle, probe, clip):
    from textcam.runtime import Explainer

    build_semantics(bundle, probe, clip, vocab=["builtin:attributes", "builtin:classes"], m=8, show_progress=False)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["fused_graph"]["file"].startswith("model.semantics-")
    image = bundle.parent / "x.png"
    shutil.copy(next(iter(probe.glob("*.png"))), image)
    fused = Explainer(bundle).explain(image)
    plain = Explainer(bundle, use_fused=False).explain(image)
    assert len(fused.concepts) == 5
    assert [c.phrase for c in fused.concepts] == [c.phrase for c in plain.concepts]
    store = read_store(store_path(bundle))
    assert all(c.phrase in store.phrases for c in fused.concepts)
