"""``semantics.safetensors``: the channel semantics store, its format and its checks.

Arrays (fp16, rows L2-normalized):

- ``channel_semantics`` [C, D]: per channel of the explained layer, its direction in CLIP's
  joint image-text space (LDA between the images that activate it most and least);
- ``text_embeddings`` [V, D]: the vocabulary's phrases embedded with CLIP's text tower.

Metadata (safetensors allows str -> str; lists and dicts are JSON): ``format``,
``format_version``, ``phrases``, ``templates``, ``clip_model``, ``lda`` (mode, M, ...), ``probe``
(a description of the probe set), ``model_sha256`` (the ``model.onnx`` the scan ran), ``channels``,
``dim``. Writer: :mod:`textcam.semantics_store`; reader: :func:`read_store` (the runtime).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textcam.errors import TextcamError, first_line

STORE_FORMAT = "textcam-semantics"
STORE_VERSION = 1
JSON_KEYS = ("phrases", "templates", "lda", "probe")


@dataclass(frozen=True)
class SemanticsStore:
    channel_semantics: np.ndarray  # float32 [C, D], unit rows
    text_embeddings: np.ndarray  # float32 [V, D], unit rows
    phrases: tuple[str, ...]
    model_sha256: str
    clip_model: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.channel_semantics.shape[0]

    @property
    def dim(self) -> int:
        return self.channel_semantics.shape[1]


def store_bytes(store: SemanticsStore) -> bytes:
    """Serialize a store (fp16 arrays + JSON metadata) to safetensors bytes."""
    from safetensors.numpy import save

    _check_shapes(store.channel_semantics, store.text_embeddings, store.phrases, "store")
    metadata = {k: v for k, v in store.metadata.items() if k not in JSON_KEYS and isinstance(v, str)}
    metadata.update({k: json.dumps(store.metadata[k]) for k in JSON_KEYS if k in store.metadata})
    metadata.update(
        format=STORE_FORMAT,
        format_version=str(STORE_VERSION),
        phrases=json.dumps(list(store.phrases)),
        model_sha256=store.model_sha256,
        clip_model=store.clip_model,
        channels=str(store.channels),
        dim=str(store.dim),
    )
    tensors = {
        "channel_semantics": np.ascontiguousarray(store.channel_semantics, dtype=np.float16),
        "text_embeddings": np.ascontiguousarray(store.text_embeddings, dtype=np.float16),
    }
    return save(tensors, metadata=metadata)


def read_store(path: Path, model_sha256: str | None = None, channels: int | None = None) -> SemanticsStore:
    """Load and validate a store; with ``model_sha256``/``channels``, check it fits the bundle."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TextcamError(f"{path}: missing; run `textcam semantics` to build it")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise TextcamError(
            f"{path}: not a readable safetensors file ({first_line(exc)}); re-run `textcam semantics`"
        ) from None
    if metadata.get("format") != STORE_FORMAT:
        raise TextcamError(f"{path}: not a textcam semantics store")
    version = metadata.get("format_version", "0")
    if not version.isdigit() or int(version) > STORE_VERSION:
        raise TextcamError(f"{path}: store format {metadata['format_version']} is newer than this textcam; upgrade")
    if "channel_semantics" not in arrays or "text_embeddings" not in arrays:
        raise TextcamError(f"{path}: lacks channel_semantics or text_embeddings; re-run `textcam semantics`")
    try:
        phrases = json.loads(metadata["phrases"])
        if not isinstance(phrases, list):
            raise ValueError("phrases is not a list")
        phrases = tuple(phrases)
        parsed = {k: json.loads(metadata[k]) for k in JSON_KEYS if k in metadata}
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise TextcamError(f"{path}: damaged metadata ({exc}); re-run `textcam semantics`") from None
    semantics = arrays["channel_semantics"].astype(np.float32)
    text = arrays["text_embeddings"].astype(np.float32)
    _check_shapes(semantics, text, phrases, str(path))
    if model_sha256 is not None and metadata.get("model_sha256") != model_sha256:
        raise TextcamError(
            f"{path}: computed for another model (model.onnx checksum differs); re-run `textcam semantics`"
        )
    if channels is not None and semantics.shape[0] != channels:
        raise TextcamError(
            f"{path}: semantics were computed for a layer with {semantics.shape[0]} channels, this model's layer "
            f"has {channels}: re-run `textcam semantics`"
        )
    metadata.update(parsed)
    return SemanticsStore(semantics, text, phrases, metadata.get("model_sha256", ""), metadata.get("clip_model", ""),
                          metadata)


def _check_shapes(semantics: np.ndarray, text: np.ndarray, phrases, where: str) -> None:
    if semantics.ndim != 2 or text.ndim != 2:
        raise TextcamError(f"{where}: channel_semantics and text_embeddings must be 2-D arrays")
    if semantics.shape[1] != text.shape[1]:
        raise TextcamError(
            f"{where}: channel semantics have dimension {semantics.shape[1]} but text embeddings "
            f"{text.shape[1]}; both must come from the same CLIP model"
        )
    if text.shape[0] != len(phrases):
        raise TextcamError(f"{where}: {text.shape[0]} text embeddings for {len(phrases)} phrases")
    if not all(isinstance(p, str) and p for p in phrases):
        raise TextcamError(f"{where}: phrases must be non-empty strings; re-run `textcam semantics`")
    for name, array in (("channel_semantics", semantics), ("text_embeddings", text)):
        if array.size == 0 or not np.isfinite(array).all():
            raise TextcamError(f"{where}: {name} is empty or holds NaN/Inf values; re-run `textcam semantics`")
