"""``build_semantics``: the offline pipeline, phase by phase, with progress and a time summary.

    scan      run the bundle's graph over the probe set; each batch of scores a_j(x) goes straight
              into the per-channel top/bottom-M selector, so the [N, C] matrix is never held
    select    each channel's M highest and M lowest images (P_j, N_j), M capped at N/2
    embed     CLIP image embeddings of every image in some P_j or N_j (cached on disk)
    lda       one direction s_j per channel (docs/architecture.md section 4.3)
    text      the vocabulary through CLIP's text tower with prompt templates
    write     semantics.safetensors (+ the fused ranking graph) and the manifest, atomically

The scan, embed and lda phases run on an engine: :class:`LocalEngine` (this process, the default,
no Ray) or :class:`textcam.semantics_store.ray_engine.RayEngine` (actor pools on a Ray cluster);
both give the same selections, and the same arrays within float rounding.

With a checkpoint folder (``resume_dir``, or by default one inside ``cache``), the results of scan
(with select), embed and lda are saved as each completes, and a restarted build with the same
inputs continues after the last one (:mod:`textcam.semantics_store.build_checkpoint`).
"""

from __future__ import annotations

import hashlib
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
from textcam.semantics_store.build_checkpoint import PHASES, BuildCheckpoint, build_header, header_digest
from textcam.semantics_store.clip_encoder import ClipEncoder
from textcam.semantics_store.embedding_cache import EmbeddingCache
from textcam.semantics_store.extremes import ExtremeSelector
from textcam.semantics_store.lda import LDA_MODES, channel_directions
from textcam.semantics_store.probe_set import scan_probe
from textcam.semantics_store.probe_source import ProbeSet, open_probe
from textcam.semantics_store.vocabulary import load_templates, load_vocabulary

