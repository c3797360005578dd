"""A bundle owns its files: every hostile or damaged manifest/file is one TextcamError line, nothing
outside the bundle is read, nothing blocks, nothing huge is read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from textcam.errors import TextcamError
from textcam.runtime import Bundle, Explainer
from textcam.shapes_world.artifacts import DEFAULT_BUNDLE as DEFAULT


@pytest.fixture
def bundle(default_bundle_copy) -> Path:
    return default_bundle_copy


def edit(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def section(data: dict, name: str) -> dict:
    """A file-naming section of a format-1 or format-2 manifest."""
    if name == "fused_graph" and data["format_version"] == 1:
        return data["semantics"]["fused_graph"]
    return data[name]


def file_name(bundle: Path, name: str) -> str:
    return section(json.loads((bundle / "manifest.json").read_text()), name)["file"]


def one_line_error(call) -> str:
    with pytest.raises(TextcamError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- manifest.json itself -------------------------------------------------------------------------------------------

MANIFEST_TEXTS = {
    "empty": b"",
    "not json": b"{this is not json",
    "NaN literal": b'{"format": "textcam-bundle", "format_version": NaN}',
    "Infinity literal": b'{"format": "textcam-bundle", "format_version": Infinity}',
    "deep nesting": b"[" * 100000 + b"]" * 100000,
    "binary": bytes(range(256)) * 4,
    "utf-16": '{"format": "textcam-bundle"}'.encode("utf-16"),
    "a list": b"[1, 2, 3]",
    "a string": b'"textcam-bundle"',
    "null": b"null",
    "another format": b'{"format": "onnx-model", "format_version": 1}',
    "future version": b'{"format": "textcam-bundle", "format_version": 99}',
}


@pytest.mark.parametrize("name", list(MANIFEST_TEXTS))
def test_unreadable_manifests(bundle, name):
    (bundle / "manifest.json").write_bytes(MANIFEST_TEXTS[name])
    message = one_line_error(lambda: Bundle.open(bundle))
    assert "manifest.json" in message


def test_an_oversized_manifest_is_not_read(bundle):
    with open(bundle / "manifest.json", "ab") as handle:
        handle.truncate(64 << 20)  # sparse: cheap to make, refused by size
    assert "limit" in one_line_error(lambda: Bundle.open(bundle))


@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero link", "missing", "dangling link"])
def test_special_manifest_files(bundle, kind):
    manifest = bundle / "manifest.json"
    manifest.unlink()
    if kind == "directory":
        manifest.mkdir()
    elif kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "dev-zero link":
        manifest.symlink_to("/dev/zero")
    elif kind == "dangling link":
        manifest.symlink_to(bundle / "nowhere.json")
    message = one_line_error(lambda: Bundle.open(bundle))
    assert "manifest.json" in message


@pytest.mark.parametrize("path", [None, 5, 1.5, ["a"], b"bytes-are-not-accepted"], ids=repr)
def test_bundle_arguments_that_are_not_paths(path):
    assert "bundle" in one_line_error(lambda: Bundle.open(path))


def test_a_bundle_path_that_is_a_file_or_missing(tmp_path):
    (tmp_path / "file.textcam").write_text("x")
    assert "not a directory" in one_line_error(lambda: Bundle.open(tmp_path / "file.textcam"))
    assert "not a directory" in one_line_error(lambda: Bundle.open(tmp_path / "missing.textcam"))


# --- the files a manifest names ---------------------------------------------------------------------------------------

OUTSIDE_NAMES = ["/etc/passwd", "../semantics.safetensors", "../../etc/passwd", "sub/../../x",
                 "./semantics.safetensors"]


@pytest.mark.parametrize("name", OUTSIDE_NAMES)
@pytest.mark.parametrize("kind", ["model", "semantics", "fused_graph"])
def test_names_outside_the_bundle_are_refused(bundle, kind, name):
    edit(bundle, lambda data: section(data, kind).update(file=name))
    message = one_line_error(lambda: Explainer(bundle))
    assert "inside the bundle" in message and "file" in message


@pytest.mark.parametrize("kind", ["semantics", "fused_graph"])
def test_a_missing_checksum_is_refused(bundle, kind):
    edit(bundle, lambda data: section(data, kind).pop("sha256"))
    assert "sha256" in one_line_error(lambda: Explainer(bundle))


def test_a_symlink_leaving_the_bundle_is_refused(bundle, tmp_path):
    store = bundle / file_name(bundle, "semantics")
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(store, outside)
    store.unlink()
    store.symlink_to(outside)
    assert "outside the bundle" in one_line_error(lambda: Explainer(bundle))


def test_a_symlink_inside_the_bundle_is_followed(bundle):
    store = bundle / file_name(bundle, "semantics")
    (bundle / "real.safetensors").write_bytes(store.read_bytes())
    store.unlink()
    store.symlink_to("real.safetensors")
    assert Explainer(bundle).semantics is not None


@pytest.mark.parametrize("kind", ["model", "semantics", "fused_graph"])
@pytest.mark.parametrize("damage", ["missing", "directory", "fifo", "truncated", "one byte changed", "sparse 1 TB",
                                    "link to /dev/zero"])
def test_damaged_files(bundle, kind, damage):
    file = file_name(bundle, kind)
    path = bundle / file
    original = path.read_bytes()
    path.unlink()
    if damage == "directory":
        path.mkdir()
    elif damage == "fifo":
        os.mkfifo(path)  # opening it would block forever: it must be refused by its type
    elif damage == "truncated":
        path.write_bytes(original[: len(original) // 2])
    elif damage == "one byte changed":
        path.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    elif damage == "sparse 1 TB":
        with open(path, "wb") as handle:
            handle.truncate(1 << 40)
    elif damage == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    message = one_line_error(lambda: Explainer(bundle))
    assert file in message
    assert "re-run" in message or "outside" in message


def test_semantics_for_another_layer(bundle):
    edit(bundle, lambda d: d["semantics"].update(channels=64))
    assert "channels" in one_line_error(lambda: Explainer(bundle))


# --- API arguments ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", ["8", 0, -1, True, 2.5, 10**6, None], ids=repr)
def test_bad_batch_sizes(batch_size):
    assert "batch_size" in one_line_error(lambda: Explainer(DEFAULT, batch_size=batch_size))
