"""The bundle on disk: file names, checksums and atomic writes.

A bundle is a directory (``name.textcam/``) holding ``manifest.json`` and ``model.onnx``
(see the README's "Bundle format"). Export writes it, later stages add to it
(:mod:`textcam.runtime.bundle_update`), the runtime only reads it. Writers never leave a
half-written bundle: a new bundle is assembled in a temporary sibling directory and exchanged
with the old one in one ``renameat2(RENAME_EXCHANGE)`` (so the output path always holds a
complete bundle); single files are written to a temporary name, fsynced and renamed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textcam.errors import TextcamError
from textcam.runtime.manifest import FORMAT_NAME, FORMAT_VERSION, Manifest  # noqa: F401 - re-exported

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"  # ONNX external data, for graphs past protobuf's 2 GB
MAX_MANIFEST_BYTES = 16 << 20
"""A manifest is a few KB (1 MB with a million class names); nothing larger is parsed."""


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def sha256_file(path: Path, limit: int | None = None) -> str:
    """The file's sha256; with ``limit``, of at most its first ``limit`` bytes (a file that grows is cut)."""
    digest = hashlib.sha256()
    left = limit
    with open(path, "rb") as handle:
        while left is None or left > 0:
            block = handle.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a crash after it returns cannot undo the rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def manifest_bytes(manifest: Manifest | dict[str, Any], where: str = MANIFEST_FILE) -> bytes:
    """The manifest as written: validated first (a dict goes through :class:`Manifest`), then JSON."""
    typed = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest, where)
    data = typed.to_dict()
    Manifest.from_dict(data, where)  # what is written must read back
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_manifest(bundle: Path, manifest: Manifest | dict[str, Any]) -> None:
    """Validate and write ``manifest.json`` atomically (the last step of every bundle change)."""
    path = Path(bundle) / MANIFEST_FILE
    write_file_atomic(path, manifest_bytes(manifest, str(path)))
    fsync_dir(Path(bundle))


def read_manifest_text(path: Path) -> Any:
    """``manifest.json`` parsed as JSON, refusing oversize files, special files, NaN/Infinity and deep nesting."""
    bundle = path.parent
    if not bundle.is_dir():
        raise TextcamError(f"{bundle}: not a directory; a bundle is a directory made by `textcam export`")
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise TextcamError(f"{path}: not a regular file; a bundle's manifest is a JSON file")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise TextcamError(f"{path}: {info.st_size:,} bytes, over the {MAX_MANIFEST_BYTES:,}-byte limit "
                               "for a manifest; re-export the bundle")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise TextcamError(f"{path}: missing; is {bundle} a bundle made by `textcam export`?") from None
    except OSError as exc:
        raise TextcamError(f"{path}: cannot read it ({exc.strerror or exc})") from None

    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:200]
        raise TextcamError(f"{path}: unreadable or not JSON ({detail}); re-export the bundle") from None


def read_manifest(bundle: Path) -> Manifest:
    """Read and validate ``manifest.json`` (every check of :class:`Manifest`)."""
    path = Path(bundle) / MANIFEST_FILE
    return Manifest.from_dict(read_manifest_text(path), str(path))


def looks_like_bundle(path: Path) -> bool:
    """True when ``path`` holds a manifest written by textcam (whatever its version or state)."""
    try:
        data = read_manifest_text(Path(path) / MANIFEST_FILE)
    except TextcamError:
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def check_output_dir(out: Path, overwrite: bool = True) -> None:
    """Refuse to write a bundle over a directory that holds something else, or where none can be made.

    ``overwrite=False`` also refuses an existing bundle (``textcam export`` without ``--force``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TextcamError(f"{out}: exists and is not a directory; choose another output path")
    if out.is_dir() and any(out.iterdir()):
        if not looks_like_bundle(out):
            raise TextcamError(
                f"{out}: directory exists and is not a textcam bundle; refusing to overwrite it "
                "(choose a new path or remove the directory)"
            )
        if not overwrite:
            raise TextcamError(f"{out}: a textcam bundle is already there; pass force=True (--force) to replace it, "
                               "or choose another path")
    ancestor = out.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TextcamError(f"{out}: cannot be created because {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TextcamError(f"{out}: cannot be created: no write permission in {ancestor}")


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.(partial|old)$")


def remove_leftovers(out: Path) -> list[Path]:
    """Remove what killed earlier writes of ``out`` left beside it (``.name.PID.xxx.partial|old``).

    Only directories whose process is gone are removed, so a concurrent export keeps its stage.
    """
    removed = []
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = _LEFTOVER.match(sibling.name)
        if not match or match["name"] != out.name or not sibling.is_dir() or sibling.is_symlink():
            continue
        if _process_alive(int(match["pid"])):
            continue
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier run with our pid cannot still be running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system cannot (other kernels, some file systems); callers then fall
    back to two renames.
    """
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


@contextmanager
def staged_bundle_dir(out: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it takes ``out``'s place atomically.

    A replaced bundle is exchanged with the new one in one step, so ``out`` holds a complete
    bundle at every moment. On any error the temporary directory is removed and ``out`` is left
    as it was; directories left by killed earlier runs are removed first.
    """
    out = Path(out).absolute()
    check_output_dir(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise TextcamError(f"{out}: cannot create the bundle there ({exc.strerror or exc})") from None
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp's 0700 would make the bundle private
    try:
        yield stage
        for child in stage.iterdir():
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_dir(stage)
        if out.exists() and exchange_paths(stage, out):
            shutil.rmtree(stage, ignore_errors=True)  # after the swap, the stage holds the old bundle
        elif out.exists():
            retired = stage.with_name(stage.name.replace(".partial", ".old"))
            os.replace(out, retired)
            os.replace(stage, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(stage, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
