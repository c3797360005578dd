"""The README's first command: `textcam demo` explains generated scenes with the built-in default
bundle, without torch, and writes overlays and a self-contained HTML report."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from textcam.shapes_world import COLORS

TORCH_BLOCKED = (
    "import sys\n"
    "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
    "sys.modules['torchvision'] = None\n"
    "sys.modules['open_clip'] = None\n"
    "from textcam.cli import main\n"
    "sys.argv = ['textcam', 'demo'] + sys.argv[1:]\n"
    "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
    "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    "sys.exit(code)\n"
)


def demo(*args):
    return subprocess.run([sys.executable, "-c", TORCH_BLOCKED, *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_demo_explains_scenes_without_torch_and_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    run = demo("--out", out, "--count", 6)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 6
    correct = 0
    for line in lines:
        path, label, score, phrases = line.split("\t")
        truth = Path(path).stem.split("_")[1]  # files are named NNN_<colour of the largest object>
        assert label in COLORS and 0.0 < float(score) <= 1.0
        assert len(phrases.split("; ")) == 3
        correct += label == truth
    assert correct >= 5  # a trained model, not random weights
    overlays = sorted((out / "overlays").glob("*.cam.png"))
    assert len(overlays) == 6
    overlay = np.asarray(Image.open(overlays[0]))
    # its own scene, by name (glob's order is the file system's)
    image = np.asarray(Image.open(out / "images" / overlays[0].name.replace(".cam.png", ".png")))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)
    assert list((out / "groups").glob("*.png"))
    report = (out / "report.html").read_text()
    assert str(out / "report.html") in run.stderr
    # self-contained: every picture is embedded, nothing is linked
    assert not re.search(r'src="(?!data:image/png;base64,)', report)
    assert report.count("data:image/png;base64,") >= 6 * 3
    first_phrase = lines[0].split("\t")[3].split("; ")[0]
    assert first_phrase in report and "scene: " in report


def test_demo_refuses_an_out_path_that_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = demo("--out", blocker, "--count", 1)
    assert run.returncode == 2  # a usage error
    assert "'--out'" in run.stderr and "is a file" in run.stderr and "Traceback" not in run.stderr
    assert blocker.read_text() == "x"


def test_missing_default_bundle_names_the_rebuild_command(tmp_path):
    import pytest

    from textcam.errors import TextcamError
    from textcam.shapes_world import artifacts

    with pytest.raises(TextcamError, match=r"python -m textcam.shapes_world.build"):
        artifacts.require(tmp_path / "shapes.textcam")


def test_demo_reports_a_missing_bundle_and_an_unusable_out_in_one_line(tmp_path):
    run = demo("--bundle", tmp_path / "nowhere.textcam", "--out", tmp_path / "d")
    assert run.returncode == 1 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    run = demo("--out", tmp_path / "file" / "sub", "--count", 1)  # a file where a folder must go
    assert run.returncode == 1 and run.stderr.startswith("error: --out") and "Traceback" not in run.stderr
