"""One-time cost of a textcam export: wall-clock time (with the manifest's per-phase split), peak
memory and the size of the joint ONNX graph, next to a plain ``torch.onnx.export`` of the same model.

Each export runs in a fresh child process (so its peak RSS is its own and nothing is cached
between runs); ``--repeats`` exports per model give a median. Random-init weights.

Full run (see benchmarks/README.md)::

    python benchmarks/export_cost.py

Smoke run (seconds)::

    python benchmarks/export_cost.py --quick --out /tmp/export-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from latency import build_model, export_plain, log, machine_info, parse_configs  # this script's folder

DEFAULT_CONFIGS = (
    "resnet50:layer4",
    "vit_b_16:encoder.layers.encoder_layer_11.ln_1",
    "vgg16:avgpool",
    "vit_l_16:encoder.layers.encoder_layer_23.ln_1",
)
QUICK_CONFIGS = ("resnet18:layer4",)
PHASES = ("probe_s", "trace_s", "onnx_export_s", "verify_s")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def weights_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def child(spec: dict) -> dict:
    """Runs in the child process: build the model, export once, report."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    input_hw = (spec["input_size"], spec["input_size"])
    model = build_model(spec["model"], spec["num_classes"], input_hw)
    baseline = peak_rss_mb()
    out = Path(spec["out"])
    start = time.perf_counter()
    if spec["kind"] == "textcam":
        from textcam.export import export_bundle

        export_bundle(model, spec["layer"], out, method=spec["method"], input_size=input_hw, force=True)
        wall = time.perf_counter() - start
        manifest = json.loads((out / "manifest.json").read_text())
        result = {
            "wall_s": wall,
            "phases": manifest["timings"],
            "onnx_bytes": manifest["model"]["size_bytes"],
            "verification": manifest.get("verification"),
        }
    else:
        export_plain(model, input_hw, out)
        result = {"wall_s": time.perf_counter() - start, "onnx_bytes": out.stat().st_size}
    result.update(
        peak_rss_mb=round(peak_rss_mb(), 1),
        baseline_rss_mb=round(baseline, 1),
        torch_threads=torch.get_num_threads(),
        params=sum(p.numel() for p in model.parameters()),
        weights_mb=round(weights_mb(model), 1),
    )
    return result


