"""Cost of building channel semantics: time per phase and peak memory vs probe-set size, and the
LDA alone at ImageNet scale (C=2048 channels, D=512, M=50).

    python benchmarks/semantics_build.py                       # N = 2000 and 20000, LDA C=2048
    python benchmarks/semantics_build.py --sizes 200 --quick   # smoke run

Each build runs in its own process so its peak resident memory is its own. The probe images are
generated scenes; the model is a random-weight ResNet-18 at layer4 (512 channels, 64x64 input);
CLIP is the random-weight textcam-tiny-clip (the cost does not depend on its training).
Writes results/semantics_build.json and results/semantics_build.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
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
            "peak_memory_mb": report.peak_memory_mb}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000", help="probe-set sizes, comma-separated")
    parser.add_argument("-m", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="smoke run: small LDA as well")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(build_once(args.child, args.work, args.m)))
        return
    builds = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            run = subprocess.run([sys.executable, __file__, "--child", str(size), "--work", tmp, "-m", str(args.m)],
                                 capture_output=True, text=True, check=True)
            builds.append(json.loads(run.stdout.strip().splitlines()[-1]))
            last = builds[-1]
            print(f"N={size}: {last['total_s']:.1f}s, peak {last['peak_memory_mb']:.0f} MB", file=sys.stderr)
    lda = lda_timing(256, 128, 20, 2000) if args.quick else lda_timing(2048, 512, 50, 20000)
    result = {"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
              "builds": builds, "lda": lda}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "semantics_build.json").write_text(json.dumps(result, indent=2))
    phases = list(builds[0]["phases_s"]) if builds else []
    lines = ["# Semantics build cost", "",
             "| probe images | M | " + " | ".join(f"{p} s" for p in phases) + " | total s | peak MB |",
             "|---|---|" + "---|" * (len(phases) + 2)]
    for b in builds:
        lines.append(f"| {b['probe_images']} | {b['m']} | " + " | ".join(f"{b['phases_s'][p]:.1f}" for p in phases)
                     + f" | {b['total_s']:.1f} | {b['peak_memory_mb']:.0f} |")
    lines += ["", f"LDA alone, C={lda['channels']}, D={lda['dim']}, M={lda['m']}: shrinkage "
              f"{lda['shrinkage_s']:.2f} s, pooled {lda['pooled_s']:.2f} s", ""]
    (args.out / "semantics_build.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
