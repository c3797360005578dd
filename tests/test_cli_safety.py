"""The command line on hostile and bad input: escaped output, valid JSON, usage errors, `default`,
output failures, `export --force` and the model-module errors. Each case is one bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from textcam.cli import main
from textcam.cli.safe_text import UNSAFE_CODEPOINTS, json_text, safe_name, safe_text
from textcam.shapes_world import artifacts

DEFAULT = artifacts.DEFAULT_BUNDLE

HOSTILE = {
    "osc-retitle": "\x1b]0;pwned\x07",
    "csi-color": "\x1b[31mred",
    "newline-forge": "x\nforged.png\tred\t0.999",
    "carriage-return": "ok\roverwrite",
    "tab": "a\tb",
    "c1-csi": "\x9b2J",
    "del": "del\x7f",
    "bidi-override": "\u202egnp.exe",
    "bidi-isolate": "\u2066left\u2069",
    "line-separator": "a\u2028b",
    "paragraph-separator": "a\u2029b",
    "nul": "nul\x00",
}
ALLOWED_IN_OUTPUT = {ord("\n"), ord("\t")}  # the CLI's own line and column separators


def invoke(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def unsafe_chars(text: str) -> list[str]:
    return [c for c in text if ord(c) in UNSAFE_CODEPOINTS and ord(c) not in ALLOWED_IN_OUTPUT]


def strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(line, parse_constant=refuse)


def hostile_bundle(bundle: Path, text: str) -> Path:
    """``bundle`` (a copy of the default bundle) changed so that its class names and phrases all carry
    ``text``."""
    from textcam.runtime.bundle import Bundle
    from textcam.runtime.bundle_update import update_bundle
    from textcam.runtime.semantics_file import read_store
    from textcam.semantics_store.builder import write_semantics

    with update_bundle(bundle) as update:
        classes = tuple(f"{text}{i}" for i in range(len(update.manifest.classes)))
        update.manifest = update.manifest.replace(classes=classes)
    opened = Bundle.open(bundle)
    store = read_store(opened.semantics_path)
    store = dataclasses.replace(store, phrases=tuple(f"{text} {i}" for i in range(len(store.phrases))))
    write_semantics(opened, store, opened.info.semantics.lda, opened.info.semantics.m)
    return bundle


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module", params=list(HOSTILE), ids=list(HOSTILE))
def hostile(request, make_bundle, tmp_path_factory):
    text = HOSTILE[request.param]
    copy = make_bundle("default", copy=tmp_path_factory.mktemp(request.param) / "hostile.textcam")
    return text, hostile_bundle(copy, text)


# --- the escaping function ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, shown", [
    ("\x1b", "\\x1b"), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r"), ("\x00", "\\x00"), ("\x07", "\\x07"),
    ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\x9b", "\\x9b"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
    ("\u202e", "\\u202e"), ("\u202a", "\\u202a"), ("\u2066", "\\u2066"), ("\u2069", "\\u2069"),
    ("\u200f", "\\u200f"), ("\u061c", "\\u061c"),
])
def test_safe_text_escapes_control_characters(raw, shown):
    assert safe_text(f"a{raw}b") == f"a{shown}b"
    assert not unsafe_chars(safe_text(raw))


@pytest.mark.parametrize("text", ["plain", "café", "红色 object", "émoji 🎨", "C:\\path\\x.png", "a b"])
def test_safe_text_keeps_printable_text(text):
    assert safe_text(text) == text


@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
def test_safe_name_has_no_control_characters(name):
    assert not [c for c in safe_name(name) if ord(c) in UNSAFE_CODEPOINTS]


# --- hostile class names and phrases through each command -------------------------------------------------


def test_info_escapes_class_names(hostile):
    text, bundle = hostile
    result = invoke("info", bundle)
    assert result.exit_code == 0, result.output
    assert not unsafe_chars(result.output) and "\t" not in result.output
    assert safe_text(f"{text}0") in result.output
    assert len(result.output.splitlines()) == len(invoke("info", DEFAULT).output.splitlines())


def test_info_json_is_valid_and_keeps_the_names(hostile):
    text, bundle = hostile
    result = invoke("info", bundle, "--json")
    assert result.exit_code == 0, result.output
    assert result.output.isascii()
    assert strict_json(result.output)["classes"][0] == f"{text}0"


def test_explain_text_escapes_label_and_phrases(hostile, image):
    text, bundle = hostile
    result = invoke("explain", bundle, image)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0].split("\t")) == 4, lines
    assert not unsafe_chars(result.output)
    assert safe_text(text) in lines[0].split("\t")[1] and safe_text(text) in lines[0].split("\t")[3]


def test_explain_json_keeps_the_names_exactly(hostile, image):
    text, bundle = hostile
    result = invoke("explain", bundle, image, "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].isascii()
    record = strict_json(lines[0])
    assert record["label"].startswith(text) and record["concepts"][0]["phrase"].startswith(text)


def test_explain_overlay_names_have_no_control_characters(hostile, image, tmp_path):
    text, bundle = hostile
    source = tmp_path / f"in{text.replace('/', '_').replace(chr(0), '_')}.png"
    shutil.copy(image, source)
    out = tmp_path / "out"
    result = invoke("explain", bundle, source, "--out", out, "--groups")
    assert result.exit_code == 0, result.output
    names = [p.name for p in out.iterdir()]
    assert len(names) >= 2 and all(not [c for c in n if ord(c) in UNSAFE_CODEPOINTS] for n in names), names
    assert not unsafe_chars(result.output)


def test_demo_escapes_label_and_phrases(hostile, tmp_path):
    text, bundle = hostile
    result = invoke("demo", "--bundle", bundle, "--count", "1", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0].split("\t")) == 4, lines
    assert not unsafe_chars(result.output) and safe_text(text) in lines[0]


@pytest.mark.parametrize("key", ["osc-retitle", "newline-forge", "bidi-override", "line-separator", "c1-csi"])
def test_file_names_in_results_and_errors_are_escaped(key, image, tmp_path):
    text = HOSTILE[key]
    good = tmp_path / f"good{text}.png"
    shutil.copy(image, good)
    missing = tmp_path / f"missing{text}.png"
    result = invoke("explain", "default", good, missing)
    assert result.exit_code == 1
    assert not unsafe_chars(result.output)
    assert safe_text(good) in result.stdout and safe_text(missing) in result.stderr
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("key", ["osc-retitle", "newline-forge", "bidi-override"])
def test_group_error_handler_escapes_file_names(key, tmp_path):
    result = invoke("info", tmp_path / f"nothing{HOSTILE[key]}")
    assert result.exit_code == 1
    assert not unsafe_chars(result.output) and len(result.output.splitlines()) == 1
    assert result.output.startswith("error: ")


@pytest.mark.parametrize("key", ["osc-retitle", "newline-forge"])
def test_usage_errors_escape_the_value(key):
    result = invoke("explain", "default", "x.png", "--backend", HOSTILE[key])
    assert result.exit_code == 2
    assert not unsafe_chars(result.output)


# --- JSON ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_json_text_refuses_non_finite_numbers(value):
    text, ok = json_text({"source": "a.png", "score": value})
    assert not ok
    record = strict_json(text)
    assert record["source"] == "a.png" and "non-finite" in record["error"]


def test_json_text_passes_finite_records():
    text, ok = json_text({"source": "a\x1b.png", "score": 0.5})
    assert ok and text.isascii() and strict_json(text)["source"] == "a\x1b.png"


@pytest.mark.parametrize("field", ["logits_max_rel_err", "cam_max_abs_err"])
def test_info_json_with_nan_in_the_manifest_stays_valid_json(field, make_bundle, tmp_path):
    bundle = make_bundle("default", copy=tmp_path / "nan.textcam")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.setdefault("verification", {})[field] = float("nan")
    (bundle / "manifest.json").write_text(json.dumps(manifest))  # Python writes NaN, invalid JSON
    result = invoke("info", bundle, "--json")
    if result.exit_code == 1 and result.stdout == "":  # refused when the manifest is read: also fine
        assert result.stderr.startswith("error: ")
        return
    assert result.exit_code == 1
    assert "error" in strict_json(result.stdout)


def test_explain_json_reports_failures_in_input_order(image, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    inputs = [image, tmp_path / "missing.png", image, broken, image]
    result = invoke("explain", "default", *inputs, "--json", "--batch-size", "2")
    assert result.exit_code == 1
    records = [strict_json(line) for line in result.stdout.splitlines()]
    assert [r["source"] for r in records] == [str(p) for p in inputs]
    assert ["error" in r for r in records] == [False, True, False, True, False]
    assert "2 of 5 image(s) could not be explained" in result.stderr


def test_explain_text_keeps_input_order(image, tmp_path):
    other = tmp_path / "other.png"
    shutil.copy(image, other)
    inputs = [image, tmp_path / "missing.png", other]
    result = invoke("explain", "default", *inputs, "--batch-size", "4")
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(image), str(other)]


# --- usage errors: exit status 2 -----------------------------------------------------------------------

USAGE = {
    "explain backend": ("explain", "default", "x.png", "--backend", "nope"),
    "explain precision": ("explain", "default", "x.png", "--precision", "fp8"),
    "explain alpha nan": ("explain", "default", "x.png", "--alpha", "nan"),
    "explain alpha inf": ("explain", "default", "x.png", "--alpha", "inf"),
    "explain alpha 2": ("explain", "default", "x.png", "--alpha", "2"),
    "explain batch 0": ("explain", "default", "x.png", "--batch-size", "0"),
    "explain threads 0": ("explain", "default", "x.png", "--threads", "0"),
    "explain class -1": ("explain", "default", "x.png", "--class-index", "-1"),
    "explain class abc": ("explain", "default", "x.png", "--class-index", "abc"),
    "explain no images": ("explain", "default"),
    "explain unknown option": ("explain", "default", "x.png", "--nope"),
    "bench backend": ("bench", "default", "--backend", "nope"),
    "bench precision": ("bench", "default", "--precision", "fp8"),
    "bench rounds 0": ("bench", "default", "--rounds", "0"),
    "bench batch sizes 0": ("bench", "default", "--batch-sizes", "0"),
    "bench batch sizes abc": ("bench", "default", "--batch-sizes", "a,b"),
    "bench threads 0": ("bench", "default", "--threads", "0"),
    "demo seed -1": ("demo", "--seed", "-1"),
    "demo count 0": ("demo", "--count", "0"),
    "demo count 201": ("demo", "--count", "201"),
    "build-engine precision": ("build-engine", "default", "--precision", "fp8"),
    "build-engine concurrency 0": ("build-engine", "default", "--concurrency", "0"),
    "build-engine workspace nan": ("build-engine", "default", "--workspace-gb", "nan"),
    "build-engine workspace 0": ("build-engine", "default", "--workspace-gb", "0"),
    "build-engine device -1": ("build-engine", "default", "--device", "-1"),
    "export method": ("export", "--model", "x:y", "--method", "gradcm", "-o", "o.textcam"),
    "export layout": ("export", "--model", "x:y", "--layout", "nwhc", "-o", "o.textcam"),
    "export input size": ("export", "--model", "x:y", "--input-size", "0", "-o", "o.textcam"),
    "export no output": ("export", "--model", "x:y"),
    "semantics lda": ("semantics", "b", "--probe", "p", "--lda", "nope"),
    "semantics m 0": ("semantics", "b", "--probe", "p", "-m", "0"),
    "semantics batch 0": ("semantics", "b", "--probe", "p", "--batch-size", "0"),
    "semantics no probe": ("semantics", "b"),
    "info unknown option": ("info", "default", "--nope"),
    "selftest backend": ("selftest", "default", "--backend", "nope"),
    "selftest precision": ("selftest", "default", "--precision", "fp8"),
    "selftest threads 0": ("selftest", "default", "--threads", "0"),
    "unknown command": ("explian",),
}


@pytest.mark.parametrize("name", list(USAGE))
def test_usage_errors_exit_2(name):
    result = invoke(*USAGE[name])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert sum(line.startswith("Error: ") for line in result.output.splitlines()) == 1, result.output


def test_option_choices_match_the_runtime():
    from textcam.cli.backend_options import BACKEND_NAMES, PRECISION_NAMES
    from textcam.engines.entries import PRECISIONS
    from textcam.runtime.backends import BACKENDS

    assert tuple(BACKENDS) == BACKEND_NAMES and tuple(PRECISIONS) == PRECISION_NAMES


def test_method_choices_match_the_exporter():
    pytest.importorskip("torch")
    from textcam.cli.export_cmd import METHOD_NAMES
    from textcam.export.cam_methods import METHODS

    assert set(METHODS) == set(METHOD_NAMES)


@pytest.mark.parametrize("value", ["0.5,nan,0.5", "inf,0.5,0.5"])
def test_export_mean_must_be_finite(value):
    from textcam.cli.export_cmd import _floats
    from textcam.errors import TextcamError

    with pytest.raises(TextcamError, match="finite"):
        _floats("--mean", value)


# --- the built-in default bundle -----------------------------------------------------------------------


def test_info_default_names_the_built_in_bundle():
    result = invoke("info", "default")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"bundle      {DEFAULT}"


def test_explain_and_demo_accept_default(image, tmp_path):
    assert invoke("explain", "default", image).exit_code == 0
    result = invoke("demo", "--bundle", "default", "--count", "1", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [("semantics", "default", "--probe", "p", "--clip", "x"),
                                     ("build-engine", "default")])
def test_writing_commands_refuse_the_built_in_bundle(command):
    result = invoke(*command)
    assert result.exit_code == 1 and "read-only" in result.output and len(result.output.splitlines()) == 1


def test_default_is_the_built_in_even_beside_a_directory_named_default(tmp_path, monkeypatch):
    (tmp_path / "default").mkdir()
    monkeypatch.chdir(tmp_path)
    assert invoke("info", "default").output.splitlines()[0] == f"bundle      {DEFAULT}"
    local = invoke("info", "./default")
    assert local.exit_code == 1 and local.output.startswith("error: ")


@pytest.mark.parametrize("command", ["info", "explain", "bench", "demo", "semantics", "build-engine", "selftest"])
def test_help_documents_default(command):
    assert "'default'" in " ".join(invoke(command, "--help").output.split())


# --- output that cannot be written ----------------------------------------------------------------------


def run_shell(command: str, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)


@pytest.mark.parametrize("redirect", ["> /dev/full", "| true", ">&-"])
@pytest.mark.parametrize("command", ["info default", "info default --json", "explain default {image}"])
def test_unwritable_stdout_gives_one_line(command, redirect, image, tmp_path):
    line = f"{sys.executable} -m textcam {command.format(image=image)}"
    if redirect == "| true":
        run = run_shell(f"{line} 2> err.txt | true; echo ${{PIPESTATUS[0]}} > rc.txt", tmp_path)
        status = int((tmp_path / "rc.txt").read_text())
        stderr = (tmp_path / "err.txt").read_text()
    else:
        run = run_shell(f"{line} {redirect}", tmp_path)
        status, stderr = run.returncode, run.stderr
    assert status != 0, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and "stdout" in stderr


@pytest.mark.parametrize("command", [("explain", "default", "{image}", "--out", "/dev/full/overlays"),
                                     ("demo", "--count", "1", "--out", "/dev/full/demo"),
                                     ("explain", "default", "{image}", "--out", "{file}/sub"),
                                     ("demo", "--count", "1", "--out", "{file}/sub")])
def test_unwritable_out_gives_one_line(command, image, tmp_path):
    plain = tmp_path / "plain_file"
    plain.write_text("x")
    result = invoke(*[a.format(image=image, file=plain) for a in command])
    assert result.exit_code == 1, result.output
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: --out "), result.stderr


# Root (who runs CI here) writes into a read-only directory by CAP_DAC_OVERRIDE, so the command runs in a
# child that first gives up its capabilities (capset(2): any thread may drop its own); the mode bits then
# hold for it as for any user. A failed capset raises, and the test fails rather than pass unchecked.
WITHOUT_CAPABILITIES = """
import ctypes, sys

