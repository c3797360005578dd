"""`textcam semantics` streamed and resumable: the same result as the full-matrix build, only the
selected images embedded, a killed build continuing from its last phase, other builds' checkpoints refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from semantics_helpers import tiny_clip

pytest.importorskip("open_clip")

from textcam.errors import TextcamError
from textcam.runtime.backends import create_runner
from textcam.runtime.bundle import Bundle
from textcam.runtime.images import load_image
from textcam.runtime.semantics_file import read_store
from textcam.semantics_store import build_semantics, builder
from textcam.semantics_store.lda import channel_directions
from textcam.semantics_store.probe_set import extreme_images, list_probe_images, scan_activations, scan_probe
from textcam.shapes_world import ShapesWorld

M = 6
BATCH = 16


class Stop(Exception):
    """Stands for a kill after a phase."""


def stop_after(phase: str):
    def on_phase(name: str) -> None:
        if name == phase:
            raise Stop(name)

    return on_phase


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    ShapesWorld(100, seed=3).write_pngs(folder, 36)
    return folder


@pytest.fixture()
def copies(make_bundle, small_bundle, tmp_path):
    return lambda name: make_bundle(small_bundle, copy=tmp_path / f"{name}.textcam")


def build(bundle, probe, clip, **options):
    return build_semantics(bundle, probe, clip, vocab=["builtin:classes"], m=options.pop("m", M), fuse=False,
                           show_progress=False, batch_size=BATCH, log=lambda _m: None, **options)


def semantics(bundle: Path):
    return read_store(Bundle.open(bundle).semantics_path)


def test_streamed_build_equals_the_full_matrix_build_and_embeds_only_the_selected(copies, probe, clip, tmp_path,
                                                                                  monkeypatch):
    bundle = copies("a")
    resume = tmp_path / "resume"
    scan_state = {}

    def keep_scan(name):
        if name == "scan":  # the checkpoint holds the builder's selections
            with np.load(resume / "scan.npz") as data:
                scan_state.update(positives=data["positives"], negatives=data["negatives"])

    embedded = []
    real_embed = clip.embed_images
    monkeypatch.setattr(clip, "embed_images", lambda images: embedded.extend(images) or real_embed(images))
    report = build(bundle, probe, clip, resume_dir=resume, on_phase=keep_scan)
    monkeypatch.undo()

    # the reference: today's pipeline, the whole [N, C] matrix then the full-matrix selection
    opened = Bundle.open(bundle)
    paths = list_probe_images(probe)
    scores, kept, _ = scan_activations(opened, create_runner("onnxruntime", opened), paths, BATCH)
    assert kept == paths
    positives, negatives = extreme_images(scores, M)
    np.testing.assert_array_equal(scan_state["positives"], positives)
    np.testing.assert_array_equal(scan_state["negatives"], negatives)
    used = np.unique(np.concatenate([positives.ravel(), negatives.ravel()]))
    assert report.embedded_images == len(used) == len(embedded) and report.embedding_cache_hits == 0
    assert len(used) <= min(len(paths), 2 * M * scores.shape[1])
    embeddings = np.concatenate([clip.embed_images([load_image(kept[i]) for i in used[s : s + BATCH]])
                                 for s in range(0, len(used), BATCH)])
    row_of = {int(image): row for row, image in enumerate(used)}
    lookup = np.vectorize(row_of.__getitem__)
    want = channel_directions(embeddings, lookup(positives), lookup(negatives), "shrinkage")
    got = semantics(bundle).channel_semantics
    np.testing.assert_allclose(got, want, atol=1e-3)  # fp16 storage
    assert not resume.exists()  # a finished build leaves no checkpoint


def test_a_killed_build_resumes_after_its_last_phase(copies, probe, clip, tmp_path, monkeypatch):
    resume = tmp_path / "resume"
    interrupted, whole = copies("interrupted"), copies("whole")
    with pytest.raises(Stop):
        build(interrupted, probe, clip, resume_dir=resume, on_phase=stop_after("embed"))
    assert sorted(p.name for p in resume.iterdir()) == ["embed.npz", "header.json", "scan.npz"]

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("a finished phase ran again")

    with monkeypatch.context() as patch:
        patch.setattr(builder, "scan_probe", must_not_run)
        patch.setattr(clip, "embed_images", must_not_run)
        report = build(interrupted, probe, clip, resume_dir=resume)
    assert report.resumed == ["scan", "embed"] and not resume.exists()
    build(whole, probe, clip)
    resumed, uninterrupted = semantics(interrupted), semantics(whole)
    np.testing.assert_array_equal(resumed.channel_semantics, uninterrupted.channel_semantics)
    np.testing.assert_array_equal(resumed.text_embeddings, uninterrupted.text_embeddings)
    assert resumed.phrases == uninterrupted.phrases and resumed.metadata == uninterrupted.metadata


def test_the_default_checkpoint_lives_in_the_cache(copies, probe, clip, tmp_path, monkeypatch):
    bundle, cache = copies("cached"), tmp_path / "cache"
    with pytest.raises(Stop):
        build(bundle, probe, clip, cache=cache, on_phase=stop_after("lda"))
    (folder,) = (cache / "checkpoints").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["embed.npz", "header.json", "lda.npz", "scan.npz"]
    with monkeypatch.context() as patch:
        patch.setattr(builder, "channel_directions", lambda *a, **k: (_ for _ in ()).throw(AssertionError("lda ran")))
        report = build(bundle, probe, clip, cache=cache)
    assert report.resumed == ["scan", "embed", "lda"] and report.checkpoint == folder
    assert not folder.exists()


def test_another_builds_checkpoint_is_refused_not_mixed(copies, probe, clip, tmp_path, make_bundle, tiny_bundle):
    resume = tmp_path / "resume"
    bundle = copies("first")
    with pytest.raises(Stop):
        build(bundle, probe, clip, resume_dir=resume, on_phase=stop_after("scan"))
    saved = (resume / "scan.npz").read_bytes()
    other_probe = tmp_path / "other"
    ShapesWorld(100, seed=4).write_pngs(other_probe, 30)
    touched = tmp_path / "touched"
    ShapesWorld(100, seed=3).write_pngs(touched, 36)
    other_bundle = make_bundle(tiny_bundle, copy=tmp_path / "tiny.textcam")
    cases = [
        ({"bundle": other_bundle}, "model_sha256"),
        ({"probe": other_probe}, "probe.images 36 (this build: 30)"),
        ({"probe": touched}, "probe.sha256"),  # same images, other files: the fingerprint differs
        ({"m": M + 1}, f"m {M} (this build: {M + 1})"),
        ({"lda": "pooled"}, 'lda "shrinkage" (this build: "pooled")'),
    ]
    for change, difference in cases:
        options = {"bundle": bundle, "probe": probe, **change}
        with pytest.raises(TextcamError) as error:
            build(options.pop("bundle"), options.pop("probe"), clip, resume_dir=resume, **options)
        message = str(error.value)
        assert "\n" not in message and f"checkpoint {resume / 'header.json'} is for another build" in message
        assert difference in message
    assert (resume / "scan.npz").read_bytes() == saved  # left as it was


def test_a_touched_probe_file_changes_the_fingerprint(copies, probe, clip, tmp_path):
    from textcam.semantics_store.build_checkpoint import probe_fingerprint

    paths = list_probe_images(probe)
    before = probe_fingerprint(paths)
    stat = os.stat(paths[3])
    # 2 s later: a file system keeps times to its own granularity (1 s on some, 2 s on FAT), not to the ns
    os.utime(paths[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    try:
        assert probe_fingerprint(paths) != before
    finally:
        os.utime(paths[3], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert probe_fingerprint(paths) == before


def test_non_finite_scores_are_refused_naming_the_image(small_bundle, probe):
    class NanRunner:
        def run(self, batch, _target):
            scores = np.zeros((len(batch), 512), np.float32)
            scores[-1, 7] = np.nan
            return {"channel_activation": scores}

    paths = list_probe_images(probe)
    with pytest.raises(TextcamError, match=f"--probe {paths[3]}: the graph gives channel 7 the activation nan"):
        scan_probe(Bundle.open(small_bundle), NanRunner(), paths, 4, lambda *_: None)


def test_cli_reports_embeddings_and_refuses_a_foreign_checkpoint(copies, probe, tmp_path):
    from click.testing import CliRunner

    from textcam.cli import main
    from textcam.semantics_store.build_checkpoint import BuildCheckpoint, build_header

    bundle, resume = copies("cli"), tmp_path / "resume"
    args = ["semantics", str(bundle), "--probe", str(probe), "--clip", "textcam-tiny-clip", "--vocab",
            "builtin:classes", "-m", "5", "--resume-dir", str(resume)]
    # a checkpoint left by a build with another M
    BuildCheckpoint.open(resume, build_header(Bundle.open(bundle).model_sha256, list_probe_images(probe), 4,
                                              "shrinkage", "textcam-tiny-clip", 0))
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "is for another build: m 4 (this build: 5)" in lines[0], refused.output
    (resume / "header.json").unlink()
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert "CLIP image embeddings: " in done.output and "distinct images of 36" in done.output


def test_a_resume_dir_that_cannot_hold_a_checkpoint(tmp_path):
    from textcam.semantics_store.build_checkpoint import BuildCheckpoint

    afile = tmp_path / "afile"
    afile.write_text("x")
    header = {"format": 1}
    with pytest.raises(TextcamError, match=f"--resume-dir {afile}: not a folder"):
        BuildCheckpoint.open(afile, header)
    with pytest.raises(TextcamError, match=f"--resume-dir {afile / 'sub'}: cannot write header.json"):
        BuildCheckpoint.open(afile / "sub", header)
    damaged = tmp_path / "damaged"
    BuildCheckpoint.open(damaged, header).save("scan", kept=3)
    (damaged / "scan.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(TextcamError, match=r"scan\.npz: unreadable .*delete the folder to start over"):
        BuildCheckpoint.open(damaged, header).load("scan")
    assert BuildCheckpoint.open(tmp_path / "fine", header).load("scan") is None
