"""Terminal-safe text: untrusted strings (class names, phrases, file names) shown as visible escapes.

A class name from a manifest, a phrase from a vocabulary file or a file name can hold control
characters: an escape sequence retitles or repaints the terminal, a newline or tab forges result
lines and columns, a bidi override reverses what follows. Every string the CLI prints as text goes
through :func:`safe_text` (JSON output is already escaped by ``json.dumps``'s ASCII mode).
"""

from __future__ import annotations

import json
from typing import Any

_BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_UNSAFE = (*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *_BIDI_CONTROLS)
_ESCAPES = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_TABLE = {code: _ESCAPES.get(code, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _UNSAFE}
UNSAFE_CODEPOINTS = frozenset(_UNSAFE)
"""C0 and C1 controls, DEL, the Unicode line/paragraph separators and the bidi controls."""


def safe_text(value: Any) -> str:
    """``str(value)`` with every control character as a visible escape (``\\x1b``, ``\\n``, ``\\u202e``)."""
    return str(value).translate(_TABLE)


def safe_name(value: Any, replacement: str = "_") -> str:
    """``str(value)`` with every control character replaced, for use inside a file name."""
    return "".join(replacement if ord(c) in UNSAFE_CODEPOINTS else c for c in str(value))


def json_text(record: Any, **kwargs) -> tuple[str, bool]:
    """``(text, ok)``: strict JSON (ASCII, no NaN/Infinity) of ``record``, or, when it holds a
    non-finite number, an error record (``ok`` False; the caller then exits non-zero).

    Non-finite numbers are refused where they enter (bundles, options); this is the last guard, so
    the output stays valid JSON for every consumer.
    """
    try:
        return json.dumps(record, allow_nan=False, ensure_ascii=True, **kwargs), True
    except ValueError:
        error: dict[str, Any] = {"error": "the result holds a non-finite number (NaN or infinity); not reported"}
        if isinstance(record, dict) and isinstance(record.get("source"), str):
            error = {"source": record["source"], **error}
        return json.dumps(error, ensure_ascii=True, **kwargs), False
