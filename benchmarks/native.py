"""The native core (C++, ``textcam_native``) against the Python runtime (numpy + Pillow +
onnxruntime-python): cost per image end to end, where the time goes, threads, peak memory.

Per bundle (the built-in shapes-world bundle, 64x64, and a random-init torchvision ResNet-50 at
layer4 with a random semantics store C=2048, D=512, V=1000 and the fused ranking graph, 224x224),
all on the same synthetic JPEG photos (640x480 unless ``--image-size``):

- ``end_to_end``: per image at batch 1 and 8, one process, interleaved rounds (medians), wall and
  process CPU time: ``native`` = ``Explainer(native=True).explain_batch(paths)`` (decode to concepts
  in the C++ core), ``python`` = the same with ``native=False``, ``graph`` = the raw ONNX Runtime call
  on the same float batch (``explainer.runner.run``, the Python runner's session of the same graph);
- ``steps``: batch 1, each step's kernel alone, native (``textcam_native.load_image``,
  ``preprocess``, ``select``, ``map_to_original``) and Python (``images.load_image``,
  ``images.preprocess``, ``concepts.select_for_outputs``, ``heatmap.map_to_original``), and the
  graph; the non-graph part as a share of the graph's time (target: under 5% for ResNet-50);
- ``threads``: images/s of one shared Explainer (``native=True``, and the numpy path) called from
  N Python threads (the core releases the GIL), and of the C++ host ``textcam_service --threads N``;
- ``processes``: the C++ host and a Python process (numpy path; also the core under Python) over
  the same files, each a fresh child: peak RSS (``wait4``) and the wall/CPU cost per image (from two
  runs with different image counts, so start-up cancels out); the hosts' answers are compared.

Every ONNX Runtime session runs with spinning off and ``--threads`` intra-op threads (default 1;
the threads section uses 1 per session, parallelism comes from the callers' threads, as in the host).
An end-to-end row where ``native`` or ``python`` (each contains the graph) measures faster than
``graph`` beyond the rounds' interquartile range is refused (``textcam.runtime.timing.contradiction``):
the report says why instead of giving its numbers, and the script exits 1.
Ratios come from the same run; the machine may be noisy, so read the ratios rather than the
absolute numbers.

The C++ host is ``build/cpp/textcam_service`` (``--build-service`` builds it with CMake first:
``cmake -S cpp -B build/cpp -G Ninja && cmake --build build/cpp``); without it the host rows are
left out. The ResNet bundles are exported once into ``--cache`` (default: a folder under the
system's temporary directory; never commit them).

Full run (about 5-10 minutes on 2 cores, plus the first export)::

    python benchmarks/native.py

Smoke run (the default bundle and a 64x64 ResNet-18, tiny settings)::

    python benchmarks/native.py --quick --out /tmp/native-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from latency import cpu_model_name, dist_version, int_list  # run as scripts: benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SERVICE = ROOT / "build" / "cpp" / "textcam_service"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "textcam-bench-cache"
NON_GRAPH_TARGET = ("resnet50", 1, 0.05)  # model, batch, largest non-graph share of the graph's time
PROTOTYPE = {"cpu_ratio": 1.7, "ranking_speedup": 6.0}  # what a prototype measured (default bundle): beat it
STEPS = ("decode", "preprocess", "select", "map_back")
PATHS = ("native", "python")
CONTAINS = (("native", "graph"), ("python", "graph"))  # each explanation runs the graph and more
SEMANTICS_DEFAULTS = {"beta": "contribution", "top_k": 5, "candidates": 64, "l1": 0.3, "l2": 0.2, "steps": 100}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# bundles and images


@dataclass
class Target:
    """One bundle to measure: ``default`` (the built-in one) or a torchvision model name."""

    name: str
    input_size: int
    num_classes: int
    vocabulary: int
    dim: int

    @property
    def tag(self) -> str:
        return (f"{self.name}-layer4-{self.input_size}-k{self.num_classes}-v{self.vocabulary}-d{self.dim}"
                if self.name != "default" else "default")


def default_bundle() -> Path:
    from textcam.shapes_world.artifacts import DEFAULT_BUNDLE, require

    return require(DEFAULT_BUNDLE)


def model_bundle(target: Target, cache: Path) -> tuple[Path, dict]:
    """A random-init torchvision ``target.name`` exported at layer4 with a random semantics store
    (C = the layer's channels, D, V) and the fused ranking graph, as ``textcam semantics`` adds them.
    Exported once into ``cache`` and reused (the folder name carries every setting)."""
    bundle = cache / f"{target.tag}.textcam"
    info = {"cached": bundle.is_dir(), "export_s": None, "semantics_s": None}
    if bundle.is_dir():
        return bundle, info
    import torch

    from textcam.export import export_bundle
    from textcam.export.model_source import torchvision_model

    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{target.tag}.partial.textcam"
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(0)
    model = torchvision_model(target.name, target.num_classes).eval()
    log(f"{target.name}: exporting a random-init bundle at layer4 ({target.input_size}x{target.input_size}, "
        f"{target.num_classes} classes) into {cache}")
    started = time.perf_counter()
    # the export's self-test opens an Explainer on the staged bundle (no manifest.json on disk yet),
    # which the native core cannot open: export on the numpy path
    switch = os.environ.get("TEXTCAM_NATIVE")
    os.environ["TEXTCAM_NATIVE"] = "0"
    try:
        export_bundle(model, "layer4", partial, input_size=(target.input_size, target.input_size),
                      class_names=[f"class {i}" for i in range(target.num_classes)])
    finally:
        if switch is None:
            os.environ.pop("TEXTCAM_NATIVE", None)
        else:
            os.environ["TEXTCAM_NATIVE"] = switch
    info["export_s"] = round(time.perf_counter() - started, 1)
    del model
    log(f"{target.name}: adding a random semantics store (D={target.dim}, V={target.vocabulary}) and the fused graph")
    started = time.perf_counter()
    add_semantics(partial, target.dim, target.vocabulary)
    info["semantics_s"] = round(time.perf_counter() - started, 1)
    partial.rename(bundle)
    return bundle, info


def add_semantics(bundle: Path, dim: int, vocabulary: int, candidates: int = 64, seed: int = 0) -> None:
    """Random unit channel semantics S [C, D] and phrase embeddings T [V, D], staged into the bundle
    with the fused ranking graph over ``candidates`` (the same calls as ``textcam semantics``)."""
    from textcam.runtime.bundle import Bundle
    from textcam.runtime.bundle_files import read_manifest
    from textcam.runtime.bundle_update import update_bundle
    from textcam.runtime.fused_ranking import fuse_ranking
    from textcam.runtime.manifest import FusedGraphSection, SemanticsSection
    from textcam.runtime.semantics_file import SemanticsStore, store_bytes

    manifest = read_manifest(bundle)
    channels = Bundle.open(bundle).channels
    rng = np.random.default_rng(seed)

    def unit(*shape):
        x = rng.standard_normal(shape)
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    store = SemanticsStore(channel_semantics=unit(channels, dim), text_embeddings=unit(vocabulary, dim),
                           phrases=tuple(f"phrase {i}" for i in range(vocabulary)),
                           model_sha256=manifest.model.graph.sha256, clip_model="random (benchmark)")
    defaults = dict(SEMANTICS_DEFAULTS, candidates=min(SEMANTICS_DEFAULTS["candidates"], vocabulary))
    with update_bundle(bundle) as update:
        ref = update.add_bytes("semantics", ".safetensors", store_bytes(store))
        section = SemanticsSection(ref, store.channels, store.dim, vocabulary, store.clip_model, "shrinkage", 50,
                                   defaults)
        staged = update.staging_path("model.semantics", ".onnx")
        # what is fused is what the store holds: fp16 values
        entry = fuse_ranking(bundle / "model.onnx", staged,
                             store.channel_semantics.astype(np.float16).astype(np.float32),
                             store.text_embeddings.astype(np.float16).astype(np.float32),
                             defaults["beta"], candidates)
        fused = FusedGraphSection(update.adopt(staged, "model.semantics", ".onnx"), entry["candidates"], entry["beta"])
        update.manifest = update.manifest.replace(semantics=section, fused_graph=fused)


def make_images(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` distinct photo-like JPEGs (smooth colour fields, a few solid shapes, grain), quality 90."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    paths = []
    for index in range(count):
        channels = [np.sin(rng.uniform(1, 9) * xx + rng.uniform(1, 9) * yy + rng.uniform(0, 6)) for _ in range(3)]
        scene = np.stack(channels, axis=-1) * 90 + 128
        for _ in range(3):
            cy, cx = rng.uniform(0, 1) * height, rng.uniform(0, 1) * width
            r = rng.uniform(0.05, 0.3) * min(width, height)
            inside = (yy * max(width, height) - cy) ** 2 + (xx * max(width, height) - cx) ** 2 < r * r
            scene[inside] = rng.integers(0, 256, 3)
        scene += rng.normal(0, 6, scene.shape)
        path = folder / f"photo{index:03d}.jpg"
        Image.fromarray(scene.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def cycle(paths: list[Path], count: int) -> list[Path]:
    return [paths[i % len(paths)] for i in range(count)]


# ---------------------------------------------------------------------------------------------
# timing


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, warmup: int, seed: int = 0,
                contains=()) -> tuple[dict, str | None]:
    """Each callable ``rounds`` times in a shuffled order per round (textcam.runtime.timing); medians of
    wall and process CPU (ms), and why the wall times contradict ``contains`` (None when they do not)."""
    from textcam.runtime.timing import contradiction, interleaved_medians

    stats = interleaved_medians(calls, rounds, warmup, seed)
    return ({name: {"wall_ms": s["median_ms"], "cpu_ms": s["cpu_median_ms"], "min_wall_ms": s["min_ms"]}
             for name, s in stats.items()}, contradiction(stats, contains))


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def r3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---------------------------------------------------------------------------------------------
# sections


def explainers(bundle: Path, args, batch_size: int, threads: int):
    from textcam.runtime import Explainer

    options = {"intra_op_threads": threads, "allow_spinning": False}
    native = Explainer(bundle, backend_options=options, batch_size=batch_size, native=True)
    python = Explainer(bundle, backend_options=options, batch_size=batch_size, native=False)
    return native, python


def end_to_end(bundle: Path, images: list[Path], args, rounds_for: Callable[[int], int]) -> tuple[list, dict, bool]:
    """Per batch size: native vs python explain_batch(paths) vs the graph alone, interleaved."""
    from textcam.runtime.images import load_image, preprocess

    native, python = explainers(bundle, args, max(args.batches), args.threads)
    rows = []
    for batch in args.batches:
        paths = [str(p) for p in images[:batch]]
        tensors = np.stack([preprocess(load_image(p), python.bundle.input)[0] for p in paths])
        classes = np.full(batch, -1, dtype=np.int64)
        calls = {
            "native": lambda paths=paths: native.explain_batch(paths),
            "python": lambda paths=paths: python.explain_batch(paths),
            "graph": lambda t=tensors, c=classes: python.runner.run(t, c),
        }
        rounds = rounds_for(batch)
        log(f"  end to end, batch {batch}: {rounds} rounds x {len(calls)} contenders")
        stats, refused = interleaved(calls, rounds, args.warmup, contains=CONTAINS)
        if refused:
            log(f"  batch {batch} refused: {refused}")
        per_image = {name: {"wall_ms": r3(s["wall_ms"] / batch), "cpu_ms": r3(s["cpu_ms"] / batch)}
                     for name, s in stats.items()}
        n, p, g = (stats[k] for k in ("native", "python", "graph"))
        rows.append({
            "batch": batch,
            "rounds": rounds,
            "refused": refused,
            "per_image": per_image,
            "ratios": {} if refused else {  # no ratio from numbers that contradict each other
                "python_over_native_wall": ratio(p["wall_ms"], n["wall_ms"]),
                "python_over_native_cpu": ratio(p["cpu_ms"], n["cpu_ms"]),
                "native_non_graph_share_wall": ratio(n["wall_ms"] - g["wall_ms"], g["wall_ms"]),
                "python_non_graph_share_wall": ratio(p["wall_ms"] - g["wall_ms"], g["wall_ms"]),
                "native_non_graph_share_cpu": ratio(n["cpu_ms"] - g["cpu_ms"], g["cpu_ms"]),
                "python_non_graph_share_cpu": ratio(p["cpu_ms"] - g["cpu_ms"], g["cpu_ms"]),
            },
        })
    agreement = agree(native.explain_batch([str(p) for p in images[:8]]),
                      python.explain_batch([str(p) for p in images[:8]]))
    return rows, agreement, native.fused


def agree(ours, theirs) -> dict:
    same_class = all(a.class_index == b.class_index for a, b in zip(ours, theirs, strict=True))
    same_phrases = all([c.phrase for c in a.concepts] == [c.phrase for c in b.concepts]
                       for a, b in zip(ours, theirs, strict=True))
    heat = max(float(np.abs(a.heatmap - b.heatmap).max()) for a, b in zip(ours, theirs, strict=True))
    return {"images": len(ours), "same_classes": same_class, "same_phrases": same_phrases,
            "heatmap_max_abs_diff": heat}


def steps(bundle: Path, images: list[Path], args, rounds: int) -> dict:
    """Batch 1: every non-graph step's kernel alone, native and Python, and the graph alone."""
    import textcam_native as core

    from textcam.runtime import concepts, heatmap
    from textcam.runtime.images import load_image, preprocess

    _, python = explainers(bundle, args, 1, args.threads)
    spec = python.bundle.input
    spec_dict = {"height": spec.height, "width": spec.width, "mean": list(spec.mean), "std": list(spec.std),
                 "resize": spec.resize, "scale": spec.scale}
    path = str(images[0])
    pil = load_image(path)
    rgb = np.ascontiguousarray(np.asarray(pil))
    tensor, geometry = preprocess(pil, spec)
    outputs = python.runner.run(tensor[None], np.full(1, -1, dtype=np.int64))
    cam = np.ascontiguousarray(outputs["cam"][0], dtype=np.float32)
    calls = {
        "graph": lambda: python.runner.run(tensor[None], np.full(1, -1, dtype=np.int64)),
        "native:decode": lambda: core.load_image(path),
        "python:decode": lambda: load_image(path),
        "native:preprocess": lambda: core.preprocess(rgb, spec_dict),
        "python:preprocess": lambda: preprocess(pil, spec),
        "native:map_back": lambda: core.map_to_original(cam, geometry.width, geometry.height, geometry.box),
        "python:map_back": lambda: heatmap.map_to_original(cam, geometry),
    }
    store = python.semantics
    select_info = None
    if store is not None:
        settings = python.concept_settings
        S, T = store.channel_semantics, store.text_embeddings
        vmean = T.mean(axis=0)
        weights = np.ascontiguousarray(outputs["channel_weights"], dtype=np.float32)
        activation = np.ascontiguousarray(outputs["channel_activation"], dtype=np.float32)
        among = outputs.get("concept_ids")
        among = None if among is None else np.ascontiguousarray(among, dtype=np.int64)
        settings_dict = {name: getattr(settings, name) for name in type(settings).__dataclass_fields__}
        calls["native:select"] = lambda: core.select(weights, activation, S, T, settings_dict, among)
        calls["python:select"] = lambda: concepts.select_for_outputs(outputs, S, T, settings, vmean)
        # the binding copies S and T and averages T on every call; the core's Explainer holds them
        calls["binding:select_copy"] = lambda: (np.array(S), np.array(T), T.mean(axis=0))
        # 8 rows per call: the binding's copies spread over 8 images
        batch8 = np.stack([preprocess(load_image(p), spec)[0] for p in cycle(images, 8)])
        outputs8 = python.runner.run(batch8, np.full(8, -1, dtype=np.int64))
        weights8 = np.ascontiguousarray(outputs8["channel_weights"], dtype=np.float32)
        activation8 = np.ascontiguousarray(outputs8["channel_activation"], dtype=np.float32)
        among8 = outputs8.get("concept_ids")
        among8 = None if among8 is None else np.ascontiguousarray(among8, dtype=np.int64)
        calls["native:select_b8"] = lambda: core.select(weights8, activation8, S, T, settings_dict, among8)
        calls["python:select_b8"] = lambda: concepts.select_for_outputs(outputs8, S, T, settings, vmean)
        ours = core.select(weights, activation, S, T, settings_dict, among)[0][0].tolist()
        theirs = concepts.select_for_outputs(outputs, S, T, settings, vmean).ids[0].tolist()
        select_info = {"channels": int(S.shape[0]), "dim": int(S.shape[1]), "vocabulary": int(T.shape[0]),
                       "candidates_from_graph": None if among is None else int(among.shape[1]),
                       "settings": settings_dict, "same_ids": ours == theirs}
    log(f"  steps, batch 1: {rounds} rounds x {len(calls)} kernels")
    stats, _ = interleaved(calls, rounds, args.warmup)  # separate kernels: none contains another
    graph = stats["graph"]["wall_ms"]
    result = {"rounds": rounds, "graph_ms": r3(graph), "graph_cpu_ms": r3(stats["graph"]["cpu_ms"]),
              "image": {"width": geometry.width, "height": geometry.height}, "select": select_info,
              "native_ms": {}, "python_ms": {}, "speedup": {}}
    for step in STEPS:
        for side in PATHS:
            if f"{side}:{step}" in stats:
                result[f"{side}_ms"][step] = r3(stats[f"{side}:{step}"]["wall_ms"])
        result["speedup"][step] = ratio(result["python_ms"].get(step), result["native_ms"].get(step))
    result["select_copy_ms"] = r3(stats["binding:select_copy"]["wall_ms"]) if "binding:select_copy" in stats else None
    if "native:select_b8" in stats:
        native8, python8 = stats["native:select_b8"]["wall_ms"] / 8, stats["python:select_b8"]["wall_ms"] / 8
        result["select_batch8_per_image_ms"] = {"native": r3(native8), "python": r3(python8),
                                                "speedup": ratio(python8, native8)}
    for side in PATHS:
        total = sum(result[f"{side}_ms"].values())
        result[f"{side}_non_graph_ms"] = r3(total)
        result[f"{side}_non_graph_share"] = ratio(total, graph)
    if result["select_copy_ms"] is not None:
        core_only = result["native_non_graph_ms"] - min(result["select_copy_ms"], result["native_ms"]["select"])
        result["native_non_graph_share_without_binding_copy"] = ratio(core_only, graph)
    return result


def thread_scaling(bundle: Path, images: list[Path], args, per_image_ms: float, service: Path | None) -> dict:
    """Images/s for N caller threads on one shared Explainer (native and numpy path), and the C++ host."""
    from textcam.runtime import Explainer

    count = int(min(args.max_thread_images, max(8, math.ceil(args.thread_seconds * 1e3 / max(per_image_ms, 0.1)))))
    count = max(count, max(args.thread_counts))
    paths = [str(p) for p in cycle(images, count)]
    options = {"intra_op_threads": 1, "allow_spinning": False}
    shared = {side: Explainer(bundle, backend_options=options, batch_size=1, native=side == "native")
              for side in PATHS}

    def run(explainer, threads: int) -> tuple[float, float]:
        next_index = iter(range(count))
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                explainer.explain(paths[index])

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        w0, c0 = time.perf_counter(), time.process_time()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return time.perf_counter() - w0, time.process_time() - c0

    for explainer in shared.values():
        explainer.explain(paths[0])  # warm
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    log(f"  threads {args.thread_counts}: {count} images per run, {args.repeats} repeats")
    order = [(side, n) for side in PATHS for n in args.thread_counts]
    if service is not None:
        order += [("cpp_host", n) for n in args.thread_counts]
    shuffle = random.Random(1)
    for _ in range(args.repeats):
        shuffle.shuffle(order)
        for side, n in order:
            if side == "cpp_host":
                big = run_process("cpp_host", bundle, paths, service, threads=n)
                small = run_process("cpp_host", bundle, paths[:1], service, threads=n)
                samples.setdefault((side, n), []).append((big["wall_s"] - small["wall_s"],
                                                          big["cpu_s"] - small["cpu_s"]))
            else:
                samples.setdefault((side, n), []).append(run(shared[side], n))
    rows = []
    for side in [*PATHS, *(["cpp_host"] if service is not None else [])]:
        for n in args.thread_counts:
            walls = [w for w, _ in samples[(side, n)]]
            cpus = [c for _, c in samples[(side, n)]]
            images_counted = count - 1 if side == "cpp_host" else count
            wall = statistics.median(walls)
            rows.append({"path": side, "threads": n,
                         "images_per_s": round(images_counted / wall, 2) if wall > 0 else None,
                         "cpu_ms_per_image": r3(statistics.median(cpus) * 1e3 / images_counted),
                         # busy cores while it ran: about min(threads, free cores) when nothing serializes
                         "cores_used": r3(statistics.median(busy)) if (busy := [c / w for w, c in samples[(side, n)]
                                                                               if w > 0]) else None})
    for row in rows:
        one = next(r for r in rows if r["path"] == row["path"] and r["threads"] == 1)
        row["speedup_over_1"] = ratio(row["images_per_s"], one["images_per_s"])
    return {"images_per_run": count, "repeats": args.repeats, "intra_op_threads": 1, "rows": rows}


# Runs in a small child of its own (``python -S -c``) and spawns the measured process from there:
# Linux carries ru_maxrss across fork and exec, so a child spawned by this (large) process would
# report at least this process's peak. The launcher's own ~10 MB is the floor instead.
LAUNCHER = """
import json, os, sys, time
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, out, 1)])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - started,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss}))
"""


def run_process(kind: str, bundle: Path, paths: list[str], service: Path | None, threads: int = 1) -> dict:
    """One fresh child over ``paths`` (see LAUNCHER): wall, CPU (user + system), peak RSS, its JSON lines."""
    from textcam.runtime.native import onnxruntime_library

    env = dict(os.environ, TEXTCAM_ONNXRUNTIME_LIBRARY=onnxruntime_library())
    with tempfile.TemporaryDirectory(prefix="textcam-native-child-") as folder:
        listing, output = Path(folder) / "paths.txt", Path(folder) / "stdout.jsonl"
        listing.write_text("\n".join(paths))
        if kind == "cpp_host":
            command = [str(service), "--threads", str(threads), str(bundle), *paths]
        else:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(bundle), str(listing)]
        done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(output), *command], capture_output=True,
                              text=True, env=env, check=False)
        measured = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {"rc": None}
        if measured["rc"] != 0:
            raise RuntimeError(f"{kind} failed (exit {measured['rc']}): {done.stderr.strip()[-2000:]}")
        lines = output.read_text().splitlines()
    results = [json.loads(line) for line in lines if line.startswith("{")]
    if len(results) != len(paths) or any("error" in r for r in results):
        raise RuntimeError(f"{kind}: {len(results)} answers for {len(paths)} images: {lines[:2]}")
    return {"wall_s": measured["wall_s"], "cpu_s": measured["cpu_s"], "peak_rss_mb": measured["peak_rss_kb"] / 1024,
            "results": results}


