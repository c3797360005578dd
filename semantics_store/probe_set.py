"""The probe image set: listing it, scanning it with the bundle's own graph, choosing P_j and N_j."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from textcam.errors import TextcamError
from textcam.runtime.backends import GraphRunner
from textcam.runtime.bundle import Bundle
from textcam.runtime.images import IMAGE_SUFFIXES, load_image, preprocess
from textcam.semantics_store.probe_source import ProbeSet
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


def scan_probe(
    bundle: Bundle,
    runner: GraphRunner,
    paths: list[Path] | ProbeSet,
    batch_size: int,
    consume: Callable[[np.ndarray, np.ndarray], None],
    progress: Callable[[int], None] | None = None,
    part: bool = False,
) -> tuple[int, list[tuple[Path, str]]]:
    """Run the deployed graph over ``paths`` in batches and hand each batch's channel scores a_j(x)
    to ``consume(scores [b, C] float32, ids [b])``, ids being indices into ``paths`` (a list of
    files, or any :class:`~textcam.semantics_store.probe_source.ProbeSet`: its listing indices).

    Nothing is kept here: what to keep is the consumer's choice (the builder keeps only each
    channel's extremes). Returns the number of images scanned and the unreadable files with their
    error; they are skipped, and more than 1% of the listing is refused as soon as it is reached.
    Non-finite scores are refused, naming the image. ``part``: ``paths`` is one part of a larger
    listing (a Ray task's unit), so the 1% rule and the refusal of a scan with no readable image are
    the caller's, over the whole listing.
    """
    probe = paths if isinstance(paths, ProbeSet) else ProbeSet.from_paths(list(paths))
    kept = 0
    failed: list[tuple[Path, str]] = []
    pending: list[np.ndarray] = []
    pending_ids: list[int] = []
    pending_labels: list[str] = []
    limit = float("inf") if part else MAX_FAILED_FRACTION * probe.count

    def flush():
        batch = np.stack(pending)
        scores = runner.run(batch, np.full(len(batch), -1, dtype=np.int64))["channel_activation"].astype(np.float32)
        finite = np.isfinite(scores)
        if not finite.all():
            row, channel = np.argwhere(~finite)[0]
            raise TextcamError(
                f"--probe {pending_labels[row]}: the graph gives channel {channel} the activation "
                f"{scores[row, channel]}; non-finite scores cannot be ranked (is the model exported correctly?)"
            )
        consume(scores, np.asarray(pending_ids, dtype=np.int64))
        pending.clear()
        pending_ids.clear()
        pending_labels.clear()

    for index, label, data, error in probe.iter_images():
        try:
            if error:
                raise TextcamError(error)
            tensor, _ = preprocess(load_image(label, data=data), bundle.input)
        except TextcamError as exc:
            failed.append((Path(label), str(exc)))
            if len(failed) > limit:
                examples = "; ".join(msg for _, msg in failed[:3])
                raise TextcamError(
                    f"--probe: {len(failed)} of {probe.count} images could not be read (more than 1%), "
                    f"e.g. {examples}"
                ) from None
        else:
            pending.append(tensor)
            pending_ids.append(index)
            pending_labels.append(label)
            kept += 1
            if len(pending) == batch_size:
                flush()
        if progress:
            progress(1)
    if pending:
        flush()
    if not kept and not part:
        raise TextcamError("--probe: no readable images")
    return kept, failed


def scan_activations(
    bundle: Bundle,
    runner: GraphRunner,
    paths: list[Path],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """The full [N, C] score matrix (N readable images), the readable paths and the unreadable ones.

    The builder no longer holds this matrix (it streams through :func:`scan_probe`); this is the
    reference for tests and analyses of small probe sets.
    """
    rows: list[np.ndarray] = []
    ids: list[np.ndarray] = []

    def collect(scores: np.ndarray, batch_ids: np.ndarray) -> None:
        rows.append(scores)
        ids.append(batch_ids)

    _, failed = scan_probe(bundle, runner, paths, batch_size, collect, progress)
    return np.concatenate(rows), [paths[i] for i in np.concatenate(ids)], failed


def extreme_images(scores: np.ndarray, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the ``m`` highest- and ``m`` lowest-scoring images: [C, m] row indices each.

    Ties are broken by one seeded random order of the images (not by file order), so a channel
    that is flat over many images does not always pick the first files. This full-matrix form is
    the reference for the streaming :class:`textcam.semantics_store.extremes.ExtremeSelector`,
    which gives the same selections when no image fails to read.
    """
    order = np.random.default_rng(seed).permutation(scores.shape[0])
    ranked = order[np.argsort(scores[order], axis=0, kind="stable")]  # [N, C] ascending
    return ranked[::-1][:m].T.copy(), ranked[:m].T.copy()
