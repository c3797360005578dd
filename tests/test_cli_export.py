"""`textcam export` on bad input, as a user runs it: a subprocess, one `error:` line, exit status 1
(click's usage errors: 2), no traceback, and no bundle or temporary directory left behind.

The cases run concurrently in one module-scoped fixture (each is a fresh interpreter that imports
torch), then each is checked by its own test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

MODELS_SOURCE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=3, block=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = block or nn.ReLU()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.block(self.conv(x)).mean(dim=(2, 3)))


class Median(nn.Module):
    def forward(self, x):
        return x - x.median(dim=1, keepdim=True).values


class ItemBranch(nn.Module):
    def forward(self, x):
        return x * 2 if x.mean().item() > 0 else x * 3


def tiny(num_classes=3):
    return Net(num_classes)


def with_median(num_classes=3):
    return Net(num_classes, Median())


def with_item_branch(num_classes=3):
    return Net(num_classes, ItemBranch())


def raises(num_classes=3):
    raise RuntimeError("boom in the factory")


def vit(num_classes=3):
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                             num_classes=num_classes)
'''

RESNET = ["--model", "torchvision:resnet18", "--input-size", "64", "--num-classes", "5"]
TINY = ["--model", "cli_models:tiny", "--input-size", "16"]


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    expect: str  # a substring of the error line (after "error: " or click's "Error: ")
    status: int = 1
    out: str = "new"  # "new": -o names a fresh path; "dir": a non-bundle directory; "file": a regular file


CASES = {
    "bad family": Case(("--model", "nosuchfamily:resnet18", "--input-size", "64"),
                       "--model nosuchfamily:resnet18: cannot import 'nosuchfamily'"),
    "unknown torchvision name": Case(("--model", "torchvision:resnt18"),
                                     "unknown torchvision model; did you mean resnet18"),
    "unknown layer": Case((*RESNET, "--layer", "layr4"), "--layer 'layr4': no such module in the model; did you mean "
                                                         "layer4"),
    "layer fc": Case((*RESNET, "--layer", "fc"), "--layer 'fc': its output (2, 5) at --input-size 64x64 has no "
                                                 "spatial grid to explain; choose an earlier layer, e.g. 'layer4'"),
    "cam on an MLP head": Case(("--model", "torchvision:mobilenet_v3_small", "--input-size", "64", "--method", "cam",
                                "--layer", "features"),
                               "--method cam needs a global-average-pool + linear head after layer 'features'"),
    "weights: wrong num classes": Case((*TINY, "--weights", "{files}/tiny_10.pt"),
                                       "fc.weight: file (10, 4) vs model (3, 4) (pass --num-classes 10"),
    "weights: random bytes": Case((*TINY, "--weights", "{files}/random.bin"), "not a PyTorch checkpoint"),
    "weights: truncated": Case((*TINY, "--weights", "{files}/truncated.pt"), "looks truncated or damaged"),
    "weights: other architecture": Case((*TINY, "--weights", "{files}/vit.pt"),
                                        "does not match cli_models:tiny: 4 missing key(s)"),
    "output: non-bundle dir": Case(TINY, "directory exists and is not a textcam bundle", out="dir"),
    "output below a file": Case(TINY, "is a file, not a directory", out="below-file"),
    "input size 8 on resnet": Case(("--model", "torchvision:resnet18", "--input-size", "8", "--layer", "layer4"),
                                   "at --input-size 8x8 has no spatial grid to explain"),
    "vit at the wrong size": Case(("--model", "cli_models:vit", "--input-size", "48"),
                                  "--input-size 48x48: the model cannot run on a 3x48x48 input (Wrong image height! "
                                  "Expected 32 but got 48!)"),
    "untranslatable op": Case(("--model", "cli_models:with_median", "--input-size", "16", "--layer", "conv"),
                              "operation aten.median in layer 'block' has no ONNX translation"),
    "factory raises": Case(("--model", "cli_models:raises"), "building the model raised RuntimeError: boom in the "
                                                             "factory"),
    "class names: wrong count": Case((*TINY, "--class-names", "{files}/two_names.txt"),
                                     "--class-names: 2 names given, but the model has 3 classes"),
    "mean: two numbers": Case((*TINY, "--mean", "0.5,0.5"), "--mean '0.5,0.5': expected three comma-separated"),
    # click's own checks: usage errors, exit status 2, before torch is imported
    "output: regular file": Case(TINY, "Directory '{out}' is a file", status=2, out="file"),
    "input size 0": Case((*TINY[:2], "--input-size", "0"), "Invalid value for '--input-size'", status=2),
    "input size abc": Case((*TINY[:2], "--input-size", "abc"), "Invalid value for '--input-size'", status=2),
    "input size 224x": Case((*TINY[:2], "--input-size", "224x"), "Invalid value for '--input-size'", status=2),
    "num classes 0": Case((*TINY, "--num-classes", "0"), "Invalid value for '--num-classes'", status=2),
    "unknown layout": Case((*TINY, "--layout", "nwhc"), "Invalid value for '--layout'", status=2),
}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    out: Path
    before: list[str] | None  # the output path's entries before the run (it existed), else None


def _entries(path: Path) -> list[str] | None:
    if path.is_dir():
        return sorted(p.name for p in path.iterdir())
    return [f"file:{path.read_text()}"] if path.is_file() else None


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_files")
    (folder / "cli_models.py").write_text(MODELS_SOURCE)
    (folder / "random.bin").write_bytes(os.urandom(4096))
    sys.path.insert(0, str(folder))
    try:
        import cli_models

        torch.save(cli_models.tiny(num_classes=10).state_dict(), folder / "tiny_10.pt")
        torch.save(cli_models.vit().state_dict(), folder / "vit.pt")
        data = (folder / "vit.pt").read_bytes()
        (folder / "truncated.pt").write_bytes(data[: len(data) // 3])
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("cli_models", None)
    (folder / "two_names.txt").write_text("cat\ndog\n")
    return folder


@pytest.fixture(scope="module")
def results(files, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("cli_out")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(files), os.environ.get("PYTHONPATH", "")])}

    def run(name: str, case: Case) -> Result:
        slug = "".join(c if c.isalnum() else "_" for c in name)
        out = outputs / f"{slug}.textcam"
        if case.out == "dir":
            out.mkdir()
            (out / "keep.txt").write_text("precious")
        elif case.out == "file":
            out.write_text("not a directory")
        elif case.out == "below-file":
            (outputs / slug).write_text("a file")
            out = outputs / slug / "model.textcam"
        before = _entries(out)
        args = [a.format(files=files) for a in case.args]
        proc = subprocess.run(
            [sys.executable, "-m", "textcam", "export", *args, "-o", str(out)],
            capture_output=True, text=True, env=env, cwd=outputs, timeout=300,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr, out, before)

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run, name, case) for name, case in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_error_line(results, name):
    case, result = CASES[name], results[name]
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == case.status, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    assert not result.stdout.startswith("wrote"), shown
    expect = case.expect.format(out=result.out)
    if case.status == 1:
        lines = [line for line in result.stderr.splitlines() if not line.startswith(("  ", "loading "))]
        assert len(lines) == 1, shown
        assert lines[0].startswith("error: ") and expect in lines[0], shown
    else:  # click's usage error: "Usage: ...", "Try ...", "", "Error: ..."
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and expect in errors[0], shown
    # nothing written: the output is as it was, and no temporary directory is left beside it
    assert _entries(result.out) == result.before, shown
    if result.out.parent.is_dir():
        assert not list(result.out.parent.glob(f".{result.out.name}.*")), shown


def test_export_then_replace_and_refuse(files, tmp_path):
    """A good export works, writing over its own bundle needs --force, and a failure keeps the old bundle."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(files), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "tiny.textcam"
    command = [sys.executable, "-m", "textcam", "export", *TINY, "--layer", "conv", "-o", str(out)]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0 and first.stdout.startswith(f"wrote {out}"), first.stderr
    manifest = (out / "manifest.json").read_text()
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 1 and "a textcam bundle is already there; pass force=True (--force)" in refused.stderr
    assert (out / "manifest.json").read_text() == manifest
    failed = subprocess.run([*command, "--force", "--class-names", str(files / "two_names.txt")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert failed.returncode == 1 and "error: --class-names" in failed.stderr
    assert (out / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.textcam"]
