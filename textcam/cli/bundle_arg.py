"""The BUNDLE argument: a bundle directory, or ``default`` for the built-in shapes-world bundle.

``default`` always names the built-in bundle (the one ``textcam demo`` uses), whatever the
current directory holds; a directory that happens to be called ``default`` is reached as
``./default``. One rule, so a stray directory can never change what ``default`` means.
"""

from __future__ import annotations

from pathlib import Path

from textcam.errors import TextcamError

DEFAULT_NAME = "default"
BUNDLE_HELP = ("BUNDLE is a bundle directory, or 'default' for the built-in shapes-world bundle "
               "(a directory named default: ./default).")


def default_bundle() -> Path:
    """The built-in default bundle (shapes_world/artifacts/color.textcam), or a one-line error if missing."""
    from textcam.shapes_world import artifacts

    return artifacts.require(artifacts.DEFAULT_BUNDLE)


def resolve_bundle(value: str | Path, *, writes: bool = False) -> Path:
    """The bundle directory ``value`` names; ``default`` is the built-in bundle (read-only: ``writes``
    refuses it, since commands that write would change the installed package)."""
    if str(value) != DEFAULT_NAME:
        return Path(value)
    path = default_bundle()
    if writes:
        raise TextcamError(
            f"BUNDLE default: the built-in bundle is read-only; copy it first (cp -r {path} mine.textcam) "
            "and pass the copy, or pass ./default for a directory named default"
        )
    return path
