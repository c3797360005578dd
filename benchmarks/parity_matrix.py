"""The full parity matrix: every (family, layer) x CAM method, exported bundle vs references.

For each cell the model (random-init torchvision / timm weights, head re-drawn non-zero) is
exported once at 224x224 and run in ONNX Runtime on fresh random batches of 1 and 3, against
eager PyTorch autograd (logits, channel weights, channel means) and pytorch-grad-cam's heatmap
(plain CAM: the linear head's class row + pytorch-grad-cam's scale_cam_image). The matrix and its
comparisons are textcam.export.parity_matrix (references: textcam.export.reference), shared with
``pytest -m full_matrix tests/test_parity.py``.

Each (family, layer) runs in its own child process, one after the other, so a model's memory is
returned before the next starts. Results are rewritten after every case::

    python benchmarks/parity_matrix.py                      # everything (20-60 min on 2 cores)
    python benchmarks/parity_matrix.py --only resnet50 vgg16
    python benchmarks/parity_matrix.py --fast               # the default-test cases (small inputs)

Writes benchmarks/results/parity.json and parity.md (or to --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from textcam.export import parity_matrix as pm
from textcam.export import reference as ref

ROOT = Path(__file__).resolve().parent.parent
METHOD_COLUMNS = ref.METHODS


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def all_cases(fast: bool) -> list[ref.Case]:
    if fast:
        return [*pm.FAST_CASES, pm.FAST_SWIN]
    return list(pm.FULL_CASES)


def case_methods(case: ref.Case) -> tuple[str, ...]:
    return pm.FAST_SWIN_METHODS if case is pm.FAST_SWIN else case.methods()


def run_case(case: ref.Case, workdir: Path) -> list[dict]:
    """All methods of one case, in this process. Errors are recorded per cell, not raised."""
    if case.family.startswith("timm:") and not pm.timm_available():
        return [{"case": case.id, "family": case.family, "layer": case.layer, "method": m,
                 "status": "skipped", "reason": "timm not installed"} for m in case_methods(case)]
    model = ref.build_model(case)
    rows = []
    for method in case_methods(case):
        start = time.perf_counter()
        try:
            row = pm.evaluate(case, model, method, workdir, lenient=True)
        except Exception as exc:  # one broken cell must not hide the rest of the matrix
            row = {"case": case.id, "family": case.family, "layer": case.layer, "method": method,
                   "status": "error", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        row["wall_s"] = round(time.perf_counter() - start, 1)
        log(f"{case.id} {method}: {row['status']} ({row['wall_s']}s) {cell_text(row)}")
        rows.append(row)
    return rows


def run_in_child(case_index: int, fast: bool, workdir: Path) -> list[dict]:
    result_file = workdir / f"case{case_index}.json"
    command = [sys.executable, __file__, "--child", str(case_index), "--workdir", str(workdir)]
    if fast:
        command.append("--fast")
    case = all_cases(fast)[case_index]
    completed = subprocess.run(command, cwd=ROOT)
    if completed.returncode != 0 or not result_file.exists():
        reason = f"child process exited with {completed.returncode} (out of memory?)"
        return [{"case": case.id, "family": case.family, "layer": case.layer, "method": m,
                 "status": "error", "error": reason} for m in case_methods(case)]
    return json.loads(result_file.read_text())


# ---------------------------------------------------------------------------------------------
# report


def cell_text(row: dict) -> str:
    status = row["status"]
    if status in ("pass", "fail"):
        text = f"{row['heatmap_max_abs']:.1e} / {row['logits_rel']:.1e}"
        text = text if status == "pass" else f"**{text}** ✗"
        if (row["case"], row["method"]) in pm.TOLERANCE_OVERRIDES:
            text += " (tol ‡)"
        if "verification_refused" in row:
            text += " (export refused by textcam's verification †)"
        return text
    if status == "refused":
        return f"n/a ({row['reason']}; refused)"
    if status == "skipped":
        return f"n/a ({row['reason']})"
    return f"error: {row['error'][:80]}"


def environment() -> dict:
    import importlib.metadata as md

    versions = {}
    packages = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "grad-cam",
                "opencv-python-headless", "timm", "numpy")
    for name in packages:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def render_markdown(report: dict) -> str:
    rows = report["rows"]
    versions = report["environment"]["versions"]
    lines = [
        "# Parity: exported bundle (ONNX Runtime, CPU) vs eager PyTorch and pytorch-grad-cam",
        "",
        f"Generated by `benchmarks/parity_matrix.py` on {report['environment']['date']} "
        f"(torch {versions['torch']}, onnxruntime {versions['onnxruntime']}, "
        f"grad-cam {versions['grad-cam']}, timm {versions['timm']}).",
        "",
        "Random-init weights, the logits' linear head re-drawn from N(0, 0.02²); fresh N(0, 1) inputs "
        f"({report['input']}), batch 1 and batch 3 (row 0 of batch 3 uses target -1, the predicted class).",
        "Cells: **max abs heatmap difference** vs pytorch-grad-cam (plain CAM: a reference built from the "
        "linear head's class row and pytorch-grad-cam's `scale_cam_image`) / **logits relative error** "
        "(max abs diff / max abs eager logit), worst of both batch sizes. "
        f"Targets: heatmap ≤ {pm.HEATMAP_MAX_ABS:.0e}, logits ≤ {pm.LOGITS_MAX_REL:.0e}; channel weights "
        f"(vs an independent float64 recomputation) and channel means ≤ {pm.WEIGHTS_MAX_REL:.0e} relative. "
        "✗ marks a miss.",
        "",
        "| family / layer | " + " | ".join(METHOD_COLUMNS) + " |",
        "|---|" + "---|" * len(METHOD_COLUMNS),
    ]
    by_case: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["method"]] = row
    for case_id, cells in by_case.items():
        texts = [cell_text(cells[m]) if m in cells else "-" for m in METHOD_COLUMNS]
        lines.append(f"| {case_id} | " + " | ".join(texts) + " |")

    header = [
        "| family / layer | " + " | ".join(METHOD_COLUMNS) + " |",
        "|---|" + "---|" * len(METHOD_COLUMNS),
    ]
    lines += ["", "## Channel weights / channel means (max relative error, worst batch)", "", *header]
    for case_id, cells in by_case.items():
        texts = []
        for m in METHOD_COLUMNS:
            row = cells.get(m)
            if row is None or row["status"] not in ("pass", "fail"):
                texts.append("-")
            else:
                texts.append(f"{row['weights_rel']:.1e} / {row['activation_rel']:.1e}")
        lines.append(f"| {case_id} | " + " | ".join(texts) + " |")

    misses = [r for r in rows if r["status"] in ("fail", "error")]
    lines += ["", "## Cases missing a target", ""]
    if not misses:
        lines.append("None.")
    for row in misses:
        detail = "; ".join(row.get("problems", [])) or row.get("error", "")
        lines.append(f"- {row['case']} {row['method']}: {detail}")
        for b in row.get("batches", []):
            peaks = zip(b["saliency_peak"], b["saliency_scale"], strict=True)
            lines.append(
                f"  - batch {b['batch']} targets {b['targets']}: heatmap vs float64 pipeline: bundle "
                f"{b['heatmap_vs_fp64_onnx']:.1e}, pytorch-grad-cam {b['heatmap_vs_fp64_library']:.1e}; "
                "saliency peak / max |saliency| per image: " + ", ".join(f"{p:.2e}/{s:.2e}" for p, s in peaks)
            )
    refused = [r for r in rows if "verification_refused" in r]
    if refused:
        lines += ["", "## † Exports refused by textcam's own verification", "",
                  "Exported again with the verification made non-fatal; the cell is that graph's parity.", ""]
        for row in refused:
            lines.append(f"- {row['case']} {row['method']}: {row['verification_refused']} "
                         f"(`{row['verification'].get('error', '')[:160]}`)")
    overrides = {k: v for k, v in pm.TOLERANCE_OVERRIDES.items() if any(r["case"] == k[0] for r in rows)}
    if overrides:
        lines += ["", "## ‡ Per-case tolerances", ""]
        for (case_id, method), limits in overrides.items():
            shown = ", ".join(f"{k} ≤ {v:.0e}" for k, v in limits.items() if k != "why")
            lines.append(f"- {case_id} {method}: {shown}. Why: {limits['why']}.")
    notes = report.get("notes") or []
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    timing = [r for r in rows if "export_s" in r]
    if timing:
        total = sum(r.get("wall_s", 0) for r in rows)
        lines += ["", f"Total wall time {total / 60:.1f} min on {report['environment']['cpus']} CPUs "
                  f"(load average at the end {report['environment']['load_average']})."]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], out: Path, fast: bool, notes: list[str]) -> None:
    report = {
        "environment": environment(),
        "input": "small inputs (see textcam.export.parity_matrix FAST_CASES)" if fast else "224x224",
        "targets": {"heatmap_max_abs": pm.HEATMAP_MAX_ABS, "logits_rel": pm.LOGITS_MAX_REL,
                    "weights_rel": pm.WEIGHTS_MAX_REL, "activation_rel": pm.ACTIVATION_MAX_REL},
        "tolerance_overrides": {f"{k[0]} {k[1]}": v for k, v in pm.TOLERANCE_OVERRIDES.items()},
        "verification_refusals": {f"{k[0]} {k[1]}": v for k, v in pm.VERIFICATION_REFUSALS.items()},
        "notes": notes,
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "parity.md").write_text(render_markdown(report))


NOTES = [
    "Explicit targets: per image, the first class in a seeded random order whose eager map is positive "
    "somewhere (random weights often give a map that is negative everywhere, which both sides turn into "
    "all zeros and which would agree vacuously).",
    "swin_t: both `features` and `norm` give [B, 7, 7, 768] channels-last outputs; pytorch-grad-cam is "
    "given `reshape_transform=lambda t: t.permute(0, 3, 1, 2)`.",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="default benchmarks/results (--fast: a temporary folder)")
    parser.add_argument("--only", nargs="*", help="families (or family/layer ids) to run")
    parser.add_argument("--fast", action="store_true", help="the small default-test cases instead")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = all_cases(args.fast)
    if args.out is None:
        fast_out = Path(tempfile.gettempdir()) / "textcam-parity-fast"
        args.out = fast_out if args.fast else ROOT / "benchmarks" / "results"

    if args.child is not None:  # one case, results to a file for the parent
        rows = run_case(cases[args.child], args.workdir)
        (args.workdir / f"case{args.child}.json").write_text(json.dumps(rows))
        return 0

    selected = [i for i, c in enumerate(cases) if not args.only or c.family in args.only or c.id in args.only]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="textcam-parity-") as tmp:
        for i in selected:
            log(f"case {cases[i].id}")
            rows += run_in_child(i, args.fast, Path(tmp))
            write_report(rows, args.out, args.fast, NOTES)
    misses = [r for r in rows if r["status"] in ("fail", "error")]
    log(f"done: {len(rows)} cells, {len(misses)} missing a target; wrote {args.out}/parity.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
