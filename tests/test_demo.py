"""The README's first command: `textcam demo` runs the whole flow offline."""

import subprocess
import sys

import numpy as np
from PIL import Image


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "textcam", "demo", "--out", str(out), "--count", "3"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        _path, label, score, _peak = line.split("\t")
        assert label in ("circle", "square", "triangle", "bar", "ring")
        assert 0.0 < float(score) <= 1.0
    overlays = sorted((out / "overlays").glob("*.cam.png"))
    assert len(overlays) == 3
    image = np.asarray(Image.open(out / "images" / "00_circle.png"))
    overlay = np.asarray(Image.open(overlays[0]))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)
    # a second run reuses the exported bundle
    again = subprocess.run(
        [sys.executable, "-m", "textcam", "demo", "--out", str(out), "--count", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0 and "exporting" not in again.stderr
