"""``build_semantics``: the offline pipeline, phase by phase, with progress and a time summary.

    scan      run the bundle's graph over the probe set -> a_j(x), the [N, C] score matrix
    select    per channel, the M highest and M lowest images (P_j, N_j)
    embed     CLIP image embeddings of every image in some P_j or N_j (cached on disk)
    lda       one direction s_j per channel (docs/architecture.md section 4.3)
    text      the vocabulary through CLIP's text tower with prompt templates
    write     semantics.safetensors (+ the fused ranking graph) and the manifest, atomically
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from textcam.errors import TextcamError
from textcam.runtime.backends import create_runner
from textcam.runtime.bundle import Bundle
from textcam.runtime.concepts import ConceptSettings
from textcam.runtime.fused_ranking import fuse_ranking
from textcam.runtime.images import load_image
from textcam.runtime.manifest import FusedGraphSection, SemanticsSection
from textcam.runtime.semantics_file import SemanticsStore, read_store, store_bytes
from textcam.semantics_store.clip_encoder import ClipEncoder
from textcam.semantics_store.embedding_cache import EmbeddingCache, file_hash
from textcam.semantics_store.lda import LDA_MODES, channel_directions
from textcam.semantics_store.probe_set import extreme_images, list_probe_images, scan_activations
from textcam.semantics_store.vocabulary import load_templates, load_vocabulary

MIN_PROBE_IMAGES = 4
DEFAULT_M = 50
"""Top and bottom images per channel: benchmarks/quality.py picks it from 20, 50, 100, 200."""


@dataclass
class BuildReport:
    store: Path
    channels: int
    dim: int
    phrases: int
    probe_images: int
    m: int
    notes: list[str] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0


def _peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_semantics(
    bundle_path: str | Path,
    probe: str | Path,
    clip: ClipEncoder,
    vocab: Sequence[str] = ("builtin:attributes",),
    templates: str | Path | Sequence[str] | None = None,
    m: int = DEFAULT_M,
    lda: str = "shrinkage",
    cache: str | Path | None = None,
    batch_size: int = 32,
    fuse: bool = True,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    probe_description: str | None = None,
    checkpoint: Callable[[str], None] | None = None,
) -> BuildReport:
    """Compute channel semantics for a bundle and write them into it. See the module docstring.

    ``probe_description`` is recorded in the store instead of the probe's path (for a temporary
    or generated probe set, say what it was). ``checkpoint`` is for failure-injection tests (see
    :func:`textcam.runtime.bundle_update.update_bundle`).
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    if lda not in LDA_MODES:
        raise TextcamError(f"lda={lda!r}: choose one of {', '.join(LDA_MODES)}")
    if m < 1:
        raise TextcamError(f"m={m}: expected a positive number of images per side")
    bundle = Bundle.open(bundle_path)
    vocabulary = load_vocabulary(vocab, bundle.classes)
    prompt_templates = load_templates(templates)
    paths = list_probe_images(probe)
    seconds: dict[str, float] = {}
    notes: list[str] = []
    if vocabulary.dropped_duplicates:
        notes.append(f"vocabulary: {vocabulary.dropped_duplicates} duplicate phrase(s) removed")

    def bar(total, desc):
        return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not show_progress, leave=False)

    start = time.perf_counter()
    runner = create_runner("onnxruntime", bundle)
    with bar(len(paths), "scan") as progress:
        scores, kept, failed = scan_activations(bundle, runner, paths, batch_size, progress.update)
    seconds["scan"] = time.perf_counter() - start
    if failed:
        notes.append(f"probe: skipped {len(failed)} unreadable file(s): " + ", ".join(str(p) for p, _ in failed[:5]))
    if len(kept) < MIN_PROBE_IMAGES:
        raise TextcamError(f"--probe: {len(kept)} readable image(s); at least {MIN_PROBE_IMAGES} are needed")
    if 2 * m > len(kept):
        notes.append(f"M capped from {m} to {len(kept) // 2}: the probe set has {len(kept)} readable images (< 2M)")
        m = len(kept) // 2

    start = time.perf_counter()
    positives, negatives = extreme_images(scores, m)
    used = np.unique(np.concatenate([positives.ravel(), negatives.ravel()]))
    seconds["select"] = time.perf_counter() - start

    start = time.perf_counter()
    embeddings = _embed_images(clip, [kept[i] for i in used], cache, batch_size, bar)
    seconds["embed"] = time.perf_counter() - start
    row_of = np.full(len(kept), -1, dtype=np.int64)
    row_of[used] = np.arange(len(used))

    start = time.perf_counter()
    with tqdm(total=scores.shape[1], desc="lda", unit="ch", file=sys.stderr, disable=not show_progress,
              leave=False) as progress:
        directions = channel_directions(embeddings, row_of[positives], row_of[negatives], lda,
                                        progress=progress.update)
    seconds["lda"] = time.perf_counter() - start

    start = time.perf_counter()
    text = clip.embed_phrases(vocabulary.phrases, prompt_templates)
    seconds["text"] = time.perf_counter() - start
    if text.shape[1] != directions.shape[1]:
        raise TextcamError(
            f"CLIP text dimension {text.shape[1]} differs from its image dimension {directions.shape[1]}"
        )

    start = time.perf_counter()
    metadata = {
        "templates": prompt_templates,
        "lda": {"mode": lda, "M": m, "tie_break_seed": 0},
        "probe": {"source": probe_description or str(probe), "images": len(kept), "skipped": len(failed)},
        "vocabulary_sources": ",".join(vocabulary.sources),
    }
    store = SemanticsStore(directions, text, tuple(vocabulary.phrases), bundle.model_sha256, clip.model_id, metadata)
    store_path = write_semantics(bundle, store, lda, m, fuse, checkpoint)
    seconds["write"] = time.perf_counter() - start
    for path, message in failed:
        log(f"  skipped {path}: {message}")
    return BuildReport(store_path, directions.shape[0], directions.shape[1], len(vocabulary.phrases), len(kept), m,
                       notes, failed, seconds, _peak_memory_mb())


