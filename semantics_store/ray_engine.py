"""The Ray engine of ``textcam semantics --engine ray``: the scan, embed and lda phases on a Ray cluster.

- scan: a Ray Data pipeline over the probe's units (:mod:`textcam.semantics_store.probe_source`),
  ``map_batches`` with an actor pool, each actor holding one ONNX Runtime session. An actor scans one
  unit into its own :class:`ExtremeSelector` and returns only that unit's top/bottom-M keys; the
  driver merges them. The keys carry each image's tie rank (its listing index's place in the seeded
  permutation), so the merge is the local engine's selection exactly, whatever the order units finish in.
- embed: the units holding a selected image, through a pool of CLIP actors (one GPU each when the
  cluster has GPUs), each reading only its selected images and consulting the embedding cache.
- lda: the channels in chunks of 128, one Ray task each.

The text and write phases stay on the driver, as does the checkpoint (the builder's). Ray is imported
here only, and only when this engine is chosen: the local engine needs no Ray.

Failures: Ray Data restarts a dead actor and retries its unit (``max_restarts=-1``,
``max_task_retries=-1`` are its defaults for actor pools); lda tasks are retried by Ray (3 times). A
unit's result is a pure function of the unit, so a retried unit gives the same keys.

On a cluster, the bundle, the probe files or shards and ``--cache`` must be readable at the same
paths on every node (shared storage), and textcam installed there.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from textcam.errors import TextcamError, first_line
from textcam.semantics_store.extremes import ExtremeSelector
from textcam.semantics_store.probe_set import MAX_FAILED_FRACTION
from textcam.semantics_store.probe_source import ProbeSet, Unit

CONNECT_TIMEOUT_S = 30.0
LDA_CHUNK = 128
"""Channels per lda task: a multiple of channel_directions' own chunk, so each channel is computed in
the same vectorised call shape as locally."""


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class ScanActor:
    """One ONNX Runtime session; per call (a task), some units scanned into one selector."""

    def __init__(self, bundle_path: str, scan_m: int, images: int, seed: int, column: str, batch_size: int):
        from textcam.runtime.backends import create_runner
        from textcam.runtime.bundle import Bundle

        self.bundle = Bundle.open(bundle_path)
        self.runner = create_runner("onnxruntime", self.bundle)
        self.scan_m, self.images, self.seed = scan_m, images, seed
        self.column, self.batch_size = column, batch_size
        self.template: ExtremeSelector | None = None  # the permutation, drawn once per actor

    def __call__(self, batch: dict) -> dict:
        """The units of one task into one selector: one row of keys per task, not per unit, so the driver
        receives 2 x M x C keys per ``task_images`` images however small the units are."""
        failed: list[list] = []
        selector, seen, count, error = None, 0, 0, ""
        for text in batch["unit"]:
            unit = Unit.from_json(str(text))
            count += unit.count
            try:
                part, kept, unreadable = self.scan(unit, selector)
            except TextcamError as exc:  # a non-finite score: the driver refuses the build with this line
                error = str(exc)
                break
            selector = part
            seen += kept
            failed.extend([unit.first, position, str(path), message]
                          for position, (path, message) in enumerate(unreadable))
        top, bottom, _ = selector.keys() if selector is not None else (np.empty((0, 0), np.uint64),) * 3
        return {"top": np.asarray([_npy(top)], dtype=object), "bottom": np.asarray([_npy(bottom)], dtype=object),
                "seen": np.asarray([seen]), "count": np.asarray([count]),
                "failed": np.asarray([json.dumps(failed)], dtype=object), "error": np.asarray([error], dtype=object)}

    def scan(self, unit: Unit, selector: ExtremeSelector | None):
        """One unit into ``selector`` (a new one if None, returned); with its readable count and unreadable images."""
        from textcam.semantics_store.probe_set import scan_probe

        selector = [selector] if selector is not None else []

        def consume(scores: np.ndarray, ids: np.ndarray) -> None:
            if self.template is None:
                self.template = ExtremeSelector(scores.shape[1], self.scan_m, self.images, self.seed)
            if not selector:
                selector.append(self.template.empty_like())
            selector[0].add(scores, ids)

        part = ProbeSet(unit.kind, "", [unit], unit.count, self.column)
        kept, failed = scan_probe(self.bundle, self.runner, part, self.batch_size, consume, part=True)
        return (selector[0] if selector else None), kept, failed


class EmbedActor:
    """A CLIP image tower (on a GPU when the actor has one); per call, the selected images of some units."""

    def __init__(self, clip, cache_dir: str | None, column: str, batch_size: int, threads: int):
        import torch

        if torch.cuda.is_available():
            clip.model.to("cuda")
        else:
            torch.set_num_threads(threads)  # the actors share the node's cores
        self.clip, self.column, self.batch_size = clip, column, batch_size
        from textcam.semantics_store.embedding_cache import EmbeddingCache

        self.cache = EmbeddingCache(cache_dir, clip.model_id)

    def __call__(self, batch: dict) -> dict:
        import hashlib

        from textcam.runtime.images import load_image
        from textcam.semantics_store.builder import read_selected
        from textcam.semantics_store.probe_source import read_unit

        out: dict[str, list] = {"ids": [], "embeddings": [], "hits": []}
        for text, wanted in zip(batch["unit"], batch["ids"], strict=True):
            unit, wanted = Unit.from_json(str(text)), json.loads(str(wanted))
            ids, vectors, pending, hits = [], [], [], 0
            for index, label, data, error in read_unit(unit, self.column, set(wanted)):
                data = read_selected(label, data, error)
                key = hashlib.sha256(data).hexdigest()
                ids.append(index)
                vectors.append(self.cache.get(key) if self.cache.folder else None)
                if vectors[-1] is not None:
                    hits += 1
                else:
                    pending.append((len(vectors) - 1, load_image(label, data=data), key))
            for start in range(0, len(pending), self.batch_size):
                chunk = pending[start : start + self.batch_size]
                for (row, _, key), vector in zip(chunk, self.clip.embed_images([im for _, im, _ in chunk]),
                                                 strict=True):
                    vectors[row] = vector
                    self.cache.put(key, vector)
            out["ids"].append(_npy(np.asarray(ids, np.int64)))
            out["embeddings"].append(_npy(np.stack(vectors).astype(np.float32)))
            out["hits"].append(hits)
        return {"ids": np.asarray(out["ids"], dtype=object), "embeddings": np.asarray(out["embeddings"], dtype=object),
                "hits": np.asarray(out["hits"], dtype=np.int64)}


def _lda_chunk(embeddings, positives, negatives, mode, covariance):
    from textcam.semantics_store.lda import channel_directions

    return channel_directions(embeddings, positives, negatives, mode, covariance=covariance)


GRPC_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""An HTTP/2 client's connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS and its
client server both are) answers with a SETTINGS frame of its own."""
SETTINGS_FRAME = 4