def run_child(spec: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{spec['kind']} export of {spec['model']} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(config, kind: str, args, work: Path) -> dict:
    runs = []
    for index in range(args.repeats):
        suffix = ".textcam" if kind == "textcam" else ".onnx"
        out = work / f"{config.model}-{kind}-{index}{suffix}"
        spec = {
            "kind": kind, "model": config.model, "layer": config.layer, "method": args.method,
            "input_size": args.input_size, "num_classes": args.num_classes, "threads": args.threads,
            "out": str(out),
        }
        log(f"{config.name}: {kind} export {index + 1}/{args.repeats}")
        runs.append(run_child(spec))
    walls = [r["wall_s"] for r in runs]
    median_run = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    summary = {
        "wall_s": round(statistics.median(walls), 2),
        "wall_s_runs": [round(w, 2) for w in walls],
        "onnx_bytes": median_run["onnx_bytes"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "baseline_rss_mb": median_run["baseline_rss_mb"],
        "torch_threads": median_run["torch_threads"],
        "params": median_run["params"],
        "weights_mb": median_run["weights_mb"],
    }
    if kind == "textcam":
        phases = median_run["phases"]
        summary["phases_s"] = phases
        summary["unaccounted_s"] = round(median_run["wall_s"] - sum(phases.get(p, 0.0) for p in PHASES), 2)
        summary["verification"] = median_run["verification"]
    return summary


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    v = m["versions"]
    lines = [
        "# textcam export cost",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, torch threads {s['torch_threads']}.  ",
        f"Versions: textcam {v['textcam']}, torch {v['torch']}, onnx {v['onnx']}, "
        f"onnxscript {v['onnxscript']}, onnxruntime {v['onnxruntime']}.  ",
        f"Method {s['method']}, input {s['input_size']}x{s['input_size']}, {s['num_classes']} classes, "
        f"random-init weights; median of {s['repeats']} export(s), each in a fresh process"
        + (" (quick smoke run: numbers are not meaningful)" if s["quick"] else "") + ".",
        "",
        "| model @ layer | export s | probe s | trace s | onnx export s | verify s | other s | "
        "peak RSS MB (weights) | joint ONNX MB | plain export s | plain peak RSS MB | plain ONNX MB | time vs plain "
        "| size vs plain | growth vs plain |",
        "|---|" + "---:|" * 14,
    ]
    for c in report["configs"]:
        t, p = c["textcam"], c.get("plain")
        phases = t["phases_s"]
        cells = [
            c["name"], f"{t['wall_s']:.1f}", *(f"{phases.get(k, 0.0):.1f}" for k in PHASES),
            f"{t['unaccounted_s']:.1f}", f"{t['peak_rss_mb']:.0f} ({t.get('weights_mb', 0):.0f})",
            f"{t['onnx_bytes'] / 1e6:.1f}",
        ]
        if p:
            growth = c["ratios"].get("peak_growth_over_plain")
            cells += [f"{p['wall_s']:.1f}", f"{p['peak_rss_mb']:.0f}", f"{p['onnx_bytes'] / 1e6:.1f}",
                      f"{c['ratios']['time_over_plain']:.2f}x", f"{c['ratios']['size_over_plain']:.3f}x",
                      f"{growth:.2f}x" if growth is not None else ""]
        else:
            cells += ["", "", "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "export s: wall clock of `export_bundle` (probe + trace + ONNX export + verification + writing "
        "the bundle); the phases are the manifest's `timings`. peak RSS: the child process's maximum "
        "resident memory (model included; its float32 weights in brackets). growth vs plain: textcam's "
        "peak above the RSS it had once the model was built, over the plain export's.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=lambda v: v.split(","), default=None,
                        help=f"MODEL:LAYER list (default: {','.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--repeats", type=int, default=None, help="exports per model (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--input-size", type=int, default=None, help="square input side (default 224)")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default 1000)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain torch.onnx.export baseline")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="output directory for export_cost.json/.md (default benchmarks/results)")
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet18@layer4, 64x64, one export")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return args
    args.configs = parse_configs(args.configs or list(QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS))
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.input_size = args.input_size or (64 if args.quick else 224)
    args.num_classes = args.num_classes or (10 if args.quick else 1000)
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    configs = []
    with tempfile.TemporaryDirectory(prefix="textcam-export-cost-") as tmp:
        for config in args.configs:
            entry = {"name": config.name, "model": config.model, "layer": config.layer}
            entry["textcam"] = measure(config, "textcam", args, Path(tmp))
            if not args.no_plain:
                plain = measure(config, "plain", args, Path(tmp))
                entry["plain"] = plain
                entry["ratios"] = {
                    "time_over_plain": round(entry["textcam"]["wall_s"] / plain["wall_s"], 3),
                    "size_over_plain": round(entry["textcam"]["onnx_bytes"] / plain["onnx_bytes"], 4),
                    # memory above the model itself (interpreter, caller's model and build are in both)
                    "peak_growth_over_plain": round(
                        (entry["textcam"]["peak_rss_mb"] - entry["textcam"]["baseline_rss_mb"])
                        / max(plain["peak_rss_mb"] - plain["baseline_rss_mb"], 1.0), 2),
                }
            configs.append(entry)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "machine": machine_info(args.threads or torch.get_num_threads()),
        "settings": {
            "quick": args.quick,
            "method": args.method,
            "repeats": args.repeats,
            "input_size": args.input_size,
            "num_classes": args.num_classes,
            "torch_threads": configs[0]["textcam"]["torch_threads"] if configs else None,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "total_s": round(time.perf_counter() - started, 1),
        },
        "configs": configs,
    }
    (args.out / "export_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "export_cost.md").write_text(text)
    print(text)
    log(f"wrote {args.out / 'export_cost.json'} and export_cost.md in {report['settings']['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
