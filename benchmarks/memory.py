"""Peak memory of explaining one large image, with and without the overlay.

Each case runs in a fresh child process: it imports the runtime, opens the built-in default
bundle (``textcam.shapes_world.artifacts.DEFAULT_BUNDLE``) and explains a tiny image once, so the
ONNX Runtime session and its arena are in the baseline. The child then records
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the high-water mark so far) as the baseline, runs the
case and reports the new high-water mark minus the baseline: the memory the image itself cost.

Cases, per synthetic PNG (an RGB pattern, written once to a temporary folder):

- ``explain``: ``Explainer.explain(path)``: decode, preprocess, graph, heatmap at full size;
- ``explain+overlay``: the same, then what ``textcam explain --out`` adds: decode the file again
  and build the overlay (``Explanation.overlay``), kept in memory, not saved.

The budget (``textcam.runtime.images.MEMORY_BUDGET_BYTES``) is stated for images up to the default
pixel cap; larger images run here with ``max_pixels`` raised so that the per-pixel cost shows.

    python benchmarks/memory.py                      # 25 MP and 100 MP
    python benchmarks/memory.py --megapixels 5,25 --out /tmp/memory-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = ("explain", "explain+overlay")
# the same script on commit 37b11bc, before the in-place heatmap and the bounded overlay (MB)
BEFORE = {"25 MP": {"explain": 399, "explain+overlay": 1401}, "100 MP": {"explain": 1601, "explain+overlay": 5602}}
RESULTS = Path(__file__).resolve().parent / "results"


def make_png(path: Path, megapixels: float) -> tuple[int, int]:
    """A 4:3 RGB PNG of about ``megapixels``: smooth gradients plus a tiled noise pattern."""
    from PIL import Image

    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    height = round(megapixels * 1e6 / width)
    rows = []
    tile = np.random.default_rng(0).integers(0, 64, (97, 89, 3), dtype=np.uint8)
    for top in range(0, height, 1024):  # row bands keep the generator itself small
        bottom = min(height, top + 1024)
        y = np.arange(top, bottom, dtype=np.float32)[:, None]
        x = np.arange(width, dtype=np.float32)[None, :]
        band = np.empty((bottom - top, width, 3), np.uint8)
        band[..., 0] = (x / width * 191).astype(np.uint8)
        band[..., 1] = (y / height * 191).astype(np.uint8)
        band[..., 2] = ((x + y) % 191).astype(np.uint8)
        reps = (math.ceil((bottom - top) / 97) + 1, math.ceil(width / 89), 1)
        band += np.tile(tile, reps)[top % 97: top % 97 + bottom - top, :width]
        rows.append(Image.fromarray(band))
    image = Image.new("RGB", (width, height))
    for index, band in enumerate(rows):
        image.paste(band, (0, index * 1024))
    image.save(path, compress_level=1)
    return width, height


def child(case: str, path: str, max_pixels: int) -> dict:
    """Run one case in this (fresh) process and return its peak-memory record."""
    from PIL import Image

    from textcam.runtime import Explainer
    from textcam.runtime.images import load_image
    from textcam.shapes_world.artifacts import DEFAULT_BUNDLE, require

    explainer = Explainer(require(DEFAULT_BUNDLE), max_pixels=max_pixels, backend_options={"intra_op_threads": 1})
    explainer.explain(np.zeros((32, 32, 3), np.uint8))  # session and arena warm: part of the baseline
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    result = explainer.explain(path)
    overlay_size = None
    if case == "explain+overlay":
        overlay = result.overlay(load_image(path, max_pixels))
        overlay_size = list(overlay.size)
        assert isinstance(overlay, Image.Image)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "case": case,
        "heatmap_shape": list(result.heatmap.shape),
        "overlay_size": overlay_size,
        "baseline_mb": baseline / 1e6,
        "peak_extra_mb": (peak - baseline) / 1e6,
        "seconds": seconds,
    }


def run_case(case: str, path: Path, max_pixels: int) -> dict:
    command = [sys.executable, __file__, "--child", case, str(path), str(max_pixels)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"case": case, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def budget_info() -> dict:
    from textcam.runtime import images

    info = {"default_max_pixels": images.DEFAULT_MAX_PIXELS}
    for name in ("MEMORY_BUDGET_BYTES", "MAX_OVERLAY_PIXELS"):
        if hasattr(images, name):
            info[name.lower()] = getattr(images, name)
    return info


def write_markdown(report: dict, path: Path) -> None:
    budget = report["budget"]
    lines = [
        "# Peak memory of one large image",
        "",
        "`python benchmarks/memory.py`: peak RSS of a fresh process minus its baseline after imports, "
        "bundle load and one warm-up call (the default shapes-world bundle, 64x64 input). "
        "`explain` = `Explainer.explain(path)`; `+overlay` adds decoding the file again and "
        "`Explanation.overlay` (what `textcam explain --out` does).",
        "",
        f"Default pixel cap: {budget['default_max_pixels']:,}"
        + (f"; memory budget {budget['memory_budget_bytes'] / 1e9:g} GB"
           if "memory_budget_bytes" in budget else "")
        + (f"; overlays at most {budget['max_overlay_pixels']:,} pixels" if "max_overlay_pixels" in budget else "")
        + ".",
        "",
        "| image | pixels | case | peak extra (MB) | bytes / pixel | overlay size | seconds |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['image']} | {row['pixels']:,} | {row['case']} | error: {row['error']} | | | |")
            continue
        overlay = "x".join(map(str, row["overlay_size"])) if row["overlay_size"] else "-"
        lines.append(
            f"| {row['image']} | {row['pixels']:,} | {row['case']} | {row['peak_extra_mb']:.0f} | "
            f"{row['peak_extra_mb'] * 1e6 / row['pixels']:.2f} | {overlay} | {row['seconds']:.1f} |"
        )
    before = "; ".join(f"{size}: explain {v['explain']} MB, +overlay {v['explain+overlay']} MB (full-size overlay)"
                       for size, v in BEFORE.items())
    lines += ["", f"Before (commit 37b11bc, same script): {before}.", "",
              f"Machine: {report['machine']}, Python {report['python']}.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", default="25,100", help="comma-separated image sizes (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for memory.json and memory.md")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "PNG", "MAX_PIXELS"), help=argparse.SUPPRESS)
    parser.add_argument("--make", nargs=2, metavar=("PNG", "MEGAPIXELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        print(json.dumps(make_png(Path(args.make[0]), float(args.make[1]))))
        return
    if args.child:
        case, path, max_pixels = args.child
        print(json.dumps(child(case, path, int(max_pixels))))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="textcam-memory-") as folder:
        for megapixels in (float(v) for v in args.megapixels.split(",")):
            path = Path(folder) / f"{megapixels:g}mp.png"
            # a child writes the PNG: a large parent would lift every later child's ru_maxrss,
            # which Linux carries across fork and exec
            made = subprocess.run([sys.executable, __file__, "--make", str(path), str(megapixels)],
                                  capture_output=True, text=True, check=True)
            width, height = json.loads(made.stdout)
            pixels = width * height
            for case in CASES:
                row = run_case(case, path, max(pixels, 1))
                row.update(image=f"{width}x{height} PNG ({path.stat().st_size / 1e6:.0f} MB)", pixels=pixels)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
            path.unlink()
    report = {
        "budget": budget_info(),
        "rows": rows,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "memory.md")
    print(f"wrote {args.out / 'memory.json'} and {args.out / 'memory.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