def child(kind: str, bundle: str, listing: str) -> int:
    """A Python host over the listed files, one JSON line per image (as textcam_service prints)."""
    from textcam.runtime import Explainer

    paths = Path(listing).read_text().splitlines()
    options = {"intra_op_threads": 1, "allow_spinning": False}
    explainer = Explainer(bundle, backend_options=options, batch_size=1, native=kind == "python-native")
    for _path, result in explainer.explain_files(paths):
        print(json.dumps(result.to_dict()))
    return 0


def processes(bundle: Path, images: list[Path], args, per_image_ms: float, service: Path | None) -> dict:
    """C++ host vs Python processes over the same files: per-image cost by differencing two runs, peak RSS."""
    kinds = ([] if service is None else ["cpp_host"]) + ["python-numpy", "python-native"]
    small = args.process_images[0]
    extra = math.ceil(args.process_seconds * 1e3 / max(per_image_ms, 0.1))
    large = small + int(min(args.process_images[1], max(2, extra)))
    paths_small = [str(p) for p in cycle(images, small)]
    paths_large = [str(p) for p in cycle(images, large)]
    log(f"  processes {kinds}: {small} and {large} images, {args.repeats} repeats")
    samples: dict[str, list[dict]] = {k: [] for k in kinds}
    answers: dict[str, list] = {}
    order = [(k, size) for k in kinds for size in ("small", "large")]
    shuffle = random.Random(2)
    for _ in range(args.repeats):
        shuffle.shuffle(order)
        runs: dict[tuple[str, str], dict] = {}
        for kind, size in order:
            runs[(kind, size)] = run_process(kind, bundle, paths_small if size == "small" else paths_large, service)
        for kind in kinds:
            a, b = runs[(kind, "small")], runs[(kind, "large")]
            answers[kind] = b["results"]
            samples[kind].append({
                "wall_ms_per_image": (b["wall_s"] - a["wall_s"]) * 1e3 / (large - small),
                "cpu_ms_per_image": (b["cpu_s"] - a["cpu_s"]) * 1e3 / (large - small),
                "startup_wall_s": a["wall_s"] - small * (b["wall_s"] - a["wall_s"]) / (large - small),
                "peak_rss_mb": b["peak_rss_mb"],
                "peak_rss_small_mb": a["peak_rss_mb"],
            })
    rows = {}
    for kind in kinds:
        rows[kind] = {key: r3(statistics.median(s[key] for s in samples[kind])) for key in samples[kind][0]}
        rows[kind]["peak_rss_mb"] = r3(max(s["peak_rss_mb"] for s in samples[kind]))
    reference = answers["python-numpy"]
    agreement = {}
    for kind in kinds:
        if kind != "python-numpy":
            agreement[kind] = {
                "same_classes": all(a["class_index"] == b["class_index"] for a, b in zip(answers[kind], reference,
                                                                                         strict=True)),
                "same_phrases": all([c["phrase"] for c in a["concepts"]] == [c["phrase"] for c in b["concepts"]]
                                    for a, b in zip(answers[kind], reference, strict=True)),
            }
    ratios = {}
    if "cpp_host" in rows:
        host, numpy_path = rows["cpp_host"], rows["python-numpy"]
        ratios = {"python_over_cpp_cpu_per_image": ratio(numpy_path["cpu_ms_per_image"], host["cpu_ms_per_image"]),
                  "python_over_cpp_wall_per_image": ratio(numpy_path["wall_ms_per_image"], host["wall_ms_per_image"]),
                  "python_over_cpp_peak_rss": ratio(numpy_path["peak_rss_mb"], host["peak_rss_mb"])}
    return {"images": [small, large], "repeats": args.repeats, "rows": rows, "ratios": ratios, "agreement": agreement}


