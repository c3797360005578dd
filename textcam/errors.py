"""The one exception type users see.

Every error that is the user's to fix (a bad argument, a file that is not what it should be)
is raised as :class:`TextcamError` with a one-line message that names the argument or file and
says what to do. The CLI prints that line and exits non-zero; it never shows a traceback for it.
"""


class TextcamError(Exception):
    """A problem with the user's input, reported in one line."""


def did_you_mean(name: str, candidates) -> str:
    """'; did you mean a, b?' for the closest candidates, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, for one-line reports."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
