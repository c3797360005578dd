"""The bundle on disk: file names, the manifest's format version, checksums and atomic writes.

A bundle is a directory (``name.textcam/``) holding ``manifest.json`` and ``model.onnx``
(see the README's "Bundle format"). Export writes it, later stages add to it, the runtime only
reads it. Writers never leave a half-written bundle: a new bundle is assembled in a temporary
sibling directory and renamed into place; single files are written to a temporary name, fsynced
and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textcam.errors import TextcamError

FORMAT_NAME = "textcam-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    write_file_atomic(Path(bundle) / MANIFEST_FILE, text.encode("utf-8"))


def looks_like_bundle(path: Path) -> bool:
    """True when ``path`` holds a manifest written by textcam (whatever its version)."""
    manifest = Path(path) / MANIFEST_FILE
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text("utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(out: Path) -> None:
    """Refuse to write a bundle over a directory that holds something else, or where none can be made."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TextcamError(f"{out}: exists and is not a directory; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not looks_like_bundle(out):
        raise TextcamError(
            f"{out}: directory exists and is not a textcam bundle; refusing to overwrite it "
            "(choose a new path or remove the directory)"
        )
    ancestor = out.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TextcamError(f"{out}: cannot be created because {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TextcamError(f"{out}: cannot be created: no write permission in {ancestor}")


@contextmanager
def staged_bundle_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` in one rename.

    On any error the temporary directory is removed and ``out`` is left as it was.
    """
    out = Path(out).absolute()
    check_output_dir(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise TextcamError(f"{out}: cannot create the bundle there ({exc.strerror or exc})") from None
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp's 0700 would make the bundle private
    try:
        yield stage
        for child in stage.iterdir():
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        if out.exists():
            retired = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, retired)
            os.replace(stage, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def read_manifest(bundle: Path) -> dict[str, Any]:
    """Read and minimally check ``manifest.json`` (the runtime validates the rest)."""
    path = Path(bundle) / MANIFEST_FILE
    if not Path(bundle).is_dir():
        raise TextcamError(f"{bundle}: not a directory; a bundle is a directory made by `textcam export`")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise TextcamError(f"{path}: missing; is {bundle} a bundle made by `textcam export`?") from None
    except (OSError, ValueError) as exc:
        raise TextcamError(f"{path}: unreadable or not JSON ({exc}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise TextcamError(f"{path}: not a textcam manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TextcamError(
            f"{path}: bundle format version {version} is newer than this textcam supports ({FORMAT_VERSION}); "
            "upgrade textcam"
        )
    return manifest