def run_target(target: Target, args, images: list[Path], service: Path | None) -> dict:
    log(f"{target.name}: preparing")
    if target.name == "default":
        bundle, export_info = default_bundle(), {"cached": True}
    else:
        bundle, export_info = model_bundle(target, args.cache)
    from textcam.runtime.bundle import Bundle

    opened = Bundle.open(bundle)
    info = opened.info
    result = {
        "name": target.name,
        "bundle": str(bundle.relative_to(ROOT)) if bundle.is_relative_to(ROOT) else bundle.name,
        "input": [opened.input.height, opened.input.width],
        "classes": len(opened.classes),
        "channels": opened.channels,
        "semantics": None if info.semantics is None else {
            "channels": info.semantics.channels, "dim": info.semantics.dim,
            "vocabulary": info.semantics.vocabulary_size, "defaults": info.semantics.defaults},
        "fused_candidates": info.fused_graph.candidates if info.fused_graph else None,
        "export": export_info,
    }
    log(f"{target.name}: measuring")
    result["end_to_end"], result["agreement"], result["fused"] = end_to_end(
        bundle, images, args, lambda b: args.rounds[args.batches.index(b)])
    graph_guess = result["end_to_end"][0]["per_image"]["native"]["wall_ms"]
    result["steps"] = steps(bundle, images, args, args.step_rounds)
    result["threads"] = thread_scaling(bundle, images, args, graph_guess, service)
    result["processes"] = processes(bundle, images, args, graph_guess, service)
    return result


