"""Cost of building channel semantics: time per phase and peak memory vs probe-set size, the scan's
memory vs probe-set size (streamed selection against the old full [N, C] matrix), and the LDA
alone at ImageNet scale (C=2048 channels, D=512, M=50).

    python benchmarks/semantics_build.py        # builds N = 2000; scans N = 2000, 10000, 20000; LDA C=2048
    python benchmarks/semantics_build.py --sizes 200 --scan-sizes 200,400 --quick   # smoke run

Each build and each scan runs in its own process so its memory is its own. The scan's memory is
measured two ways while it runs: the growth of resident memory over the process's size just before
the scan (sampled every 20 ms; includes ONNX Runtime's arenas and image decoding) and the peak of
Python and numpy allocations (tracemalloc). The streamed scan is the builder's own (stopped after
its select phase); the full-matrix scan is ``scan_activations`` + ``extreme_images``, what the
builder did before. The probe images are generated scenes (the largest set once; smaller ones are
its first files); the model is a random-weight ResNet-18 at layer4 (512 channels, 64x64 input);
CLIP is the random-weight textcam-tiny-clip (the cost does not depend on its training).
Writes results/semantics_build.json and results/semantics_build.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build_once(size: int, work: Path, m: int) -> dict:
    """Runs in a child process: generate the probe set, export, build, report."""
    import torch

    from textcam.export import export_bundle
    from textcam.export.model_source import torchvision_model
    from textcam.semantics_store import build_semantics, load_clip
    from textcam.shapes_world import ShapesWorld

    probe = work / f"probe{size}"
    start = time.perf_counter()
    ShapesWorld(100, seed=size).write_pngs(probe, size)
    generate_s = time.perf_counter() - start
    torch.manual_seed(0)
    bundle = export_bundle(torchvision_model("resnet18", num_classes=5), "layer4", work / f"b{size}.textcam",
                           input_size=(64, 64)).path
    report = build_semantics(bundle, probe, load_clip("textcam-tiny-clip"), vocab=["builtin:attributes"], m=m,
                             cache=work / "cache", show_progress=False, log=lambda _m: None)
    return {"probe_images": size, "m": report.m, "channels": report.channels, "generate_s": generate_s,
            "phases_s": report.seconds, "total_s": sum(report.seconds.values()),
            "peak_memory_mb": report.peak_memory_mb, "embedded_images": report.embedded_images}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssPeak:
    """Samples resident memory in a thread: ru_maxrss cannot be reset, and the imports and model
    load before the scan would hide a scan that stays below them."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


class _StopAfterSelect(Exception):
    pass


def scan_once(size: int, work: Path, bundle: Path, mode: str, m: int) -> dict:
    """Runs in a child process: the scan (and selection) of the first ``size`` probe images."""
    from textcam.runtime.backends import create_runner
    from textcam.runtime.bundle import Bundle
    from textcam.semantics_store import build_semantics, load_clip
    from textcam.semantics_store.probe_set import extreme_images, list_probe_images, scan_activations

    # a folder of hard links, not a list file: reading a list file reserves its 1 GiB size limit
    # up front, which tracemalloc would report as the peak of both scans
    listing = work / f"probe{size}-{mode}"
    listing.mkdir()
    for path in sorted((work / "probe").glob("*.png"))[:size]:
        os.link(path, listing / path.name)
    copy = work / f"scan-{mode}-{size}.textcam"
    shutil.copytree(bundle, copy)
    clip = load_clip("textcam-tiny-clip")
    opened = Bundle.open(copy)
    channels = 0
    # import what the scan imports lazily before the baseline, so the growth is the scan's alone
    import onnxruntime  # noqa: F401
    from PIL import PngImagePlugin  # noqa: F401

    baseline = _rss_mb()
    tracemalloc.start()
    start = time.perf_counter()
    with _RssPeak() as rss:
        if mode == "streamed":
            def stop(name):
                if name == "select":
                    raise _StopAfterSelect

            with contextlib.suppress(_StopAfterSelect):
                build_semantics(copy, listing, clip, vocab=["builtin:classes"], m=m, show_progress=False,
                                log=lambda _m: None, on_phase=stop)
            channels = opened.channels
        else:
            scores, _kept, _failed = scan_activations(opened, create_runner("onnxruntime", opened),
                                                      list_probe_images(listing), 32)
            extreme_images(scores, min(m, len(scores) // 2))
            channels = scores.shape[1]
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"mode": mode, "probe_images": size, "m": m, "seconds": seconds, "rss_before_mb": baseline,
            "rss_growth_mb": rss.peak - baseline, "traced_peak_mb": traced_peak, "channels": channels}


def export_once(path: Path) -> None:
    import torch

    from textcam.export import export_bundle
    from textcam.export.model_source import torchvision_model

    torch.manual_seed(0)
    export_bundle(torchvision_model("resnet18", num_classes=5), "layer4", path, input_size=(64, 64))


def lda_timing(channels: int, dim: int, m: int, unique: int) -> dict:
    from textcam.semantics_store.lda import channel_directions

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((unique, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    ids = rng.integers(0, unique, (channels, 2 * m))
    result = {}
    for mode in ("shrinkage", "pooled"):
        start = time.perf_counter()
        channel_directions(embeddings, ids[:, :m], ids[:, m:], mode=mode)
        result[f"{mode}_s"] = time.perf_counter() - start
    return {"channels": channels, "dim": dim, "m": m, **result}


def _child(*args: str) -> dict:
    run = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000", help="probe-set sizes of whole builds, comma-separated")
    parser.add_argument("--scan-sizes", default="2000,10000,20000",
                        help="probe-set sizes of the scan-memory runs, comma-separated ('' for none)")
    parser.add_argument("-m", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="smoke run: small LDA as well")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--render", action="store_true", help="rewrite the markdown from the JSON in --out only")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scan-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="streamed", help=argparse.SUPPRESS)
    parser.add_argument("--export", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(build_once(args.child, args.work, args.m)))
        return
    if args.scan_child is not None:
        print(json.dumps(scan_once(args.scan_child, args.work, args.work / "scan.textcam", args.mode, args.m)))
        return
    if args.render:
        result = json.loads((args.out / "semantics_build.json").read_text())
        (args.out / "semantics_build.md").write_text(render(result))
        return
    if args.export is not None:
        export_once(args.export)
        print("{}")
        return
    builds, scans = [], []
    scan_sizes = [int(s) for s in args.scan_sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",") if s]:
            builds.append(_child("--child", str(size), "--work", tmp, "-m", str(args.m)))
            last = builds[-1]
            print(f"N={size}: {last['total_s']:.1f}s, peak {last['peak_memory_mb']:.0f} MB", file=sys.stderr)
        if scan_sizes:
            from textcam.shapes_world import ShapesWorld

            work = Path(tmp)
            ShapesWorld(100, seed=1).write_pngs(work / "probe", max(scan_sizes))
            _child("--export", str(work / "scan.textcam"))
            for size in scan_sizes:
                for mode in ("streamed", "full-matrix"):
                    scans.append(_child("--scan-child", str(size), "--mode", mode, "--work", tmp, "-m", str(args.m)))
                    last = scans[-1]
                    print(f"scan {mode} N={size}: {last['seconds']:.1f}s, resident +{last['rss_growth_mb']:.0f} MB, "
                          f"traced peak {last['traced_peak_mb']:.1f} MB", file=sys.stderr)
    lda = lda_timing(256, 128, 20, 2000) if args.quick else lda_timing(2048, 512, 50, 20000)
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "builds": builds, "scans": scans, "lda": lda}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "semantics_build.json").write_text(json.dumps(result, indent=2))
    text = render(result)
    (args.out / "semantics_build.md").write_text(text)
    print(text)


