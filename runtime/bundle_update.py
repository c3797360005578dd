"""Changing an existing bundle atomically: stage new files, switch the manifest last, then tidy.

Every stage that adds to a bundle (``textcam semantics``, ``textcam build-engine``, later ones)
goes through :func:`update_bundle`::

    with update_bundle("color.textcam") as update:
        store = update.add_bytes("semantics", ".safetensors", data)
        update.manifest = update.manifest.replace(semantics=...)

New files never overwrite the files the current manifest names: each gets a fresh name that
carries its checksum (``semantics-1a2b3c4d5e6f.safetensors``). The manifest is written last, in
one atomic rename. So a crash, a kill or a full disk at any point leaves either the complete old
state (the old manifest and the old files, untouched) or the complete new one. Only after the
switch are files that no manifest names any more removed; what a killed update left behind is
removed by the next one. An exclusive lock on the bundle keeps two updates from interleaving.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from textcam.errors import TextcamError
from textcam.runtime.bundle import Bundle
from textcam.runtime.bundle_files import MANIFEST_FILE, MODEL_FILE, fsync_dir, sha256_file, write_manifest
from textcam.runtime.manifest import FileRef, Manifest

GENERATED = re.compile(
    r"^(semantics(-[0-9a-f]{12})?\.safetensors|model\.semantics(-[0-9a-f]{12})?\.onnx"
    r"|selftest(-[0-9a-f]{12})?\.safetensors|\..+\.tmp)$"
)
"""Names textcam writes into a bundle and may remove once no manifest names them."""
GENERATED_ENGINES = re.compile(r"^(.+\.plan|model\.[a-z0-9]+(-[0-9a-f]{12})?\.onnx|\..+\.tmp)$")


class BundleUpdate:
    """One pending change to a bundle; see the module docstring."""

    def __init__(self, bundle: Bundle, checkpoint: Callable[[str], None]):
        self.bundle = bundle
        self.path = bundle.path
        self.manifest: Manifest = bundle.info
        self.staged: list[Path] = []
        self._checkpoint = checkpoint

    def staging_path(self, stem: str, suffix: str, folder: str = "") -> Path:
        """A fresh temporary path in the bundle for a writer that needs a path (pass it to :meth:`adopt`)."""
        directory = self.path / folder if folder else self.path
        directory.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f"{suffix}.tmp", dir=directory)
        os.close(fd)
        self.staged.append(Path(name))
        return Path(name)

    def adopt(self, staged: Path, stem: str, suffix: str) -> FileRef:
        """Give a fully written staging file its final, checksum-bearing name; returns its FileRef."""
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        digest = sha256_file(staged)
        folder = staged.parent.relative_to(self.path)
        final = staged.parent / f"{stem}-{digest[:12]}{suffix}"
        os.chmod(staged, 0o644)
        os.replace(staged, final)
        self.staged.append(final)
        self._checkpoint(f"staged {final.name}")
        name = final.name if str(folder) == "." else f"{folder.as_posix()}/{final.name}"
        return FileRef(name, digest, final.stat().st_size)

    def add_bytes(self, stem: str, suffix: str, data: bytes, folder: str = "") -> FileRef:
        """Stage ``data`` as a new file ``stem-<sha12>suffix``; returns its FileRef for the manifest."""
        staged = self.staging_path(stem, suffix, folder)
        try:
            with open(staged, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise TextcamError(f"{self.path}: cannot write {stem}{suffix} ({exc.strerror or exc}); the bundle is "
                               "unchanged") from None
        return self.adopt(staged, stem, suffix)

    def commit(self) -> None:
        self._checkpoint("before manifest")
        for folder in {p.parent for p in self.staged}:
            fsync_dir(folder)
        write_manifest(self.path, self.manifest)
        self.staged = []  # the new manifest names them now: a failure from here on must not delete them
        self._checkpoint("after manifest")
        remove_unreferenced(self.path, self.manifest)

    def abandon(self) -> None:
        for path in self.staged:
            if path.name not in _referenced_names(self.bundle.info):  # same content as an existing file
                path.unlink(missing_ok=True)


def _no_checkpoint(_point: str) -> None:
    return None


@contextmanager
def update_bundle(path: str | Path | Bundle, checkpoint: Callable[[str], None] = _no_checkpoint
                  ) -> Iterator[BundleUpdate]:
    """Open ``path`` for one atomic change (see the module docstring).

    ``checkpoint`` is called with a name at each step (after each staged file, before and after
    the manifest switch); the atomicity tests inject failures there.
    """
    bundle_path = path.path if isinstance(path, Bundle) else Path(path)
    if not bundle_path.is_dir():
        raise TextcamError(f"{bundle_path}: not a bundle directory")
    if not os.access(bundle_path, os.W_OK | os.X_OK):
        raise TextcamError(f"{bundle_path}: cannot change the bundle; is it writable?")
    lock = os.open(bundle_path, os.O_RDONLY)  # the directory itself is the lock: no lock file in the bundle
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bundle = _with_sizes(Bundle.open(bundle_path))  # under the lock: another update may just have finished
        update = BundleUpdate(bundle, checkpoint)
        try:
            yield update
            update.commit()
        except BaseException:
            update.abandon()
            raise
    finally:
        os.close(lock)


def _with_sizes(bundle: Bundle) -> Bundle:
    """A format-1 manifest did not record the semantics files' sizes: take them from the checked files."""
    info = bundle.info
    if info.semantics and info.semantics.store.size_bytes is None:
        store = info.semantics.store
        size = bundle.file(store, "semantics").stat().st_size
        info = info.replace(semantics=replace(info.semantics, store=replace(store, size_bytes=size)))
    if info.fused_graph and info.fused_graph.graph.size_bytes is None:
        graph = info.fused_graph.graph
        size = bundle.file(graph, "fused_graph").stat().st_size
        info = info.replace(fused_graph=replace(info.fused_graph, graph=replace(graph, size_bytes=size)))
    return bundle if info is bundle.info else Bundle.from_manifest(bundle.path, info)


def _referenced_names(manifest: Manifest) -> set[str]:
    return set(manifest.files())


def remove_unreferenced(bundle_path: Path, manifest: Manifest) -> list[str]:
    """Delete files textcam generated that ``manifest`` no longer names (best effort)."""
    keep = _referenced_names(manifest) | {MANIFEST_FILE, MODEL_FILE}
    removed = []
    for folder, pattern in (("", GENERATED), ("engines", GENERATED_ENGINES)):
        directory = bundle_path / folder if folder else bundle_path
        try:
            entries = list(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = f"{folder}/{entry.name}" if folder else entry.name
            if name in keep or not pattern.match(entry.name) or not entry.is_file() or entry.is_symlink():
                continue
            try:
                entry.unlink()
                removed.append(name)
            except OSError:
                pass  # a later update tries again
    return removed
