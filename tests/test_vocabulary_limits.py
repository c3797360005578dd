"""Vocabulary and template files: regular files only, bounded size, phrase count and length; and the
CLIP's coverage of a vocabulary (the compact tiny CLIP holds only some tokens)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from textcam.errors import TextcamError
from textcam.semantics_store import vocabulary
from textcam.semantics_store.vocabulary import (
    MAX_FILE_BYTES,
    MAX_PHRASE_CHARS,
    MAX_PHRASES,
    MAX_TEMPLATES,
    load_templates,
    load_vocabulary,
    read_text_file,
)
from textcam.shapes_world import artifacts


def finishes(call, seconds: float = 20.0):
    """Run ``call`` in a thread; fail (instead of hanging) if it blocks. Returns its exception or result."""
    box: dict = {}

    def target():
        try:
            box["result"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked reading a special file"
    return box


def special_file(kind: str, folder: Path) -> Path:
    if kind == "fifo":
        path = folder / "pipe"
        os.mkfifo(path)
    elif kind == "fifo-symlink":
        os.mkfifo(folder / "pipe2")
        path = folder / "link"
        path.symlink_to(folder / "pipe2")
    elif kind == "socket":
        path = folder / "sock"
        server = socket.socket(socket.AF_UNIX)
        with contextlib.chdir(folder):  # a relative name: a socket's path is limited to ~107 bytes, tmp_path is not
            server.bind(path.name)
        folder.joinpath(".keep").write_text("")  # the socket file stays after the test
    elif kind == "directory":
        path = folder / "dir"
        path.mkdir()
    else:
        path = Path(kind)
    return path


SPECIAL = ["fifo", "fifo-symlink", "socket", "directory", "/dev/zero", "/dev/null", "/dev/urandom"]


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("what", ["vocab", "templates"])
def test_special_files_are_refused_without_blocking(kind, what, tmp_path):
    if kind.startswith("/dev/") and not Path(kind).exists():
        pytest.skip(f"{kind} missing here")
    path = special_file(kind, tmp_path)
    call = (lambda: load_vocabulary([str(path)], [])) if what == "vocab" else (lambda: load_templates(str(path)))
    box = finishes(call)
    error = box.get("error")
    assert isinstance(error, TextcamError), box
    message = str(error)
    assert message.startswith(f"{what} {path}:") and "not a regular file" in message and "\n" not in message


def test_class_names_special_file_is_refused(tmp_path):
    from textcam.cli.export_cmd import _class_names

    path = special_file("fifo", tmp_path)
    box = finishes(lambda: _class_names(str(path)))
    assert isinstance(box.get("error"), TextcamError) and "not a regular file" in str(box["error"])


def test_symlink_to_a_regular_file_is_read(tmp_path):
    target = tmp_path / "words.txt"
    target.write_text("red\nblue\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    assert load_vocabulary([str(link)], []).phrases == ["red", "blue"]


@pytest.mark.parametrize("size, ok", [(MAX_FILE_BYTES, True), (MAX_FILE_BYTES + 1, False), (2**40, False)])
def test_file_size_limit(size, ok, tmp_path):
    path = tmp_path / "big.txt"
    with open(path, "wb") as handle:  # sparse: the size without the disk use
        handle.write(b"red\nblue\n")
        handle.truncate(size)
    if ok:
        assert read_text_file(path, "--vocab").startswith("red\nblue\n")
    else:
        with pytest.raises(TextcamError, match=r"--vocab .*big\.txt: larger than the limit of 16 MiB"):
            read_text_file(path, "--vocab")


@pytest.mark.parametrize("count, ok", [(MAX_PHRASES, True), (MAX_PHRASES + 1, False)])
def test_phrase_count_limit(count, ok, tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("\n".join(f"p{i}" for i in range(count)))
    if ok:
        assert len(load_vocabulary([str(path)], []).phrases) == count
    else:
        with pytest.raises(TextcamError, match=rf"^vocab .*many\.txt: more than the limit of {MAX_PHRASES} phrases"):
            load_vocabulary([str(path)], [])


@pytest.mark.parametrize("length, ok", [(MAX_PHRASE_CHARS, True), (MAX_PHRASE_CHARS + 1, False), (10_000, False)])
def test_phrase_length_limit(length, ok, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("red\n" + "x" * length + "\n")
    if ok:
        assert len(load_vocabulary([str(path)], []).phrases) == 2
    else:
        with pytest.raises(TextcamError, match=rf"^vocab .*long\.txt: a phrase of {length} characters .* limit of "
                                               rf"{MAX_PHRASE_CHARS} characters"):
            load_vocabulary([str(path)], [])


def test_class_names_count_against_the_length_limit():
    with pytest.raises(TextcamError, match=r"^vocab builtin:classes: a phrase of 400 characters"):
        load_vocabulary(["builtin:classes"], ["a", "y" * 400])


@pytest.mark.parametrize("count, ok", [(MAX_TEMPLATES, True), (MAX_TEMPLATES + 1, False)])
def test_template_count_limit(count, ok, tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("\n".join(f"{{}} {i}" for i in range(count)))
    if ok:
        assert len(load_templates(str(path))) == count
    else:
        with pytest.raises(TextcamError, match=rf"^templates .*templates\.txt: {count} templates, more than the "
                                               rf"limit of {MAX_TEMPLATES}"):
            load_templates(str(path))


def test_template_length_limit(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("a photo of {} " + "z" * MAX_PHRASE_CHARS)
    with pytest.raises(TextcamError, match=r"^templates .*templates\.txt: a template of \d+ characters"):
        load_templates(str(path))


@pytest.mark.parametrize("content, match", [
    (b"\xff\xfe", "not UTF-8 text"),
    (b"", "the file is empty"),
    (b"\n\n# only a comment\n", "ranking needs at least 2"),
])
def test_bad_contents(content, match, tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes(content)
    with pytest.raises(TextcamError, match=match):
        load_vocabulary([str(path)], [])


def test_missing_file(tmp_path):
    with pytest.raises(TextcamError, match=r"^vocab .*nope\.txt: file not found"):
        load_vocabulary([str(tmp_path / "nope.txt")], [])


def test_limits_are_exported_constants():
    assert (MAX_FILE_BYTES, MAX_PHRASES, MAX_PHRASE_CHARS) == (16 * 2**20, 100_000, 300)
    assert {"MAX_FILE_BYTES", "MAX_PHRASES", "MAX_PHRASE_CHARS", "MAX_TEMPLATES"} <= set(dir(vocabulary))


# --- coverage: the words a CLIP can read ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip():
    pytest.importorskip("open_clip")
    from textcam.semantics_store import load_clip

    return load_clip(checkpoint=str(artifacts.CLIP_CHECKPOINT), model_name=artifacts.CLIP_MODEL)


@pytest.fixture(scope="module")
def full_clip():
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from textcam.semantics_store import load_clip

    torch.manual_seed(0)
    return load_clip("textcam-tiny-clip")  # every row initialized: a CLIP that holds its whole vocabulary


def test_shapes_world_vocabulary_is_fully_covered_by_the_tiny_clip(tiny_clip):
    phrases = load_vocabulary(["builtin:shapes-world"], []).phrases
    report = tiny_clip.check_coverage(phrases, vocabulary.DEFAULT_TEMPLATES)
    assert report.covered == report.phrases == len(phrases) and report.fraction == 1.0
    assert report.describe().startswith(f"{len(phrases)} of {len(phrases)} phrases (100.0%) fully covered")


def test_the_shipped_tiny_clip_refuses_builtin_attributes(tiny_clip):
    """The compact checkpoint holds only the rows of the texts it was trained to read (its captions and
    builtin:shapes-world), so the general attribute vocabulary is refused by name, not ranked as nonsense."""
    phrases = load_vocabulary(["builtin:attributes"], []).phrases
    report = tiny_clip.coverage(phrases, vocabulary.DEFAULT_TEMPLATES)
    assert report.fraction < 0.25 and "crimson" in report.missing_words
    with pytest.raises(TextcamError, match=r"builtin:attributes: \d+ of 265 phrase\(s\) cannot be read.*'crimson'"):
        tiny_clip.check_coverage(phrases, vocabulary.DEFAULT_TEMPLATES, where="--vocab builtin:attributes")


@pytest.mark.parametrize("phrases, words, affected", [
    (["zeppelin", "red object", "blue object"], ["zeppelin"], 1),
    (["kangaroo ride", "red object", "submarine"], ["kangaroo", "ride", "submarine"], 2),
    ([f"word{i}x quokka" for i in range(8)] + ["red object"], ["quokka"], 8),
])
def test_tiny_clip_refuses_words_it_does_not_hold(tiny_clip, phrases, words, affected):
    with pytest.raises(TextcamError) as info:
        tiny_clip.check_coverage(phrases, ["{}"])
    message = str(info.value)
    assert "\n" not in message and f"{affected} of {len(phrases)} phrase(s)" in message
    assert all(repr(w) in message for w in words[:5]) and str(artifacts.CLIP_CHECKPOINT) in message


def test_tiny_clip_names_at_most_five_words(tiny_clip):
    words = ["zeppelin", "kangaroo", "submarine", "quokka", "tuxedo", "harpsichord", "volcano"]
    with pytest.raises(TextcamError, match=r"and \d+ more\)") as info:
        tiny_clip.check_coverage([*words, "red object"], ["{}"])
    assert str(info.value).count("'") <= 2 * 5 + 2


def test_tiny_clip_refuses_templates_with_unknown_words(tiny_clip):
    with pytest.raises(TextcamError, match=r"2 of 2 phrase\(s\).*the templates use words it does not hold "
                                           r"\('zeppelin'\).*change the templates"):
        tiny_clip.check_coverage(["red object", "blue object"], ["a zeppelin photo of {}"])


def test_embed_phrases_refuses_unheld_words_too(tiny_clip):
    with pytest.raises(TextcamError, match="cannot be read by the CLIP"):
        tiny_clip.embed_phrases(["zeppelin", "red object"], ["{}"])


@pytest.mark.parametrize("source", ["builtin:attributes", "builtin:shapes-world"])
def test_a_full_clip_covers_every_phrase(full_clip, source):
    phrases = load_vocabulary([source], []).phrases
    report = full_clip.check_coverage(phrases, vocabulary.DEFAULT_TEMPLATES)
    assert report.fraction == 1.0 and report.checked


def test_semantics_command_refuses_before_any_work(default_bundle_copy, tmp_path):
    pytest.importorskip("open_clip")
    from textcam.cli import main

    bundle = default_bundle_copy
    words = tmp_path / "words.txt"
    words.write_text("red object\nzeppelin\nkangaroo\n")
    result = CliRunner().invoke(main, ["semantics", str(bundle), "--probe", str(tmp_path / "no_probe_here"),
                                       "--vocab", str(words), "--clip-checkpoint", str(artifacts.CLIP_CHECKPOINT),
                                       "--clip-model", artifacts.CLIP_MODEL])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "2 of 3 phrase(s)" in lines[0] and "'zeppelin'" in lines[0], result.output


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_semantics_command_refuses_special_vocab_files(kind, default_bundle_copy, tmp_path):
    from textcam.cli import main

    path = special_file(kind, tmp_path)
    bundle = default_bundle_copy
    box = finishes(lambda: CliRunner().invoke(main, ["semantics", str(bundle), "--probe", "p", "--vocab", str(path),
                                                     "--clip", "textcam-tiny-clip"]))
    result = box["result"]
    assert result.exit_code == 1 and "not a regular file" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


@pytest.mark.slow
def test_semantics_command_reports_coverage(default_bundle_copy, tmp_path):
    pytest.importorskip("open_clip")
    from textcam.cli import main
    from textcam.shapes_world import ShapesWorld

    bundle = default_bundle_copy
    probe = tmp_path / "probe"
    ShapesWorld(64, seed=5).write_pngs(probe, 16)
    result = CliRunner().invoke(main, ["semantics", str(bundle), "--probe", str(probe), "-m", "4",
                                       "--vocab", "builtin:shapes-world", "--no-fuse",
                                       "--clip-checkpoint", str(artifacts.CLIP_CHECKPOINT),
                                       "--clip-model", artifacts.CLIP_MODEL])
    assert result.exit_code == 0, result.output
    assert "vocabulary coverage: 50 of 50 phrases (100.0%) fully covered" in result.stdout




@pytest.mark.parametrize("kind", ["fifo", "device", "directory without images", "missing", "empty list", "binary"])
def test_probe_sources_that_cannot_be_read(tmp_path, kind):
    from textcam.semantics_store.probe_set import list_probe_images

    target = tmp_path / "probe"
    if kind == "fifo":
        os.mkfifo(target)  # reading it would block forever
    elif kind == "device":
        target = Path("/dev/zero")  # reading it would never end
    elif kind == "directory without images":
        target.mkdir()
        (target / "notes.txt").write_text("x")
    elif kind == "empty list":
        target.write_text("# only a comment\n\n")
    elif kind == "binary":
        target.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TextcamError) as info:
        list_probe_images(target)
    assert str(info.value).startswith(f"--probe {target}") and "\n" not in str(info.value)