def render(result: dict) -> str:
    """The markdown report of one run's JSON (``--render`` rewrites it without running anything)."""
    builds, scans, lda = result["builds"], result.get("scans", []), result["lda"]
    lines = ["# Semantics build cost", "",
             f"{result['machine']['cpus']} CPUs, shared with other work while it ran: the seconds are "
             "indicative, the memory is not affected.", ""]
    if builds:
        phases = list(builds[0]["phases_s"])
        lines += ["| probe images | M | " + " | ".join(f"{p} s" for p in phases)
                  + " | total s | peak MB | images embedded |",
                  "|---|---|" + "---|" * (len(phases) + 3)]
        for b in builds:
            lines.append(f"| {b['probe_images']} | {b['m']} | "
                         + " | ".join(f"{b['phases_s'][p]:.1f}" for p in phases)
                         + f" | {b['total_s']:.1f} | {b['peak_memory_mb']:.0f} | {b.get('embedded_images', '')} |")
        lines.append("")
    if scans:
        channels = max(s["channels"] for s in scans)
        m = scans[0]["m"]
        lines += [f"Scan memory ({channels} channels, M={m}): growth of resident memory during the scan "
                  "over the process just before it, and the peak of Python + numpy allocations (tracemalloc). "
                  "*streamed* is the builder (top/bottom-M per channel kept while scanning); *full-matrix* "
                  "is the [N, C] score matrix, then the selection (the builder before).", "",
                  "| probe images | scan | seconds | resident growth MB | traced peak MB | [N, C] float32 MB |",
                  "|---|---|---|---|---|---|"]
        for s in scans:
            lines.append(f"| {s['probe_images']} | {s['mode']} | {s['seconds']:.1f} | {s['rss_growth_mb']:.1f} | "
                         f"{s['traced_peak_mb']:.1f} | {s['probe_images'] * channels * 4 / 2**20:.1f} |")
        lines += ["", "One run each. The streamed scan's traced peak is the same at every N: its 16 MB is opening "
                  "the bundle (the manifest is read with its 16 MiB size limit as the buffer), before the scan. "
                  "The full matrix's peak is about five times the [N, C] float32 matrix (argsort's int64 "
                  "indices and a permuted copy). Resident growth also holds ONNX Runtime's arenas and the "
                  "threads' malloc arenas, which differ by up to about 20 MB between runs at the same N, and the "
                  "list of probe paths, which is O(N) (about 0.5 KB per image).", ""]
    lines += [f"LDA alone, C={lda['channels']}, D={lda['dim']}, M={lda['m']}: shrinkage "
              f"{lda['shrinkage_s']:.2f} s, pooled {lda['pooled_s']:.2f} s", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