class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class Sets(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

# _LINUX_CAPABILITY_VERSION_3, this thread; both 32-bit halves of every set empty
if ctypes.CDLL(None, use_errno=True).capset(ctypes.byref(Header(0x20080522, 0)), (Sets * 2)()) != 0:
    raise OSError(ctypes.get_errno(), "capset")
from textcam.cli import main
sys.argv = ["textcam", *sys.argv[1:]]
main()
"""


def test_read_only_out_gives_one_line(image, tmp_path):
    if os.geteuid() == 0 and sys.platform != "linux":
        pytest.skip("root passes permission bits here, and capset(2) to give that up is Linux's")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = WITHOUT_CAPABILITIES if os.geteuid() == 0 else "from textcam.cli import main; main()"
    run = subprocess.run([sys.executable, "-c", code, "explain", "default", str(image), "--out", str(locked / "o")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and run.stderr.startswith("error: --out "), run.stderr
    assert len(run.stderr.splitlines()) == 1 and not (locked / "o").exists()


# --- bench on a busy machine ----------------------------------------------------------------------------


@pytest.mark.parametrize("load, warned", [(0.1, False), (10_000.0, True)])
def test_bench_load_warning(load, warned, monkeypatch):
    from textcam.cli.bench_cmd import load_warning

    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert (load_warning() is not None) == warned


def test_bench_prints_the_load_warning_on_stderr(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (10_000.0, 0.0, 0.0))
    result = invoke("bench", "default", "--rounds", "1", "--batch-sizes", "1", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: the 1-minute load average") and "warning" not in result.stdout
    strict_json(result.stdout)


# --- export: --force and the model module ----------------------------------------------------------------


def test_export_refuses_an_existing_bundle_without_force(make_bundle, tmp_path):
    pytest.importorskip("torch")
    out = make_bundle("default", copy=tmp_path / "b.textcam")
    result = invoke("export", "--model", "no_such_module_anywhere:build", "-o", out)
    assert result.exit_code == 1 and "--force" in result.output and len(result.output.splitlines()) == 1
    forced = invoke("export", "--model", "no_such_module_anywhere:build", "-o", out, "--force")
    assert forced.exit_code == 1 and "cannot import" in forced.stderr  # got past the check, to the model


def test_export_bundle_refuses_an_existing_bundle_without_force(make_bundle, tmp_path):
    torch = pytest.importorskip("torch")
    from textcam.errors import TextcamError
    from textcam.export import export_bundle

    out = make_bundle("default", copy=tmp_path / "b.textcam")
    with pytest.raises(TextcamError, match="force=True"):
        export_bundle(torch.nn.Conv2d(3, 3, 1), None, out)


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    (tmp_path / "needs_missing_dep.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('config file not found\\nsecond line')\n")
    (tmp_path / "beside_me.py").write_text("import torch\ndef build():\n    return torch.nn.Conv2d(3, 3, 1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), os.getcwd())])
    yield tmp_path
    for name in ("needs_missing_dep", "raises_on_import", "beside_me"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("spec, match", [
    ("mynet_not_here:build", r"cannot import 'mynet_not_here' \(module not found.*run textcam from the folder "
                             r"that holds mynet_not_here\.py, or set PYTHONPATH"),
    ("pkg_not_here.models:build", r"cannot import 'pkg_not_here\.models' \(module not found.*PYTHONPATH"),
    ("needs_missing_dep:build", r"importing 'needs_missing_dep' raised ModuleNotFoundError: No module named "
                                r"'no_such_dependency_xyz'$"),
    ("raises_on_import:build", r"importing 'raises_on_import' raised RuntimeError: config file not found$"),
])
def test_model_module_errors(user_modules, spec, match):
    pytest.importorskip("torch")
    import re

    from textcam.errors import TextcamError
    from textcam.export import load_model

    with pytest.raises(TextcamError) as info:
        load_model(spec)
    assert "\n" not in str(info.value) and re.search(match, str(info.value)), str(info.value)


def test_model_module_in_the_current_directory_is_found(user_modules):
    pytest.importorskip("torch")
    from textcam.export import load_model

    assert load_model("beside_me:build").module.out_channels == 3
