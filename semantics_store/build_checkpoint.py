"""Resuming an interrupted ``textcam semantics`` build from its last completed phase.

A checkpoint is a folder: ``header.json`` (what the build is of) and one file per completed phase,
``scan.npz`` (each channel's selected images, the readable count, the unreadable files),
``embed.npz`` (the CLIP embeddings of the selected images) and ``lda.npz`` (the directions). Each is
written atomically, so a kill leaves a phase either complete or absent, and each carries the header
again, so a phase file from another build is never read as this one's.

The header binds the checkpoint to its inputs: the bundle's ``model.onnx`` sha256, the probe list's
fingerprint (every listed path with its size and modification time in nanoseconds: a stat per file,
not a read, so a million-image probe set costs seconds; a file rewritten with the same size and
mtime is not noticed; for Parquet or tar shards, each shard's path, size, mtime and image count), M,
the LDA mode, the CLIP model id and the tie-break seed. A checkpoint whose
header differs is refused, naming the fields, never mixed in.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from textcam.errors import TextcamError
from textcam.runtime.bundle_files import write_file_atomic

FORMAT = 1
PHASES = ("scan", "embed", "lda")
HEADER_FILE = "header.json"


def probe_fingerprint(paths: list[Path]) -> str:
    """sha256 over (absolute path, size, mtime_ns) of every listed image, in listing order."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1  # a missing file is part of the listing too; the scan reports it
        digest.update(os.fsencode(os.path.abspath(path)) + f"\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def build_header(model_sha256: str, probe: list[Path] | Any, m: int, lda: str, clip_model: str, seed: int) -> dict:
    """``probe``: the listed files, or a :class:`~textcam.semantics_store.probe_source.ProbeSet` (whose
    shards are fingerprinted each by path, size, mtime and image count instead)."""
    if isinstance(probe, list):
        images, fingerprint = len(probe), probe_fingerprint(probe)
    else:
        images, fingerprint = probe.count, probe.fingerprint()
    return {"format": FORMAT, "model_sha256": model_sha256,
            "probe": {"images": images, "sha256": fingerprint},
            "m": int(m), "lda": lda, "clip_model": clip_model, "tie_break_seed": int(seed)}


def header_digest(header: dict) -> str:
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def _differences(found: Any, expected: Any, prefix: str = "") -> list[str]:
    if isinstance(found, dict) and isinstance(expected, dict):
        names = sorted(set(found) | set(expected))
        return [d for name in names for d in _differences(found.get(name), expected.get(name), f"{prefix}{name}.")]
    if found == expected:
        return []
    return [f"{prefix.rstrip('.')} {_short(found)} (this build: {_short(expected)})"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:13] + '..."'  # enough of a sha256 to tell two apart


class BuildCheckpoint:
    """The checkpoint folder of one build; :meth:`open` refuses one made for other inputs."""

    def __init__(self, folder: Path, header: dict):
        self.folder = Path(folder)
        self.header = header
        self._header_text = json.dumps(header, sort_keys=True)

    @classmethod
    def open(cls, folder: str | Path, header: dict) -> BuildCheckpoint:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise TextcamError(f"--resume-dir {folder}: not a folder")
        checkpoint = cls(folder, header)
        path = folder / HEADER_FILE
        if path.exists():
            checkpoint._check(checkpoint._read_header(path), path)
        else:
            checkpoint._write(HEADER_FILE, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode())
        return checkpoint

    def _write(self, name: str, data: bytes) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_file_atomic(self.folder / name, data)
        except OSError as exc:
            raise TextcamError(f"--resume-dir {self.folder}: cannot write {name} ({exc.strerror or exc})") from None

    def _read_header(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TextcamError(f"checkpoint {path}: unreadable ({exc}); delete the folder to start over") from None

    def _check(self, found: Any, where: Path) -> None:
        if found == self.header:
            return
        differences = _differences(found, self.header) if isinstance(found, dict) else ["not a header"]
        raise TextcamError(
            f"checkpoint {where} is for another build: {'; '.join(differences)}; "
            f"delete it or choose another --resume-dir"
        )

    def done(self) -> list[str]:
        return [phase for phase in PHASES if (self.folder / f"{phase}.npz").is_file()]

    def save(self, phase: str, **arrays: Any) -> None:
        """Write one phase's results atomically (JSON-able values go in as text, arrays as they are)."""
        buffer = io.BytesIO()
        entries = {name: (np.asarray(json.dumps(value)) if not isinstance(value, np.ndarray) else value)
                   for name, value in arrays.items()}
        np.savez(buffer, header=np.asarray(self._header_text), **entries)
        self._write(f"{phase}.npz", buffer.getvalue())

    def load(self, phase: str) -> dict[str, Any] | None:
        """A completed phase's results, or None if it has not completed. Values saved as JSON come back decoded."""
        path = self.folder / f"{phase}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                contents = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise TextcamError(f"checkpoint {path}: unreadable ({exc}); delete the folder to start over") from None
        header = contents.pop("header", None)
        self._check(json.loads(str(header)) if header is not None else None, path)
        return {name: (json.loads(str(value)) if value.dtype.kind == "U" else value)
                for name, value in contents.items()}

    def remove(self) -> None:
        """After a successful build: the checkpoint has served its purpose."""
        for name in (*(f"{phase}.npz" for phase in PHASES), HEADER_FILE):
            (self.folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the user's folder holds other files: leave it
            self.folder.rmdir()
