"""``textcam explain`` and ``textcam info`` on a small bundle (textcam.cli): without torch, bad files and
arguments, one decode per image, and the CLI's flag names in place of the library's parameter names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def random_image(seed: int, size=(90, 70)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i in range(5):
        Image.fromarray(random_image(i, (80 + 10 * i, 60))).save(folder / f"img{i}.png")
    return folder


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
        (["--class-index", "7"], "error: --class-index 7 out of range"),
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


def test_cli_explain_decodes_each_image_once_and_overlays_upright(small_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import textcam.runtime.explainer as explainer_module
    from textcam.cli import main

    stored = random_image(2, (60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 40 wide, 60 high
    paths = [tmp_path / "portrait.jpg", tmp_path / "plain.png"]
    Image.fromarray(stored).save(paths[0], exif=exif)
    Image.fromarray(random_image(3)).save(paths[1])
    calls = []
    real = explainer_module.load_image
    monkeypatch.setattr(explainer_module, "load_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(small_bundle), *map(str, paths), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(map(Path, calls)) == sorted(paths)  # once per file: the overlay reuses the decoded image
    with Image.open(out / "portrait.cam.png") as overlay:
        assert overlay.size == (40, 60)
    with Image.open(out / "plain.cam.png") as overlay:
        assert overlay.size == (90, 70)


def test_cli_says_flags_where_the_library_says_parameters():
    from textcam.cli import flag_message

    assert flag_message("input_size=3x5: expected H or HxW", "export") == "--input-size 3x5: expected H or HxW"
    assert flag_message("target_layer='fc': its output (2, 5) at input_size=64x64 has no grid", "export") == \
        "--layer 'fc': its output (2, 5) at --input-size 64x64 has no grid"
    assert flag_message("class_names: 2 names given", "export") == "--class-names: 2 names given"
    assert flag_message("method=cam needs a head; use method=gradcam", "export") == \
        "--method cam needs a head; use --method gradcam"
    assert flag_message("m=0: expected a positive number", "semantics") == "-m 0: expected a positive number"
    assert flag_message("vocab x.txt: file not found", "semantics") == "--vocab x.txt: file not found"
    assert flag_message("class_index 7 out of range", "explain") == "--class-index 7 out of range"
    # other commands' parameters, and names inside words or values, stay as they are
    assert flag_message("input_size=3x5: bad", "explain") == "input_size=3x5: bad"
    assert flag_message("/data/my_input_size=3/x.png: no such file", "export") == \
        "/data/my_input_size=3/x.png: no such file"
    assert flag_message("meander: nothing", "export") == "meander: nothing"