MIN_PROBE_IMAGES = 4
DEFAULT_M = 50
"""Top and bottom images per channel: benchmarks/quality.py picks it from 20, 50, 100, 200."""
TIE_BREAK_SEED = 0


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
    embedded_images: int = 0
    """Distinct images in some P_j or N_j: the only ones CLIP embeds (at most 2*M*C)."""
    embedding_cache_hits: int = 0
    """Of those, how many came from the embedding cache (or the checkpoint) instead of CLIP."""
    resumed: list[str] = field(default_factory=list)
    """Phases taken from the checkpoint instead of run."""
    checkpoint: Path | None = None


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
    resume_dir: str | Path | None = None,
    on_phase: Callable[[str], None] | None = None,
    engine: str | object = "local",
    address: str | None = None,
    workers: int = 2,
    probe_column: str = "image",
    connect_timeout_s: float = 30.0,
) -> BuildReport:
    """Compute channel semantics for a bundle and write them into it. See the module docstring.

    ``probe_description`` is recorded in the store instead of the probe's path (for a temporary
    or generated probe set, say what it was). ``checkpoint`` is for failure-injection tests (see
    :func:`textcam.runtime.bundle_update.update_bundle`). ``resume_dir`` is the checkpoint folder
    (default: ``cache/checkpoints/<digest of the inputs>``; none without ``cache``); it is removed
    after a successful build. ``on_phase(name)`` is called after each phase (and its checkpoint).
    ``engine``: "local", "ray" (a Ray instance at ``address``, or a local one started here, with
    ``workers`` actors per pool) or an engine object. ``probe`` is a folder, a list file,
    ``parquet:PATH_OR_GLOB`` (images in column ``probe_column``) or ``tar:PATH_OR_GLOB``
    (:mod:`textcam.semantics_store.probe_source`).
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    on_phase = on_phase or (lambda _name: None)
    if lda not in LDA_MODES:
        raise TextcamError(f"lda={lda!r}: choose one of {', '.join(LDA_MODES)}")
    if m < 1:
        raise TextcamError(f"m={m}: expected a positive number of images per side")
    bundle = Bundle.open(bundle_path)
    vocabulary = load_vocabulary(vocab, bundle.classes)
    prompt_templates = load_templates(templates)
    probe_set = open_probe(probe, probe_column)
    seconds: dict[str, float] = {}
    notes: list[str] = []
    shard_failures = [(Path(shard), message) for shard, message in probe_set.failed_shards]
    if vocabulary.dropped_duplicates:
        notes.append(f"vocabulary: {vocabulary.dropped_duplicates} duplicate phrase(s) removed")

    saved = None
    if resume_dir is not None or cache is not None:
        header = build_header(bundle.model_sha256, probe_set, m, lda, clip.model_id, TIE_BREAK_SEED)
        # by default keyed by the inputs, so builds of other bundles or probe sets sharing a cache never meet
        folder = resume_dir if resume_dir is not None else Path(cache) / "checkpoints" / header_digest(header)[:16]
        saved = BuildCheckpoint.open(folder, header)
    # a phase is taken from the checkpoint only if every phase before it was: each one's results
    # were computed from the previous ones', so a later file never outlives a recomputed input
    resumed: list[str] = []
    for phase in saved.done() if saved else []:
        if len(resumed) == PHASES.index(phase):
            resumed.append(phase)

    def bar(total, desc, unit="img"):
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not show_progress, leave=False)

    runner = _engine(engine, address, workers, connect_timeout_s, log)
    try:
        start = time.perf_counter()
        scanned = saved.load("scan") if "scan" in resumed else None
        if scanned is None:
            positives, negatives, kept, failed, m, select_s = _scan_and_select(runner, bundle, probe_set, m, batch_size,
                                                                               bar, notes)
            failed = shard_failures + failed
            if saved:
                saved.save("scan", positives=positives, negatives=negatives, kept=kept, m=m,
                           failed=[[str(p), message] for p, message in failed], notes=notes)
            seconds["scan"] = time.perf_counter() - start - select_s
            seconds["select"] = select_s
        else:
            positives, negatives, kept, m = scanned["positives"], scanned["negatives"], scanned["kept"], scanned["m"]
            failed = [(Path(p), message) for p, message in scanned["failed"]]
            notes = scanned["notes"]
            seconds["scan"], seconds["select"] = time.perf_counter() - start, 0.0
        on_phase("scan")
        on_phase("select")

        start = time.perf_counter()
        used = np.unique(np.concatenate([positives.ravel(), negatives.ravel()]))
        embedded = saved.load("embed") if "embed" in resumed else None
        if embedded is None:
            embeddings, hits = runner.embed(clip, probe_set, used, cache, batch_size, bar)
            if saved:
                saved.save("embed", used=used, embeddings=embeddings, hits=hits)
        elif not np.array_equal(embedded["used"], used):
            raise TextcamError(f"checkpoint {saved.folder}: embed.npz does not match scan.npz; delete the folder")
        else:
            embeddings, hits = embedded["embeddings"], len(used)
        seconds["embed"] = time.perf_counter() - start
        on_phase("embed")

        start = time.perf_counter()
        directions = saved.load("lda")["directions"] if "lda" in resumed else None
        if directions is None:
            # rows of ``embeddings`` are the sorted ``used`` ids: an O(C*M) lookup, no N-sized table
            directions = runner.directions(embeddings, np.searchsorted(used, positives),
                                           np.searchsorted(used, negatives), lda, bar)
            if saved:
                saved.save("lda", directions=directions)
        seconds["lda"] = time.perf_counter() - start
        on_phase("lda")
    finally:
        runner.close()

    start = time.perf_counter()
    text = clip.embed_phrases(vocabulary.phrases, prompt_templates)
    seconds["text"] = time.perf_counter() - start
    if text.shape[1] != directions.shape[1]:
        raise TextcamError(
            f"CLIP text dimension {text.shape[1]} differs from its image dimension {directions.shape[1]}"
        )
    on_phase("text")

    start = time.perf_counter()
    metadata = {
        "templates": prompt_templates,
        "lda": {"mode": lda, "M": m, "tie_break_seed": TIE_BREAK_SEED},
        "probe": {"source": probe_description or str(probe), "images": kept, "skipped": len(failed)},
        "vocabulary_sources": ",".join(vocabulary.sources),
    }
    store = SemanticsStore(directions, text, tuple(vocabulary.phrases), bundle.model_sha256, clip.model_id, metadata)
    store_path = write_semantics(bundle, store, lda, m, fuse, checkpoint)
    seconds["write"] = time.perf_counter() - start
    if saved:
        saved.remove()
    on_phase("write")
    for path, message in failed:
        log(f"  skipped {path}: {message}")
    return BuildReport(store_path, directions.shape[0], directions.shape[1], len(vocabulary.phrases), kept, m,
                       notes, failed, seconds, _peak_memory_mb(), embedded_images=len(used),
                       embedding_cache_hits=hits, resumed=resumed, checkpoint=saved.folder if saved else None)


def _engine(engine: str | object, address: str | None, workers: int, timeout_s: float, log: Callable[[str], None]):
    if not isinstance(engine, str):
        return engine
    if engine == "local":
        if address is not None:
            raise TextcamError("--address is for --engine ray")
        return LocalEngine()
    if engine == "ray":
        from textcam.semantics_store.ray_engine import RayEngine

        return RayEngine(address=address, workers=workers, connect_timeout_s=timeout_s, log=log)
    raise TextcamError(f"--engine {engine!r}: choose local or ray")


class LocalEngine:
    """The scan, embed and lda phases in this process (no Ray)."""

    name = "local"

    def scan(self, bundle: Bundle, probe: ProbeSet, scan_m: int, batch_size: int, bar):
        """(an :class:`ExtremeSelector` fed every readable image, readable count, unreadable images)."""
        selector = None

        def consume(scores: np.ndarray, ids: np.ndarray) -> None:
            nonlocal selector
            if selector is None:
                selector = ExtremeSelector(scores.shape[1], scan_m, probe.count, TIE_BREAK_SEED)
            selector.add(scores, ids)

        runner = create_runner("onnxruntime", bundle)
        with bar(probe.count, "scan") as progress:
            kept, failed = scan_probe(bundle, runner, probe, batch_size, consume, progress.update)
        return selector, kept, failed

    def embed(self, clip: ClipEncoder, probe: ProbeSet, used: np.ndarray, cache_dir, batch_size: int, bar):
        """Embeddings [len(used), D] in the order of ``used`` (sorted listing indices), and how many came
        from the cache."""
        cache = EmbeddingCache(cache_dir, clip.model_id)
        result: list[np.ndarray] = []
        hits = 0
        pending: list[tuple[int, object, str]] = []  # (row, image, cache key)

        def flush():
            vectors = clip.embed_images([image for _, image, _ in pending])
            for (row, _, key), vector in zip(pending, vectors, strict=True):
                result[row] = vector
                cache.put(key, vector)
            progress.update(len(pending))
            pending.clear()

        with bar(len(used), "embed") as progress:
            for row, (_index, label, data, error) in enumerate(probe.iter_images(used.tolist())):
                data = read_selected(label, data, error)
                key = hashlib.sha256(data).hexdigest()
                result.append(cache.get(key) if cache.folder else None)
                if result[row] is not None:
                    hits += 1
                    progress.update(1)
                    continue
                pending.append((row, load_image(label, data=data), key))
                if len(pending) == batch_size:
                    flush()
            if pending:
                flush()
        return np.stack(result).astype(np.float32), hits

    def directions(self, embeddings: np.ndarray, positives: np.ndarray, negatives: np.ndarray, lda: str, bar):
        with bar(positives.shape[0], "lda", "ch") as progress:
            return channel_directions(embeddings, positives, negatives, lda, progress=progress.update)

    def close(self) -> None:
        pass


def read_selected(label: str, data: bytes | None, error: str | None) -> bytes:
    """The bytes of an image chosen by the scan (so readable then): a file is read here."""
    if error:
        raise TextcamError(f"--probe {label}: readable during the scan, not now ({error})")
    if data is not None:
        return data
    try:
        return Path(label).read_bytes()
    except OSError as exc:
        raise TextcamError(f"--probe {label}: readable during the scan, not now ({exc.strerror or exc})") from None


def _scan_and_select(engine, bundle: Bundle, probe: ProbeSet, m: int, batch_size: int, bar, notes: list[str]):
    """The engine's scan, streamed into an :class:`ExtremeSelector`; then the cap on M and the final order.

    Returns (positives [C, m], negatives [C, m] listing indices, readable count, unreadable images,
    m, seconds spent selecting after the scan).
    """
    # M must be fixed before the scan; the readable count, known after it, can only lower it, and
    # the top m of a channel is the prefix of its top M
    scan_m = max(1, min(m, probe.count // 2))
    selector, kept, failed = engine.scan(bundle, probe, scan_m, batch_size, bar)
    start = time.perf_counter()
    if failed or probe.failed_shards:
        named = [label for label, _ in probe.failed_shards] + [str(p) for p, _ in failed]
        what = f"{len(failed)} unreadable image(s)" + (f" and {len(probe.failed_shards)} unreadable shard(s)"
                                                       if probe.failed_shards else "")
        notes.append(f"probe: skipped {what}: " + ", ".join(named[:5]))
    if kept < MIN_PROBE_IMAGES:
        raise TextcamError(f"--probe: {kept} readable image(s); at least {MIN_PROBE_IMAGES} are needed")
    if 2 * m > kept:
        notes.append(f"M capped from {m} to {kept // 2}: the probe set has {kept} readable images (< 2M)")
        m = kept // 2
    positives, negatives = selector.result(m)
    return positives, negatives, kept, failed, m, time.perf_counter() - start


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
