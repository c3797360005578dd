"""Shared by the concept tests: random unit vectors, semantics stores, and adding a store (and its fused
ranking graph) to a bundle (``make_bundle(..., semantics=store)`` in conftest.py does that for a cached
bundle). conftest.py puts this folder on ``sys.path``, so tests import it as ``semantics_helpers``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textcam.runtime.bundle_files import read_manifest
from textcam.runtime.bundle_update import update_bundle
from textcam.runtime.fused_ranking import fuse_ranking
from textcam.runtime.manifest import FusedGraphSection, SemanticsSection
from textcam.runtime.semantics_file import SemanticsStore, store_bytes

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


def model_sha256(bundle: Path) -> str:
    return read_manifest(bundle).model.graph.sha256


def add_semantics(bundle: Path, store: SemanticsStore, fused_candidates: int | None = 24, defaults=None) -> Path:
    """Stage the store (and optionally the fused graph) and record them, as `textcam semantics` does."""
    defaults = defaults or {"beta": "contribution", "top_k": 4, "candidates": 16, "l1": 0.3, "l2": 0.2, "steps": 100}
    with update_bundle(bundle) as update:
        ref = update.add_bytes("semantics", ".safetensors", store_bytes(store))
        section = SemanticsSection(ref, store.channels, store.dim, len(store.phrases), store.clip_model,
                                   "shrinkage", 50, defaults)
        fused = None
        if fused_candidates:
            staged = update.staging_path("model.semantics", ".onnx")
            # what is fused is what the store holds: fp16 values
            entry = fuse_ranking(bundle / "model.onnx", staged,
                                 store.channel_semantics.astype(np.float16).astype(np.float32),
                                 store.text_embeddings.astype(np.float16).astype(np.float32),
                                 defaults.get("beta", "contribution"), fused_candidates)
            fused = FusedGraphSection(update.adopt(staged, "model.semantics", ".onnx"), entry["candidates"],
                                      entry["beta"])
        update.manifest = update.manifest.replace(semantics=section, fused_graph=fused)
    return bundle


def random_batch(seed, count=3, size=64):
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


def tiny_clip():
    """The built-in tiny CLIP (``textcam-tiny-clip``), built after a fixed seed."""
    import torch

    from textcam.semantics_store import load_clip

    torch.manual_seed(0)
    return load_clip("textcam-tiny-clip")
