"""Shared by the concept tests: random unit vectors, semantics stores, and adding a store (and its fused
ranking graph) to a bundle. Import with ``sys.path.insert(0, str(Path(__file__).parent))`` (the
suite runs with --import-mode=importlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textcam.runtime.bundle_files import read_manifest, sha256_file, write_manifest
from textcam.runtime.fused_ranking import FUSED_FILE, fuse_ranking
from textcam.runtime.semantics_file import STORE_FILE, SemanticsStore, write_store

CLASSES = ["circle", "square", "triangle", "star", "cross"]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_unit(rng, *shape) -> np.ndarray:
    return unit(rng.standard_normal(shape)).astype(np.float32)


def make_store(channels=512, dim=32, vocabulary=60, seed=0, model_sha256="", common=0.0):
    """Random unit S [channels, dim] and T [vocabulary, dim]; ``common`` mixes one shared direction into
    every row of both (CLIP's embeddings share a large component)."""
    rng = np.random.default_rng(seed)
    S, T = random_unit(rng, channels, dim), random_unit(rng, vocabulary, dim)
    if common:
        shared = random_unit(rng, dim)
        S = unit(common * shared + np.sqrt(1 - common**2) * S).astype(np.float32)
        T = unit(common * shared + np.sqrt(1 - common**2) * T).astype(np.float32)
    return SemanticsStore(
        channel_semantics=S,
        text_embeddings=T,
        phrases=tuple(f"phrase {i}" for i in range(vocabulary)),
        model_sha256=model_sha256,
        clip_model="test-clip",
    )


def manifest_dict(bundle: Path) -> dict:
    """The bundle's manifest as a plain dict (read_manifest returns a typed Manifest from format 2 on)."""
    manifest = read_manifest(bundle)
    return manifest.to_dict() if hasattr(manifest, "to_dict") else dict(manifest)


def model_sha256(bundle: Path) -> str:
    return manifest_dict(bundle)["model"]["sha256"]


def add_semantics(bundle: Path, store: SemanticsStore, fused_candidates: int | None = 24, defaults=None) -> Path:
    """Write the store (and optionally the fused graph) and record them in the manifest."""
    manifest = manifest_dict(bundle)
    path = write_store(bundle, store)
    entry = {
        "file": STORE_FILE, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
        "channels": store.channels, "dim": store.dim, "vocabulary_size": len(store.phrases),
        "clip_model": store.clip_model, "lda": "shrinkage", "m": 50,
        "defaults": defaults or {"beta": "contribution", "top_k": 4, "candidates": 16, "l1": 0.3, "l2": 0.2,
                                 "steps": 100},
    }
    fused = None
    if fused_candidates:
        # what is fused is what the store holds: fp16 values
        fused = fuse_ranking(bundle / "model.onnx", bundle / FUSED_FILE,
                             store.channel_semantics.astype(np.float16).astype(np.float32),
                             store.text_embeddings.astype(np.float16).astype(np.float32),
                             entry["defaults"].get("beta", "contribution"), fused_candidates)
        fused["size_bytes"] = (bundle / FUSED_FILE).stat().st_size
    if manifest.get("format_version", 1) >= 2:  # format 2: fused_graph is a top-level section
        manifest["semantics"], manifest["fused_graph"] = entry, fused
    else:
        manifest["semantics"] = {**entry, "fused_graph": fused}
    write_manifest(bundle, manifest)
    return bundle


def random_batch(seed, count=3, size=64):
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)