def check_reachable(address: str, timeout_s: float) -> None:
    """``host:port`` (of ``ray://host:port`` too) accepts a TCP connection and answers as a gRPC server, all
    within ``timeout_s``, or one line.

    Asked here, without Ray, because ``ray.init`` on a port that accepts but stays silent retries for
    minutes; bounding it with a thread left Ray initialised off the main thread (no SIGTERM handler, and a
    warning saying so on stderr) and still retrying, and logging, after the one line. So ``ray.init`` runs
    in the caller's thread, once the port answers; a gRPC server that is not Ray's (its client port given
    without ray://) is then refused by ``ray.init`` itself, after its ~20 s of retries. Under
    ``RAY_USE_TLS`` the server expects a TLS handshake first, so only the TCP connection is checked."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise TextcamError(f"--address {address}: expected HOST:PORT (the head node's GCS, e.g. 10.0.0.5:6379), "
                           "ray://HOST:PORT or auto")
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
                _check_grpc(address, connection, deadline, timeout_s)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise TextcamError(f"--address {address}: no Ray cluster reachable ({reason}); start one with "
                           "`ray start --head` or leave out --address for a local one") from None


def _check_grpc(address: str, connection: socket.socket, deadline: float, timeout_s: float) -> None:
    """The first frame header the server sends after :data:`GRPC_PREFACE`: a SETTINGS frame, before ``deadline``."""
    header = b""
    try:
        connection.sendall(GRPC_PREFACE)
        while len(header) < 9:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = connection.recv(9 - len(header))
            if not chunk:
                break
            header += chunk
    except TimeoutError:
        raise TextcamError(f"--address {address}: Ray did not answer within {timeout_s:.0f} s") from None
    if len(header) < 9 or header[3] != SETTINGS_FRAME:
        raise TextcamError(f"--address {address}: not a Ray cluster (the port does not answer as Ray's gRPC "
                           "server does); expected the head node's GCS port (6379) or ray://HOST:10001")


class RayEngine:
    """See the module docstring. ``workers``: actors per pool (scan and embed; for embed, at most one per
    GPU when the cluster has GPUs). ``cpus_per_actor`` 0.5: an actor asking for a whole CPU each left no
    CPU for Ray Data's own read tasks on a 2-core node, and the pipeline deadlocked."""

    name = "ray"
    task_images = 4096
    """Images per scan task (whole units): each task sends the driver 2 x M x C keys, so a task must hold
    many more than 2M images for the scan's traffic to stay far below the [N, C] matrix's; and a task is
    what a dead actor's replacement redoes."""
    scan_actor = ScanActor
    embed_actor = EmbedActor

    def __init__(self, address: str | None = None, workers: int = 2, cpus_per_actor: float = 0.5,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, log: Callable[[str], None] | None = None):
        if workers < 1:
            raise TextcamError(f"--workers {workers}: expected at least 1")
        self.address, self.workers, self.cpus = address, workers, cpus_per_actor
        self.log = log or (lambda _message: None)
        self.started_here = False
        self._connect(connect_timeout_s)
        import ray

        resources = ray.cluster_resources()
        self.log(f"ray engine: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; {workers} actors "
                 f"per pool at {cpus_per_actor:g} CPU")

    def _connect(self, timeout_s: float) -> None:
        try:
            import ray
            import ray.data  # pyarrow and pandas: the ray extra
        except ImportError:
            raise TextcamError("--engine ray needs the ray extra: pip install 'textcam[ray]'") from None
        if ray.is_initialized():
            return  # the caller's own Ray (a test, a notebook): used as it is and left running
        if self.address and self.address != "auto":
            check_reachable(self.address, timeout_s)
        options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if self.address:
            options["address"] = self.address
        where = f"--address {self.address}" if self.address else "a local Ray instance"
        try:
            ray.init(**options)  # in the caller's thread: Ray sets its signal handlers in the main thread only
        except Exception as exc:
            raise TextcamError(f"{where}: cannot start Ray ({first_line(exc)})") from None
        self.started_here = True
        data_context = ray.data.DataContext.get_current()
        data_context.enable_progress_bars = False  # the builder shows one bar per phase
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    def _gpus(self) -> int:
        import ray

        return int(ray.cluster_resources().get("GPU", 0))

    def scan(self, bundle, probe: ProbeSet, scan_m: int, batch_size: int, bar):
        import ray

        from textcam.semantics_store.builder import TIE_BREAK_SEED

        per_task = max(1, round(self.task_images * len(probe.units) / probe.count))
        units = ray.data.from_items([{"unit": unit.to_json()} for unit in probe.units],
                                    override_num_blocks=-(-len(probe.units) // per_task))
        results = units.map_batches(
            self.scan_actor, batch_size=per_task, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=self.cpus,
            fn_constructor_kwargs={"bundle_path": str(bundle.path), "scan_m": scan_m, "images": probe.count,
                                   "seed": TIE_BREAK_SEED, "column": probe.column, "batch_size": batch_size})
        selector, kept, failed = None, 0, []
        limit = MAX_FAILED_FRACTION * probe.count
        with bar(probe.count, "scan") as progress:
            for row in results.iter_rows():
                if row["error"]:
                    raise TextcamError(str(row["error"]))
                failed.extend(json.loads(str(row["failed"])))
                if len(failed) > limit:  # refused as soon as that many have failed, as locally
                    examples = "; ".join(entry[3] for entry in failed[:3])
                    raise TextcamError(f"--probe: {len(failed)} of {probe.count} images could not be read "
                                       f"(more than 1%), e.g. {examples}")
                top, bottom = _array(row["top"]), _array(row["bottom"])
                if int(row["seen"]):
                    if selector is None:
                        selector = ExtremeSelector(top.shape[0], scan_m, probe.count, TIE_BREAK_SEED)
                    selector.merge(top, bottom, int(row["seen"]))
                    kept += int(row["seen"])
                progress.update(int(row["count"]))
        if not kept:
            raise TextcamError("--probe: no readable images")
        # in listing order, as the local engine lists them (tasks finish in any order)
        return selector, kept, [(Path(label), message) for *_, label, message in sorted(failed)]

    def embed(self, clip, probe: ProbeSet, used: np.ndarray, cache_dir, batch_size: int, bar):
        import ray

        gpus = self._gpus()
        actors = min(self.workers, gpus) if gpus else self.workers
        rows = [{"unit": unit.to_json(), "ids": json.dumps(share)} for unit, share in probe.units_with(used.tolist())]
        threads = max(1, int((os.cpu_count() or 1) // actors))
        resources = {"num_gpus": 1} if gpus else {"num_cpus": self.cpus}
        results = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            self.embed_actor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            **resources,
            fn_constructor_kwargs={"clip": clip, "cache_dir": str(cache_dir) if cache_dir else None,
                                   "column": probe.column, "batch_size": batch_size, "threads": threads})
        embeddings = None
        hits = 0
        with bar(len(used), "embed") as progress:
            for row in results.iter_rows():
                ids, vectors = _array(row["ids"]), _array(row["embeddings"])
                if embeddings is None:
                    embeddings = np.empty((len(used), vectors.shape[1]), np.float32)
                embeddings[np.searchsorted(used, ids)] = vectors
                hits += int(row["hits"])
                progress.update(len(ids))
        return embeddings, hits

    def directions(self, embeddings: np.ndarray, positives: np.ndarray, negatives: np.ndarray, lda: str, bar):
        import ray

        from textcam.semantics_store.lda import pooled_covariance

        covariance = None
        if lda == "pooled":  # one matrix for every chunk, from every channel's images, as locally
            used = np.unique(np.concatenate([positives.ravel(), negatives.ravel()]))
            covariance = pooled_covariance(np.asarray(embeddings, np.float64)[used])
        task = ray.remote(num_cpus=self.cpus)(_lda_chunk)
        shared = ray.put(embeddings)
        pending = {task.remote(shared, positives[s : s + LDA_CHUNK], negatives[s : s + LDA_CHUNK], lda, covariance): s
                   for s in range(0, positives.shape[0], LDA_CHUNK)}
        result = np.empty((positives.shape[0], embeddings.shape[1]), np.float32)
        with bar(positives.shape[0], "lda", "ch") as progress:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                start = pending.pop(done[0])
                chunk = ray.get(done[0])
                result[start : start + len(chunk)] = chunk
                progress.update(len(chunk))
        return result

    def close(self) -> None:
        if self.started_here:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
            self.started_here = False


__all__ = ["EmbedActor", "RayEngine", "ScanActor", "check_reachable"]
