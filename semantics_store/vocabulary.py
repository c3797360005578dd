"""Vocabularies: built-in visual attributes, the model's own class names, or user files.

A source is ``builtin:attributes`` (general visual attributes), ``builtin:shapes-world`` (the
synthetic world's attributes and distractors, for the default bundle), ``builtin:classes`` or a
path to a UTF-8 file with one phrase per line. Blank lines, ``#`` comments and duplicates are
dropped (and counted), order is kept.

Files are read only when they are regular files (a FIFO would block, ``/dev/zero`` never ends) of
at most :data:`MAX_FILE_BYTES`; a vocabulary holds at most :data:`MAX_PHRASES` phrases of at most
:data:`MAX_PHRASE_CHARS` characters, a template file at most :data:`MAX_TEMPLATES` templates.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from textcam.errors import TextcamError

BUILTIN_FILES = {"builtin:attributes": "attributes.txt", "builtin:shapes-world": "shapes_world.txt"}
BUILTINS = (*BUILTIN_FILES, "builtin:classes")
DEFAULT_TEMPLATES = ("a photo of {}.", "a photo of something {}.", "an image showing {}.", "{}")
MAX_FILE_BYTES = 16 * 2**20
"""Largest vocabulary, template or class-name file read (16 MiB)."""
MAX_PHRASES = 100_000
"""Most phrases in one vocabulary (all sources together, after removing duplicates)."""
MAX_PHRASE_CHARS = 300
"""Longest phrase or template, in characters (CLIP reads 77 tokens at most anyway)."""
MAX_TEMPLATES = 100
"""Most prompt templates (each phrase is embedded once per template)."""


@dataclass
class Vocabulary:
    phrases: list[str]
    sources: list[str]
    dropped_duplicates: int = 0
    dropped_blank: int = 0


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_text_file(path: Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``, which must be a regular file of at most ``max_bytes``.

    The type is checked before opening (a FIFO would block the open) and again on the open file
    (opened non-blocking, so a swap in between cannot hang either); at most ``max_bytes + 1`` bytes
    are read, so a file that grows is caught too.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise TextcamError(f"{what} {path}: file not found") from None
    except OSError as exc:
        raise TextcamError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise TextcamError(f"{what} {path}: {_kind(mode)}, not a regular file; give a text file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise TextcamError(f"{what} {path}: {_kind(info.st_mode)}, not a regular file; give a text file")
            data = b"" if info.st_size > max_bytes else handle.read(max_bytes + 1)
    except OSError as exc:
        raise TextcamError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if info.st_size > max_bytes or len(data) > max_bytes:
        raise TextcamError(f"{what} {path}: larger than the limit of {max_bytes // 2**20} MiB "
                           f"({max_bytes} bytes); split or shorten it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextcamError(f"{what} {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _read_lines(path: Path, what: str) -> list[str]:
    return read_text_file(path, what).splitlines()


def _check_length(text: str, where: str, kind: str) -> None:
    if len(text) > MAX_PHRASE_CHARS:
        raise TextcamError(f"{where}: a {kind} of {len(text)} characters ({text[:40]!r}...) exceeds the limit of "
                           f"{MAX_PHRASE_CHARS} characters; shorten it")


def builtin_phrases(source: str = "builtin:attributes") -> list[str]:
    """The phrases of a built-in vocabulary file (``builtin:attributes`` or ``builtin:shapes-world``)."""
    folder = resources.files("textcam.semantics_store").joinpath("vocabularies")
    text = folder.joinpath(BUILTIN_FILES[source]).read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def load_vocabulary(sources: Sequence[str], class_names: Sequence[str]) -> Vocabulary:
    """Merge ``sources`` into one de-duplicated phrase list."""
    phrases: list[str] = []
    seen: set[str] = set()
    duplicates = blanks = 0
    for source in sources:
        if source in BUILTIN_FILES:
            lines = builtin_phrases(source)
        elif source == "builtin:classes":
            lines = [c.replace("_", " ") for c in class_names]
        elif source.startswith("builtin:"):
            raise TextcamError(f"vocab {source}: unknown built-in; choose {', '.join(BUILTINS)} or a file")
        else:
            lines = _read_lines(Path(source), "vocab")
            if not any(line.strip() for line in lines):
                raise TextcamError(f"vocab {source}: the file is empty; expected one phrase per line")
        where = f"vocab {source}"
        for raw in lines:
            phrase = " ".join(raw.split())
            if not phrase or phrase.startswith("#"):
                blanks += 1
                continue
            _check_length(phrase, where, "phrase")
            if phrase.casefold() in seen:
                duplicates += 1
                continue
            seen.add(phrase.casefold())
            phrases.append(phrase)
            if len(phrases) > MAX_PHRASES:
                raise TextcamError(f"{where}: more than the limit of {MAX_PHRASES} phrases in the vocabulary; "
                                   "use fewer or shorter sources")
    if len(phrases) < 2:
        raise TextcamError(
            f"vocab: {len(phrases)} distinct phrase(s) after removing {duplicates} duplicate(s); "
            "ranking needs at least 2"
        )
    return Vocabulary(phrases, list(sources), duplicates, blanks)


def load_templates(source: str | Path | Sequence[str] | None) -> list[str]:
    """Prompt templates: the defaults (None), a file with one per line, or a list of strings."""
    if source is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(source, (str, Path)):
        where = f"templates {source}"
        templates = [line.strip() for line in _read_lines(Path(source), "templates") if line.strip()]
    else:
        where = "templates"
        templates = [str(t).strip() for t in source if str(t).strip()]
    if len(templates) > MAX_TEMPLATES:
        raise TextcamError(f"{where}: {len(templates)} templates, more than the limit of {MAX_TEMPLATES}; use fewer")
    for template in templates:
        _check_length(template, where, "template")
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise TextcamError(
            f"{where}: every template needs exactly one '{{}}' where the phrase goes"
            + (f" (e.g. {bad[0]!r} does not)" if bad else "; none given")
        )
    return templates
