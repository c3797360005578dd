"""What float32 rounding varies by CPU, and by how much: the fast parity cells and the self-test
on this machine as it is, and again with the instruction set masked to AVX2 (no AVX-512, VNNI, AMX or
bfloat16: scripts/portable/cpuid_avx2.c, as ``scripts/test.sh --portable`` runs the suite).

Each profile runs in a child process of its own. Parity: each child exports the cells itself and
compares against eager PyTorch and pytorch-grad-cam computed there too (every number of a machine comes
from that machine). Self-test: the bundles are exported once, by this process (the machine as it is),
and each child runs their self-test: the AVX2 child is a host on another CPU than the exporting one.

    python benchmarks/cpu_profiles.py        # ~5 min on 2 cores; writes results/cpu_profiles.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHIM_SOURCE = ROOT / "scripts" / "portable" / "cpuid_avx2.c"
CELLS = (("resnet18/layer4", "gradcam"), ("resnet18/layer4", "gradcam++"), ("resnet18/layer3", "gradcam"),
         ("resnet18/layer3", "layercam"), ("tiny_vit/encoder.layers.encoder_layer_1.ln_1", "gradcam"))
METRICS = ("heatmap_max_abs", "logits_rel", "weights_rel", "activation_rel")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_shim(folder: Path) -> Path:
    library = folder / "libcpuid_avx2.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(SHIM_SOURCE), "-ldl", "-lpthread"],
                   check=True)
    return library


def export_selftest_bundles(folder: Path) -> list[dict]:
    """A ResNet-18 at layer4 and at the worse-conditioned layer3 (random init, 64x64), exported here."""
    import torchvision

    from textcam.export import export_bundle

    bundles = []
    for layer in ("layer4", "layer3"):
        model = torchvision.models.resnet18(num_classes=5).eval()
        path = folder / f"resnet18-{layer}.textcam"
        export_bundle(model, layer, path, input_size=(64, 64), class_names=list("abcde"), force=True)
        bundles.append({"name": f"resnet18/{layer} (64x64)", "path": str(path)})
    from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

    return [{"name": "built-in colour bundle", "path": str(DEFAULT_BUNDLE)}, *bundles]


def child(bundles: list[dict], folder: Path) -> dict:
    """This process's numbers: the parity cells (exported here) and the self-tests of ``bundles``."""
    import numpy as np

    from textcam.export import parity_matrix as pm
    from textcam.export import reference as ref
    from textcam.runtime.selftest import run_selftest

    cases = {case.id: case for case in pm.FAST_CASES}
    parity = []
    for case_id, method in CELLS:
        case = cases[case_id]
        model = ref.build_model(case)
        path = pm.export_case(case, model, method, folder / f"{case_id.replace('/', '-')}-{method}.textcam")
        session = pm.open_session(path)
        for batch in (1, 3):
            result = pm.compare(case, model, session, method, batch)
            keep = {k: result[k] for k in METRICS + tuple(k for pair in pm.FLOAT64_KEYS.values() for k in pair)}
            parity.append({"cell": f"{case_id} {method}", "batch": batch, **keep,
                           "problems": pm.failures(case, method, result)})
    selftests = []
    for bundle in bundles:
        report = run_selftest(bundle["path"], "onnxruntime")
        ratio = max(row.worst / row.tolerance for row in report.rows if row.tolerance)
        worst = {f"{row.group}/{row.name}": row.worst for row in report.rows if row.tolerance}
        selftests.append({"bundle": bundle["name"], "passed": report.passed, "worst_over_tolerance": ratio,
                          "worst": worst})
    features = np._core._multiarray_umath.__cpu_features__
    return {"avx512f": bool(features.get("AVX512F")), "parity": parity, "selftest": selftests}


def run_profile(name: str, bundles: list[dict], folder: Path, preload: Path | None) -> dict:
    env = dict(os.environ)
    if preload is not None:
        env.update(LD_PRELOAD=str(preload), TEXTCAM_PORTABLE_REQUIRED="1", ONEDNN_MAX_CPU_ISA="AVX2",
                   ATEN_CPU_CAPABILITY="avx2")
    work = folder / name
    work.mkdir()
    payload = json.dumps({"bundles": bundles, "work": str(work)})
    log(f"profile {name}")
    done = subprocess.run([sys.executable, __file__, "--child", payload], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {name} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(profiles: dict[str, dict]) -> str:
    names = list(profiles)
    lines = ["# Float32 results by CPU profile", "",
             f"Machine: {platform.processor() or platform.machine()}; profiles: "
             + ", ".join(f"`{n}` ({'AVX-512' if profiles[n]['avx512f'] else 'AVX2 only'})" for n in names)
             + ". Parity cells: the graph (ONNX Runtime) against eager PyTorch / pytorch-grad-cam on fresh "
             "inputs (targets 1e-4; a miss passes only when the graph is as close to float64 as eager float32, "
             "export/parity_matrix.py FLOAT64_FACTOR). `fp64 graph / eager` is each side's error from float64.",
             "", "| cell | batch | " + " | ".join(f"{n}: map / weights / logits" for n in names)
             + " | " + " | ".join(f"{n}: fp64 map graph / eager" for n in names) + " | verdict |",
             "|---|---|" + "---|" * (2 * len(names) + 1)]
    for i, row in enumerate(profiles[names[0]]["parity"]):
        rows = [profiles[n]["parity"][i] for n in names]
        cells = [f"{r['heatmap_max_abs']:.1e} / {r['weights_rel']:.1e} / {r['logits_rel']:.1e}" for r in rows]
        fp64 = [f"{r['heatmap_vs_fp64_onnx']:.1e} / {r['heatmap_vs_fp64_library']:.1e}" for r in rows]
        verdicts = [f"{n}: {r['problems'][0] if r['problems'] else 'pass'}" for n, r in zip(names, rows, strict=True)]
        verdict = "; ".join(verdicts)
        lines.append(f"| {row['cell']} | {row['batch']} | " + " | ".join(cells) + " | " + " | ".join(fp64)
                     + f" | {verdict} |")
    lines += ["", "Self-test of bundles exported on this machine as it is (the AVX2 profile is then a host on "
              "another CPU): the worst row's error over its tolerance (1 = at the limit).", "",
              "| bundle | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, row in enumerate(profiles[names[0]]["selftest"]):
        rows = [profiles[n]["selftest"][i] for n in names]
        lines.append(f"| {row['bundle']} | " + " | ".join(
            f"{r['worst_over_tolerance']:.3f} ({'pass' if r['passed'] else 'FAIL'})" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for cpu_profiles.{json,md}")
    args = parser.parse_args()
    if args.child:
        payload = json.loads(args.child)
        print(json.dumps(child(payload["bundles"], Path(payload["work"]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        log("exporting the self-test bundles on this machine as it is")
        bundles = export_selftest_bundles(folder)
        profiles = {"machine": run_profile("machine", bundles, folder, None),
                    "avx2": run_profile("avx2", bundles, folder, build_shim(folder))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_profiles.json").write_text(json.dumps(profiles, indent=1) + "\n")
    (args.out / "cpu_profiles.md").write_text(markdown(profiles))
    print(markdown(profiles))


if __name__ == "__main__":
    main()