# ---------------------------------------------------------------------------------------------
# targets, report


def evaluate_targets(report: dict) -> list[dict]:
    checks = []
    model, batch, share = NON_GRAPH_TARGET
    for config in report["bundles"]:
        s = config["steps"]
        if config["name"] == model and batch == 1:
            checks.append({"target": f"native non-graph steps < {share:.0%} of the graph (batch 1)",
                           "bundle": config["name"], "value": s["native_non_graph_share"], "threshold": share,
                           "pass": bool(s["native_non_graph_share"] < share)})
            e2e = next((r for r in config["end_to_end"] if r["batch"] == 1), None)
            if e2e and not e2e["refused"]:  # no target is judged on timings that contradict each other
                value = e2e["ratios"]["native_non_graph_share_cpu"]
                checks.append({"target": f"native explain - graph < {share:.0%} of the graph, end to end CPU (batch 1)",
                               "bundle": config["name"], "value": value, "threshold": share,
                               "pass": bool(value < share)})
        if config["name"] == "default":
            for row in (r for r in config["end_to_end"] if not r["refused"]):
                value = row["ratios"]["python_over_native_cpu"]
                checks.append({"target": f"python/native CPU per image > {PROTOTYPE['cpu_ratio']} "
                                         f"(prototype), batch {row['batch']}",
                               "bundle": config["name"], "value": value, "threshold": PROTOTYPE["cpu_ratio"],
                               "pass": bool(value > PROTOTYPE["cpu_ratio"])})
            value = config["processes"]["ratios"].get("python_over_cpp_cpu_per_image")
            if value is not None:
                checks.append({"target": f"Python process / C++ host CPU per image > {PROTOTYPE['cpu_ratio']}",
                               "bundle": config["name"], "value": value, "threshold": PROTOTYPE["cpu_ratio"],
                               "pass": bool(value > PROTOTYPE["cpu_ratio"])})
        value = s["speedup"].get("select")
        copy_ms = s.get("select_copy_ms")
        if value is not None and copy_ms is not None and s["native_ms"]["select"] > copy_ms:
            # the Explainer holds S, T and T's mean once; the step's binding copies them per call
            value = r3(s["python_ms"]["select"] / (s["native_ms"]["select"] - copy_ms))
        if value is not None and config["name"] in ("default", model):
            checks.append({"target": f"ranking + selection python/native > {PROTOTYPE['ranking_speedup']:g} "
                                     "(prototype; without the step binding's per-call copy of S and T)",
                           "bundle": config["name"], "value": value, "threshold": PROTOTYPE["ranking_speedup"],
                           "pass": bool(value > PROTOTYPE["ranking_speedup"])})
    return checks


