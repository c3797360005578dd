"""The probe image set: listing it, scanning it with the bundle's own graph, choosing P_j and N_j."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from textcam.errors import TextcamError
from textcam.runtime.backends import GraphRunner
from textcam.runtime.bundle import Bundle
from textcam.runtime.images import IMAGE_SUFFIXES, load_image, preprocess
from textcam.semantics_store.vocabulary import read_text_file

MAX_FAILED_FRACTION = 0.01


MAX_LIST_BYTES = 1 << 30
"""A probe list file: ten million paths of 100 characters fit; nothing larger is read."""


def list_probe_images(probe: str | Path) -> list[Path]:
    """A directory (searched recursively) or a text file with one image path per line."""
    probe = Path(probe)
    if probe.is_dir():
        paths = sorted(p for p in probe.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise TextcamError(f"--probe {probe}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return paths
    if probe.exists():
        lines = read_text_file(probe, "--probe", MAX_LIST_BYTES).splitlines()
        paths = [(probe.parent / line.strip()) for line in lines if line.strip() and not line.startswith("#")]
        if not paths:
            raise TextcamError(f"--probe {probe}: the list is empty; expected one image path per line")
        return paths
    raise TextcamError(f"--probe {probe}: no such directory or list file")


def scan_activations(
    bundle: Bundle,
    runner: GraphRunner,
    paths: list[Path],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Per-image channel activations a_j(x) [N, C] from the deployed graph, streamed in batches.

    Only the score matrix is kept, never the activation maps. Unreadable files are skipped and
    returned with their error; more than 1% of them is refused.
    """
    rows: list[np.ndarray] = []
    kept: list[Path] = []
    failed: list[tuple[Path, str]] = []
    pending: list[np.ndarray] = []

    def flush():
        batch = np.stack(pending)
        outputs = runner.run(batch, np.full(len(batch), -1, dtype=np.int64))
        rows.append(outputs["channel_activation"].astype(np.float32))
        pending.clear()

    for path in paths:
        try:
            tensor, _ = preprocess(load_image(path), bundle.input)
        except TextcamError as exc:
            failed.append((path, str(exc)))
        else:
            pending.append(tensor)
            kept.append(path)
            if len(pending) == batch_size:
                flush()
        if progress:
            progress(1)
    if pending:
        flush()
    if len(failed) > MAX_FAILED_FRACTION * len(paths):
        examples = "; ".join(msg for _, msg in failed[:3])
        raise TextcamError(
            f"--probe: {len(failed)} of {len(paths)} images could not be read (more than 1%), e.g. {examples}"
        )
    if not rows:
        raise TextcamError("--probe: no readable images")
    return np.concatenate(rows), kept, failed


def extreme_images(scores: np.ndarray, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the ``m`` highest- and ``m`` lowest-scoring images: [C, m] row indices each.

    Ties are broken by one seeded random order of the images (not by file order), so a channel
    that is flat over many images does not always pick the first files.
    """
    order = np.random.default_rng(seed).permutation(scores.shape[0])
    ranked = order[np.argsort(scores[order], axis=0, kind="stable")]  # [N, C] ascending
    return ranked[::-1][:m].T.copy(), ranked[:m].T.copy()
