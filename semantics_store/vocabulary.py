"""Vocabularies: built-in visual attributes, the model's own class names, or user files.

A source is ``builtin:attributes`` (general visual attributes), ``builtin:shapes-world`` (the
synthetic world's attributes and distractors, for the default bundle), ``builtin:classes`` or a
path to a UTF-8 file with one phrase per line. Blank lines, ``#`` comments and duplicates are
dropped (and counted), order is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from textcam.errors import TextcamError

BUILTIN_FILES = {"builtin:attributes": "attributes.txt", "builtin:shapes-world": "shapes_world.txt"}
BUILTINS = (*BUILTIN_FILES, "builtin:classes")
DEFAULT_TEMPLATES = ("a photo of {}.", "a photo of something {}.", "an image showing {}.", "{}")


@dataclass
class Vocabulary:
    phrases: list[str]
    sources: list[str]
    dropped_duplicates: int = 0
    dropped_blank: int = 0


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise TextcamError(f"{what} {path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise TextcamError(f"{what} {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise TextcamError(f"{what} {path}: cannot read it ({exc.strerror})") from None


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
            raise TextcamError(f"--vocab {source}: unknown built-in; choose {', '.join(BUILTINS)} or a file")
        else:
            lines = _read_lines(Path(source), "--vocab")
            if not any(line.strip() for line in lines):
                raise TextcamError(f"--vocab {source}: the file is empty; expected one phrase per line")
        for raw in lines:
            phrase = " ".join(raw.split())
            if not phrase or phrase.startswith("#"):
                blanks += 1
                continue
            if phrase.casefold() in seen:
                duplicates += 1
                continue
            seen.add(phrase.casefold())
            phrases.append(phrase)
    if len(phrases) < 2:
        raise TextcamError(
            f"--vocab: {len(phrases)} distinct phrase(s) after removing {duplicates} duplicate(s); "
            "ranking needs at least 2"
        )
    return Vocabulary(phrases, list(sources), duplicates, blanks)


def load_templates(source: str | Path | Sequence[str] | None) -> list[str]:
    """Prompt templates: the defaults (None), a file with one per line, or a list of strings."""
    if source is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(source, (str, Path)):
        where = f"--templates {source}"
        templates = [line.strip() for line in _read_lines(Path(source), "--templates") if line.strip()]
    else:
        where = "templates"
        templates = [str(t).strip() for t in source if str(t).strip()]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise TextcamError(
            f"{where}: every template needs exactly one '{{}}' where the phrase goes"
            + (f" (e.g. {bad[0]!r} does not)" if bad else "; none given")
        )
    return templates