def machine_info(service: Path | None) -> dict:
    import onnxruntime
    import textcam_native

    return {
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "platform": platform.platform(),
        "cpp_host": str(service) if service else None,
        "versions": {
            "python": platform.python_version(),
            "textcam": dist_version("textcam"),
            "textcam_native": getattr(textcam_native, "__version__", None),
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            "pillow": dist_version("pillow"),
        },
    }


def fmt(value, digits: int = 2, suffix: str = "") -> str:
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def pct(value) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def markdown(report: dict) -> str:
    m, s, v = report["machine"], report["settings"], report["machine"]["versions"]
    lines = [
        "# Native core (C++) vs the Python runtime (CPU)",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m['memory_gb']} GB, "
        f"{m['platform']}.  ",
        f"Versions: textcam {v['textcam']}, textcam_native {v['textcam_native']}, onnxruntime {v['onnxruntime']}, "
        f"numpy {v['numpy']}, Pillow {v['pillow']}, Python {v['python']}.  ",
        f"ONNX Runtime: {s['threads']} intra-op thread(s) per session (1 in the thread and process sections), "
        "spinning off. Load average before/after: "
        f"{s['loadavg_before']} / {s['loadavg_after']}; total {s['total_s']} s.  ",
        f"Images: {s['image_pool']} distinct synthetic JPEGs, {s['image_size'][0]}x{s['image_size'][1]}, quality 90. "
        f"Repeats: end to end {s['rounds']} interleaved rounds for batches {s['batches']} (warmup {s['warmup']}), "
        f"steps {s['step_rounds']} rounds, threads and processes {s['repeats']} repeats; medians throughout"
        + (" (quick smoke run: numbers are not meaningful)" if s["quick"] else "") + ".",
        "",
        "`native` = `Explainer(native=True)` (decode to concepts in the C++ core), `python` = "
        "`Explainer(native=False)` (numpy + Pillow + onnxruntime-python), `graph` = the raw ONNX Runtime call "
        "on the same float batch (`explainer.runner.run`). CPU = process CPU time.",
        "",
    ]
    for config in report["bundles"]:
        sem = config["semantics"]
        lines += [
            f"## {config['name']}",
            "",
            f"`{config['bundle']}`: input {config['input'][0]}x{config['input'][1]}, {config['classes']} classes, "
            f"{config['channels']} channels"
            + (f"; semantics C={sem['channels']}, D={sem['dim']}, V={sem['vocabulary']}" if sem else "")
            + (f"; fused ranking graph ({config['fused_candidates']} candidates, "
               f"{'used' if config['fused'] else 'not used'})" if config["fused_candidates"] else "") + ".",
            "",
            "### End to end, per image",
            "",
            "| batch | native ms | python ms | graph ms | native CPU ms | python CPU ms | graph CPU ms | "
            "python/native wall | python/native CPU | native - graph (CPU) | python - graph (CPU) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in config["end_to_end"]:
            p, r = row["per_image"], row["ratios"]
            if row.get("refused"):
                lines.append(f"| {row['batch']} | refused: {row['refused']} |" + " |" * 9)
                continue
            lines.append(
                f"| {row['batch']} | {fmt(p['native']['wall_ms'])} | {fmt(p['python']['wall_ms'])} | "
                f"{fmt(p['graph']['wall_ms'])} | {fmt(p['native']['cpu_ms'])} | {fmt(p['python']['cpu_ms'])} | "
                f"{fmt(p['graph']['cpu_ms'])} | {fmt(r['python_over_native_wall'], 2, 'x')} | "
                f"{fmt(r['python_over_native_cpu'], 2, 'x')} | {pct(r['native_non_graph_share_cpu'])} | "
                f"{pct(r['python_non_graph_share_cpu'])} |")
        a = config["agreement"]
        lines += ["", "`X - graph`: the explanation's time beyond the graph's, as a share of the graph's (process CPU; "
                      "the wall-clock shares are in native.json)."]
        lines += ["", f"Agreement on {a['images']} images: same classes {a['same_classes']}, same phrases "
                      f"{a['same_phrases']}, heatmap max abs diff {a['heatmap_max_abs_diff']:.1e}.", ""]
        st = config["steps"]
        lines += [
            f"### Where the time goes (batch 1, {st['image']['width']}x{st['image']['height']} JPEG)",
            "",
            "| step | native ms | python ms | python/native | native % of graph | python % of graph |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for step in STEPS:
            if step in st["native_ms"]:
                lines.append(
                    f"| {step} | {fmt(st['native_ms'][step], 3)} | {fmt(st['python_ms'][step], 3)} | "
                    f"{fmt(st['speedup'][step], 1, 'x')} | {pct(st['native_ms'][step] / st['graph_ms'])} | "
                    f"{pct(st['python_ms'][step] / st['graph_ms'])} |")
        lines += [
            f"| **non-graph total** | {fmt(st['native_non_graph_ms'], 3)} | {fmt(st['python_non_graph_ms'], 3)} | "
            f"{fmt(ratio(st['python_non_graph_ms'], st['native_non_graph_ms']), 1, 'x')} | "
            f"**{pct(st['native_non_graph_share'])}** | {pct(st['python_non_graph_share'])} |",
            f"| graph (ORT) | {fmt(st['graph_ms'], 3)} | {fmt(st['graph_ms'], 3)} | | 100% | 100% |",
            "",
        ]
        if st["select"]:
            sel = st["select"]
            lines += [
                f"`select` = ranking + diverse selection (C={sel['channels']}, D={sel['dim']}, V={sel['vocabulary']}, "
                f"top_k {sel['settings']['top_k']}, {sel['settings']['steps']} steps"
                + (f", among the fused graph's {sel['candidates_from_graph']} candidates"
                   if sel["candidates_from_graph"] else ", ranking all phrases")
                + f"; same ids: {sel['same_ids']}). The `textcam_native.select` binding copies S and T and "
                f"averages T on each call ({fmt(st['select_copy_ms'], 3)} ms, measured alone), which the core's "
                "Explainer does once; without it the native non-graph share is "
                f"{pct(st.get('native_non_graph_share_without_binding_copy'))}. With 8 rows per call (the copy "
                f"spread over 8 images) select takes {fmt(st['select_batch8_per_image_ms']['native'], 3)} ms per "
                f"image natively vs {fmt(st['select_batch8_per_image_ms']['python'], 3)} ms in numpy "
                f"({fmt(st['select_batch8_per_image_ms']['speedup'], 1)}x).",
                "",
            ]
        th = config["threads"]
        lines += [
            f"### Threads (one shared Explainer, batch 1, {th['images_per_run']} images per run; "
            "C++ host: `textcam_service --threads N`)",
            "",
            "| path | threads | images/s | speedup over 1 | CPU ms / image | cores busy |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in th["rows"]:
            lines.append(f"| {row['path']} | {row['threads']} | {fmt(row['images_per_s'], 1)} | "
                         f"{fmt(row['speedup_over_1'], 2, 'x')} | {fmt(row['cpu_ms_per_image'])} | "
                         f"{fmt(row['cores_used'])} |")
        lines += ["", "`cores busy` = process CPU time / wall time of the run: with N threads it stays near 1 when "
                      "something serializes the calls, or when other work on the machine holds the other cores "
                      "(see the load average above)."]
        pr = config["processes"]
        lines += [
            "",
            f"### Processes (fresh child over {pr['images'][1]} files vs {pr['images'][0]}; batch 1, 1 thread)",
            "",
            "| process | peak RSS MB | wall ms / image | CPU ms / image | start-up s |",
            "|---|---:|---:|---:|---:|",
        ]
        names = {"cpp_host": "C++ host (textcam_service)", "python-numpy": "Python, numpy path",
                 "python-native": "Python, native core"}
        for kind, row in pr["rows"].items():
            lines.append(f"| {names[kind]} | {fmt(row['peak_rss_mb'], 0)} | {fmt(row['wall_ms_per_image'])} | "
                         f"{fmt(row['cpu_ms_per_image'])} | {fmt(row['startup_wall_s'])} |")
        if pr["ratios"]:
            r = pr["ratios"]
            lines += ["", f"Python (numpy path) / C++ host: CPU per image {fmt(r['python_over_cpp_cpu_per_image'])}x, "
                          f"wall per image {fmt(r['python_over_cpp_wall_per_image'])}x, peak RSS "
                          f"{fmt(r['python_over_cpp_peak_rss'])}x."]
        agreement = "; ".join(f"{k}: same classes {a['same_classes']}, same phrases {a['same_phrases']}"
                              for k, a in pr["agreement"].items())
        lines += ["", f"Answers vs the numpy-path process: {agreement}.", ""]
    if not report["machine"]["cpp_host"]:
        lines += ["The C++ host (build/cpp/textcam_service) was not built: its rows are left out "
                  "(`--build-service`).", ""]
    lines += ["## Targets", "", "| target | bundle | value | threshold | result |", "|---|---|---:|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['bundle']} | {fmt(t['value'], 3)} | {t['threshold']:g} | "
                     f"{'PASS' if t['pass'] else 'MISS'} |")
    passed = sum(t["pass"] for t in report["targets"])
    lines += ["", f"{passed}/{len(report['targets'])} targets met."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = report["bundles"]
    fig, axes = plt.subplots(len(configs), 4, figsize=(18, 4 * len(configs)), squeeze=False)
    for ax_row, config in zip(axes, configs, strict=True):
        name = config["name"]
        # 1: CPU per image, end to end
        ax = ax_row[0]
        batches = [r["batch"] for r in config["end_to_end"]]
        x = np.arange(len(batches))
        for offset, key in zip((-0.27, 0, 0.27), ("native", "python", "graph"), strict=True):
            ax.bar(x + offset, [r["per_image"][key]["cpu_ms"] for r in config["end_to_end"]], 0.27, label=key)
        ax.set_xticks(x, [f"batch {b}" for b in batches])
        ax.set_ylabel("CPU ms per image")
        ax.set_title(f"{name}: end to end", fontsize=10)
        ax.legend(fontsize=8)
        # 2: non-graph steps as % of the graph
        ax = ax_row[1]
        st = config["steps"]
        bottom = np.zeros(2)
        for step in STEPS:
            if step in st["native_ms"]:
                values = np.array([st["native_ms"][step], st["python_ms"][step]]) / st["graph_ms"] * 100
                ax.bar(["native", "python"], values, 0.5, bottom=bottom, label=step)
                bottom += values
        if name == NON_GRAPH_TARGET[0]:
            ax.axhline(NON_GRAPH_TARGET[2] * 100, color="red", linestyle="--", linewidth=1, label="target")
        ax.set_ylabel("% of the graph's time (batch 1)")
        ax.set_title(f"{name}: non-graph steps", fontsize=10)
        ax.legend(fontsize=8)
        # 3: threads
        ax = ax_row[2]
        for side in ("native", "python", "cpp_host"):
            rows = [r for r in config["threads"]["rows"] if r["path"] == side]
            if rows:
                ax.plot([r["threads"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=side)
        ax.set_xlabel("caller threads")
        ax.set_ylabel("images / s")
        ax.set_xticks(report["settings"]["thread_counts"])
        ax.set_ylim(bottom=0)
        ax.set_title(f"{name}: throughput", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        # 4: peak RSS
        ax = ax_row[3]
        rows = config["processes"]["rows"]
        ax.bar(list(rows), [r["peak_rss_mb"] for r in rows.values()], 0.5, color=["C2", "C1", "C0"][-len(rows):])
        ax.set_ylabel("peak RSS (MB)")
        ax.set_title(f"{name}: process peak RSS", fontsize=10)
    fig.suptitle(f"textcam native core vs Python runtime ({report['machine']['cpu_model']}, "
                 f"{report['machine']['cpu_count']} CPUs, onnxruntime {report['machine']['versions']['onnxruntime']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# command line


def size_pair(value: str) -> tuple[int, int]:
    width, _, height = value.partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected WIDTHxHEIGHT") from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", type=lambda v: [b for b in v.split(",") if b], default=None,
                        help="'default' and/or torchvision model names exported at layer4 (default: default,resnet50)")
    parser.add_argument("--batches", type=int_list, default=None, help="batch sizes (default 1,8)")
    parser.add_argument("--rounds", type=int_list, default=None,
                        help="end-to-end rounds, one per batch size or one for all (default 30,10)")
    parser.add_argument("--step-rounds", type=int, default=None, help="rounds of the per-step kernels (default 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per contender (default 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats of the thread and process runs (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime intra-op threads for the end-to-end and step sections (default 1)")
    parser.add_argument("--thread-counts", type=int_list, default=None, help="caller threads (default 1,2,4)")
    parser.add_argument("--thread-seconds", type=float, default=None,
                        help="about how long one thread-scaling run takes at 1 thread (default 1.5)")
    parser.add_argument("--max-thread-images", type=int, default=None, help="cap on images per thread run (400)")
    parser.add_argument("--process-images", type=int_list, default=None,
                        help="images in the short process run and at most in the long one (default 4,600; the long "
                             "one takes about --process-seconds more; per image = the difference)")
    parser.add_argument("--process-seconds", type=float, default=None,
                        help="about how much longer the long process run takes (default 3)")
    parser.add_argument("--image-size", type=size_pair, default=None, help="JPEG size WxH (default 640x480)")
    parser.add_argument("--input-size", type=int, default=None, help="ResNet input side (default 224)")
    parser.add_argument("--num-classes", type=int, default=None, help="ResNet classes (default 1000)")
    parser.add_argument("--vocabulary", type=int, default=None, help="phrases V of the random store (default 1000)")
    parser.add_argument("--dim", type=int, default=None, help="embedding size D of the random store (default 512)")
    parser.add_argument("--service", type=Path, default=DEFAULT_SERVICE,
                        help="the C++ host binary (default build/cpp/textcam_service)")
    parser.add_argument("--build-service", action="store_true", help="build the C++ host with CMake first")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"exported bundles are kept and reused here (default {DEFAULT_CACHE})")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="output directory for native.json/.md/.png (default benchmarks/results)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the default bundle and a 64x64 ResNet-18, batches 1,2, 2 rounds")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "BUNDLE", "LIST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    quick = args.quick
    args.bundles = args.bundles or (["default", "resnet18"] if quick else ["default", "resnet50"])
    args.batches = args.batches or ([1, 2] if quick else [1, 8])
    args.rounds = args.rounds or ([2] if quick else [30, 10])
    if len(args.rounds) == 1:
        args.rounds = args.rounds * len(args.batches)
    if len(args.rounds) != len(args.batches):
        parser.error(f"--rounds: {len(args.rounds)} values for {len(args.batches)} batch sizes")
    args.step_rounds = args.step_rounds or (2 if quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.repeats = args.repeats or (1 if quick else 5)
    args.thread_counts = args.thread_counts or ([1, 2] if quick else [1, 2, 4])
    if 1 not in args.thread_counts:
        args.thread_counts = [1, *args.thread_counts]
    args.thread_seconds = args.thread_seconds or (0.05 if quick else 1.5)
    args.max_thread_images = args.max_thread_images or (8 if quick else 400)
    args.process_images = args.process_images or ([1, 3] if quick else [4, 600])
    if len(args.process_images) != 2:
        parser.error("--process-images: two counts")
    args.process_seconds = args.process_seconds or (0.01 if quick else 3.0)
    args.image_size = args.image_size or ((160, 120) if quick else (640, 480))
    args.input_size = args.input_size or (64 if quick else 224)
    args.num_classes = args.num_classes or (10 if quick else 1000)
    args.vocabulary = args.vocabulary or (100 if quick else 1000)
    args.dim = args.dim or (64 if quick else 512)
    if args.threads < 1:
        parser.error("--threads must be positive")
    return args


def find_service(args) -> Path | None:
    if args.build_service:
        log("building the C++ host (cmake -S cpp -B build/cpp)")
        subprocess.run(["cmake", "-S", str(ROOT / "cpp"), "-B", str(ROOT / "build" / "cpp"), "-G", "Ninja",
                        f"-DPython3_EXECUTABLE={sys.executable}"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(ROOT / "build" / "cpp")], check=True, stdout=subprocess.DEVNULL)
    if args.service.is_file() and os.access(args.service, os.X_OK):
        return args.service
    log(f"no C++ host at {args.service}: its rows are left out (--build-service builds it)")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(*args.child)
    try:
        import textcam_native  # noqa: F401
    except ImportError:
        print("native.py: textcam_native is not installed (pip install ./native)", file=sys.stderr)
        return 2
    service = find_service(args)
    args.out.mkdir(parents=True, exist_ok=True)
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    targets = [Target(name, args.input_size if name != "default" else 64, args.num_classes, args.vocabulary,
                      args.dim) for name in args.bundles]
    pool = max(16, max(args.batches))
    with tempfile.TemporaryDirectory(prefix="textcam-native-bench-") as tmp:
        log(f"writing {pool} {args.image_size[0]}x{args.image_size[1]} JPEGs")
        images = make_images(Path(tmp), pool, *args.image_size)
        bundles = [run_target(target, args, images, service) for target in targets]
    report = {
        "machine": machine_info(service),
        "settings": {
            "quick": args.quick,
            "threads": args.threads,
            "batches": args.batches,
            "rounds": args.rounds,
            "step_rounds": args.step_rounds,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "thread_counts": args.thread_counts,
            "process_images": args.process_images,
            "process_seconds": args.process_seconds,
            "image_size": list(args.image_size),
            "image_pool": pool,
            "ort_allow_spinning": False,
            "resnet": {"input_size": args.input_size, "num_classes": args.num_classes,
                       "vocabulary": args.vocabulary, "dim": args.dim},
            "loadavg_before": loadavg_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "total_s": round(time.perf_counter() - started, 1),
            "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "bundles": bundles,
    }
    report["targets"] = evaluate_targets(report)
    (args.out / "native.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "native.md").write_text(text)
    plot(report, args.out / "native.png")
    print(text)
    log(f"wrote {args.out / 'native.json'}, native.md, native.png in {report['settings']['total_s']} s")
    refused = [f"{c['name']} batch {r['batch']}" for c in report["bundles"] for r in c["end_to_end"] if r["refused"]]
    if refused:
        log(f"error: {len(refused)} end-to-end row(s) refused, their timings contradict each other: "
            f"{'; '.join(refused)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
