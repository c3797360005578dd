"""CLIP image embeddings cached on disk, keyed by (CLIP model, file content hash).

A rebuild with another vocabulary, M or LDA mode re-embeds nothing; a changed file gets a new
key. One ``.npy`` per image under ``DIR/<model>/<hash[:2]>/<hash>.npy``, written atomically.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np

from textcam.runtime.bundle_files import write_file_atomic


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class EmbeddingCache:
    def __init__(self, root: Path | None, model_id: str):
        self.folder = Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id) if root else None

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        if self.folder is None:
            return None
        path = self._path(key)
        try:
            return np.load(path) if path.is_file() else None
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed

    def put(self, key: str, embedding: np.ndarray) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(embedding, dtype=np.float32))
        write_file_atomic(path, buffer.getvalue())