def _embed_images(clip: ClipEncoder, paths: list[Path], cache_dir, batch_size: int, bar) -> np.ndarray:
    cache = EmbeddingCache(cache_dir, clip.model_id)
    keys = [file_hash(p) for p in paths] if cache.folder else [None] * len(paths)
    result: list[np.ndarray | None] = [cache.get(k) if k else None for k in keys]
    missing = [i for i, r in enumerate(result) if r is None]
    with bar(len(missing), "embed") as progress:
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            vectors = clip.embed_images([load_image(paths[i]) for i in chunk])
            for i, vector in zip(chunk, vectors, strict=True):
                result[i] = vector
                if keys[i]:
                    cache.put(keys[i], vector)
            progress.update(len(chunk))
    return np.stack(result).astype(np.float32)


def write_semantics(bundle: Bundle, store: SemanticsStore, lda: str, m: int, fuse: bool = True,
                    checkpoint: Callable[[str], None] | None = None) -> Path:
    """Put ``store`` (and its fused ranking graph and a refreshed self-test) into the bundle, atomically.

    The new files are staged under fresh names and the manifest switches last
    (:mod:`textcam.runtime.bundle_update`): a failure at any point leaves the old semantics in use.
    Returns the new store's path.
    """
    from textcam.runtime.bundle_update import update_bundle

    settings = ConceptSettings()
    with update_bundle(bundle.path, **({"checkpoint": checkpoint} if checkpoint else {})) as update:
        store_ref = update.add_bytes("semantics", ".safetensors", store_bytes(store))
        section = SemanticsSection(store_ref, int(store.channels), int(store.dim), len(store.phrases),
                                   store.clip_model, lda, m, asdict(settings))
        fused = None
        if fuse:
            staged = update.staging_path("model.semantics", ".onnx")
            entry = _fuse(update.bundle, update.path / store_ref.file, settings, staged)
            fused = FusedGraphSection(update.adopt(staged, "model.semantics", ".onnx"), entry["candidates"],
                                      entry["beta"])
        update.manifest = update.manifest.replace(semantics=section, fused_graph=fused)
        refresh_selftest(update)
    return update.path / store_ref.file


def refresh_selftest(update) -> None:
    """Rewrite the bundle's self-test for the staged manifest (its expected outputs change with semantics)."""
    from textcam.runtime.manifest import SelftestSection
    from textcam.runtime.selftest import build_selftest

    data, fields = build_selftest(Bundle.from_manifest(update.path, update.manifest))
    update.manifest = update.manifest.replace(
        selftest=SelftestSection(update.add_bytes("selftest", ".safetensors", data), **fields))


def _fuse(bundle: Bundle, store_path: Path, settings: ConceptSettings, out_path: Path) -> dict:
    # the arrays as the runtime will read them (fp16-rounded), so graph and numpy rank alike
    stored = read_store(store_path)
    return fuse_ranking(bundle.model_path, out_path, stored.channel_semantics,
                        stored.text_embeddings, settings.beta, settings.candidates)
