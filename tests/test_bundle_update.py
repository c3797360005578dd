"""Atomic bundle updates: a failure, a kill or a full disk at every step leaves the complete old
state or the complete new one, never a mix; leftovers go with the next update."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from textcam.errors import TextcamError
from textcam.runtime import Bundle, Explainer
from textcam.runtime.bundle_files import staged_bundle_dir
from textcam.runtime.bundle_update import GENERATED, update_bundle
from textcam.runtime.selftest import run_selftest
from textcam.runtime.semantics_file import read_store
from textcam.semantics_store.builder import write_semantics
from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

POINTS = ["staged semantics", "staged model.semantics", "staged selftest", "before manifest", "after manifest"]


@pytest.fixture
def bundle(default_bundle_copy) -> Path:
    return default_bundle_copy


def new_store(bundle: Path):
    """The bundle's store with other channel directions: a new state that is easy to tell apart."""
    opened = Bundle.open(bundle)
    store = read_store(opened.semantics_path)
    rng = np.random.default_rng(7)
    semantics = rng.normal(size=store.channel_semantics.shape).astype(np.float32)
    semantics /= np.linalg.norm(semantics, axis=1, keepdims=True)
    return dataclasses.replace(store, channel_semantics=semantics)


def state(bundle: Path) -> tuple:
    """What a reader sees: the store's arrays, the phrases chosen for fixed images, and a self-test that passes."""
    explainer = Explainer(bundle)
    images = [np.full((40, 40, 3), value, np.uint8) for value in (30, 140, 250)]
    phrases = tuple(tuple(c.phrase for c in e.concepts) for e in explainer.explain_batch(images))
    report = run_selftest(explainer.bundle) if explainer.bundle.info.selftest else None
    assert report is None or report.passed, report.table()
    return explainer.semantics.channel_semantics.tobytes(), phrases


class Injected(Exception):
    pass


def fail_at(point: str, error: BaseException):
    def checkpoint(name: str) -> None:
        if name.startswith(point):
            raise error
    return checkpoint


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("error", [Injected("crash"), OSError(errno.ENOSPC, "No space left on device"),
                                   KeyboardInterrupt()], ids=["exception", "disk full", "interrupt"])
def test_a_failure_at_any_step_leaves_one_whole_state(bundle, point, error):
    before = state(bundle)
    store = new_store(bundle)
    with pytest.raises(type(error)):
        write_semantics(Bundle.open(bundle), store, "shrinkage", 50, checkpoint=fail_at(point, error))
    after = state(bundle)
    if point == "after manifest":  # the switch happened: the new state, whole
        assert after[0] == store.channel_semantics.astype(np.float16).astype(np.float32).tobytes()
    else:
        assert after == before
        assert not [p for p in bundle.iterdir() if p.name.endswith(".tmp")]  # the failed update cleaned up


def test_a_successful_update_switches_and_removes_the_old_files(bundle):
    old_files = set(json.loads((bundle / "manifest.json").read_text()) and Bundle.open(bundle).info.files())
    write_semantics(Bundle.open(bundle), new_store(bundle), "shrinkage", 50)
    manifest = Bundle.open(bundle).info
    assert manifest.format_version == 2 and manifest.selftest is not None and manifest.fused_graph is not None
    left = {p.name for p in bundle.iterdir() if GENERATED.match(p.name)}
    assert left == set(manifest.files()) - {"model.onnx"}  # old store, old fused graph: gone
    assert old_files - set(manifest.files()) and not (old_files - set(manifest.files())) & left


KILL_SCRIPT = textwrap.dedent("""
    import dataclasses, os, sys
    import numpy as np
    from textcam.runtime import Bundle
    from textcam.runtime.semantics_file import read_store
    from textcam.semantics_store.builder import write_semantics

    bundle, point = sys.argv[1], sys.argv[2]
    opened = Bundle.open(bundle)
    store = read_store(opened.semantics_path)
    rng = np.random.default_rng(7)
    semantics = rng.normal(size=store.channel_semantics.shape).astype(np.float32)
    semantics /= np.linalg.norm(semantics, axis=1, keepdims=True)

    def checkpoint(name):
        if name.startswith(point):
            os._exit(137)  # as abrupt as SIGKILL: no cleanup, no finally blocks

    write_semantics(opened, dataclasses.replace(store, channel_semantics=semantics), "shrinkage", 50,
                    checkpoint=checkpoint)
""")


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_step_leaves_one_whole_state_and_the_next_update_tidies(bundle, point):
    before = state(bundle)
    run = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(bundle), point], capture_output=True, timeout=300)
    assert run.returncode == 137, run.stderr.decode()[-2000:]
    after = state(bundle)
    assert (after == before) == (point != "after manifest")
    write_semantics(Bundle.open(bundle), new_store(bundle), "shrinkage", 50)
    names = {p.name for p in bundle.iterdir() if GENERATED.match(p.name)}
    assert names == set(Bundle.open(bundle).info.files()) - {"model.onnx"}


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_updates_refuse_what_is_not_a_bundle(tmp_path, kind):
    target = tmp_path / "x.textcam"
    if kind == "file":
        target.write_text("x")
    with pytest.raises(TextcamError, match=r"x\.textcam"), update_bundle(target):
        pass


# --- a new bundle (export) ------------------------------------------------------------------------------------------

def test_a_replaced_bundle_is_never_absent_and_killed_stages_are_removed(make_bundle, tmp_path):
    out = make_bundle("default", copy=tmp_path / "b.textcam")
    killed = tmp_path / ".b.textcam.999999999.abcd.partial"  # a stage from a process that no longer exists
    killed.mkdir()
    seen = []

    def watch(stage: Path):
        (stage / "model.onnx").write_bytes(b"new")
        shutil.copy(DEFAULT_BUNDLE / "manifest.json", stage / "manifest.json")
        seen.append(out.exists())

    with staged_bundle_dir(out) as stage:
        watch(stage)
    assert (out / "model.onnx").read_bytes() == b"new" and seen == [True]
    assert not killed.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.textcam")]
    with pytest.raises(TextcamError, match="--force"), staged_bundle_dir(out, overwrite=False):
        pass


def test_a_failed_export_leaves_the_old_bundle(make_bundle, tmp_path):
    out = make_bundle("default", copy=tmp_path / "b.textcam")
    before = state(out)
    with pytest.raises(Injected), staged_bundle_dir(out) as stage:
        (stage / "model.onnx").write_bytes(b"half")
        raise Injected
    assert state(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.textcam")]
