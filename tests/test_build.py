"""`python -m textcam.shapes_world.build` rebuilds every artifact (a tiny, fast run here: the
numbers mean nothing, the files and their wiring do)."""

import json
import subprocess
import sys

import pytest

from textcam.runtime import Explainer
from textcam.shapes_world import COLORS, ShapesWorld, artifacts


@pytest.mark.slow
def test_build_writes_every_artifact_and_a_report(tmp_path):
    pytest.importorskip("open_clip")
    out = tmp_path / "artifacts"
    run = subprocess.run(
        [sys.executable, "-m", "textcam.shapes_world.build", "--out", str(out), "--clip-steps", "2",
         "--cnn-steps", "2", "--probe-images", "24"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    expected = {artifacts.DEFAULT_BUNDLE.name, artifacts.SPURIOUS_BUNDLE.name, artifacts.CLIP_CHECKPOINT.name,
                artifacts.REPORT.name, artifacts.classifier_weights("color").name,
                artifacts.classifier_weights("spurious").name}
    assert names == expected
    assert not (tmp_path / "artifacts.partial").exists()
    report = json.loads((out / artifacts.REPORT.name).read_text())
    assert set(report["clip"]["zero_shot_accuracy"]) == {"shape", "color", "size", "texture", "background"}
    assert report["classifiers"]["color"]["semantics"]["m"] == 12  # capped at half the 24 probe images
    assert report["total_bytes"] == sum(report["sizes_bytes"].values())
    explainer = Explainer(out / artifacts.DEFAULT_BUNDLE.name)
    result = explainer.explain(ShapesWorld(64, seed=1).scene(0).image, groups=True)
    assert explainer.classes == tuple(COLORS) and len(result.concepts) >= 3


def test_a_new_build_replaces_the_old_one_whole(tmp_path):
    """What a second build does at its end (the build itself is the test above): the staged folder
    takes the output's place, the old artifacts go, and a leftover of an interrupted swap is cleared."""
    from textcam.shapes_world.build import _swap_in

    out, stage = tmp_path / "artifacts", tmp_path / "artifacts.partial"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (tmp_path / "artifacts.old").mkdir()  # left by a swap that was interrupted
    stage.mkdir()
    (stage / "new.txt").write_text("new")
    _swap_in(stage, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]
