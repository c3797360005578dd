"""Explanation quality: the scoring functions, and a regression guard that rebuilds the default
bundle's semantics from scratch (small probe set) and checks the phrases still name the shape."""


import numpy as np
import pytest

from textcam.shapes_world import ShapesWorld, artifacts, splits
from textcam.shapes_world.quality import deciding_phrase, deletion_insertion, equal_weight_random_channels, hit_rate


def test_hit_rate_counts_the_truth_within_the_first_k():
    rows = [["circle", "red object", "star"], ["star", "circle"], ["navy background"]]
    truths = ["star", "circle", "circle"]
    assert hit_rate(rows, truths, 1) == 0.0
    assert hit_rate(rows, truths, 2) == pytest.approx(1 / 3)
    assert hit_rate(rows, truths, 3) == pytest.approx(2 / 3)


def test_deciding_phrase_uses_the_vocabulary_wording():
    scene = ShapesWorld(64, seed=1).scene(0, shape="star", background="navy", color="red")
    assert deciding_phrase(scene, "shape") == "star"
    assert deciding_phrase(scene, "background") == "navy background"
    assert deciding_phrase(scene, "color") == "red object"


def test_deletion_and_insertion_reward_the_map_that_points_at_the_evidence():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    region = np.zeros((16, 16), bool)
    region[2:6, 3:9] = True

    def probability(batch):  # class 0's probability = the fraction of the region left intact
        intact = (batch[:, region] == images[:, region]).all(axis=-1).mean(axis=1)
        return np.stack([intact, 1 - intact], axis=1)

    good = np.broadcast_to(region, (6, 16, 16)).astype(float)
    bad = 1.0 - good
    classes = np.zeros(6, dtype=int)
    del_good, ins_good = deletion_insertion(images, good, classes, probability, steps=8)
    del_bad, ins_bad = deletion_insertion(images, bad, classes, probability, steps=8)
    assert (del_good < del_bad).all() and (ins_good > ins_bad).all()
    assert del_good.max() < 0.15 and ins_bad.max() < 0.15


def test_random_channels_of_equal_weight_reach_the_groups_total():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=64)
    group = np.array([3, 10, 11])
    for chosen in equal_weight_random_channels(weights, group, rng, draws=10):
        assert not set(chosen) & set(group) and (weights[chosen] > 0).all()
        total, target = weights[chosen].sum(), np.abs(weights[group]).sum()
        assert total >= target and total - weights[chosen[-1]] < target


@pytest.mark.slow
def test_rebuilt_semantics_still_name_the_deciding_colour(default_bundle_copy, tmp_path):
    pytest.importorskip("open_clip")
    from textcam.runtime import Explainer
    from textcam.shapes_world.build import add_semantics, load_tiny_clip

    bundle = default_bundle_copy
    probe = tmp_path / "probe"
    ShapesWorld(64, seed=splits.PROBE + 1).write_pngs(probe, 400)
    add_semantics(bundle, probe, load_tiny_clip(artifacts.CLIP_CHECKPOINT))
    scenes = [ShapesWorld(64, seed=splits.TEST + 1).scene(i) for i in range(150)]
    results = Explainer(bundle).explain_batch([s.image for s in scenes])
    correct = [(r, s) for r, s in zip(results, scenes, strict=True) if r.label == s.largest.color]
    assert len(correct) > 120
    truths = [deciding_phrase(s, "color") for _, s in correct]
    rate = hit_rate([[c.phrase for c in r.concepts] for r, _ in correct], truths, 3)
    assert rate >= 0.8


@pytest.mark.slow
def test_quality_benchmark_quick_run_writes_its_table(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("open_clip")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "quality.json").read_text())
    assert len(result["rows"]) == 2 and result["chosen"]["config"] == result["rows"][0]["config"]
    for row in result["rows"]:
        for key in ("hit_at_1", "hit_at_3", "spurious_detection_rate", "control_background_rate"):
            assert 0.0 <= row[key] <= 1.0
        assert row["hit_at_1"] <= row["hit_at_3"]
    for maps in result["localization"].values():
        assert set(maps) == {"gradcam", "random"}
    table = (tmp_path / "quality.md").read_text()
    assert all(row["config"] in table for row in result["rows"])
