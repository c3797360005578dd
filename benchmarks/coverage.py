"""The export coverage matrix: every torchvision classifier and the popular timm families, at the
default layer and inner stages, exported and held against independent references.

Each cell (model, layer, method) runs in a fresh child process (its own peak memory, a timeout,
nothing cached) and records: whether the export succeeded, textcam's verification verdict and
numbers (graph and eager float32 against float64), export time per stage, peak RSS, the joint
ONNX size against the model's float32 weights, the static TensorRT-parser check (the real parser
too where ``tensorrt`` is installed), and parity of the exported graph (ONNX Runtime, CPU, fresh
inputs at batch 1 and 3) against pytorch-grad-cam and float64 eager autograd. Models are random
initialized with BatchNorm statistics calibrated and the head re-drawn
(:func:`textcam.export.reference.build_model`).

Layers: ``default`` (what ``textcam export`` picks), ``stage-1`` / ``stage-2`` (the last layer
whose grid is at least 2x / 4x the default layer's on each side: the previous stages' outputs).

Results accumulate in ``results/coverage.json`` (one entry per cell; a re-run skips cells already
there unless ``--redo``) and ``results/coverage.md`` is rewritten from it after every cell, so
the whole matrix (hours) can run in slices and resume::

    python benchmarks/coverage.py                                   # everything
    python benchmarks/coverage.py --family torchvision --layers default
    python benchmarks/coverage.py --slice 2/4                       # the 2nd quarter of the cells
    python benchmarks/coverage.py --models 'torchvision:resnet*' --methods all
    python benchmarks/coverage.py --report                          # rewrite coverage.md only

Needs the ``[export,dev]`` extras (pytorch-grad-cam); timm for its rows.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALL_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "cam")
# every method runs on these (one per family of architecture); gradcam on all
ALL_METHODS_ON = (
    "torchvision:resnet50",
    "torchvision:densenet121",  # its forward's in-place ReLU after the layer (see reference.continue_on_copy)
    "torchvision:efficientnet_b0",
    "torchvision:convnext_tiny",
    "torchvision:vit_b_16",
    "torchvision:swin_t",
    "timm:vit_small_patch16_224",
)
LAYERS = ("default", "stage-1", "stage-2")
HEATMAP_TARGET = 1e-4
LOGITS_TARGET = 1e-4
EXPORT_TIME_TARGET_S = 120
EXPORT_MEMORY_TARGET_MB = 4096

TIMM_MODELS = (
    "timm:resnet50",
    "timm:resnext50_32x4d",
    "timm:efficientnet_b0",
    "timm:tf_efficientnetv2_b0",
    "timm:mobilenetv3_large_100",
    "timm:mobilenetv4_conv_small",
    "timm:mobilenetv4_hybrid_medium",
    "timm:convnext_atto",
    "timm:convnextv2_atto",
    "timm:regnety_002",
    "timm:vit_small_patch16_224",
    "timm:vit_small_patch14_reg4_dinov2",
    "timm:deit_tiny_distilled_patch16_224",
    "timm:deit3_small_patch16_224",
    "timm:swin_tiny_patch4_window7_224",
    "timm:swinv2_tiny_window8_256",
    "timm:beit_base_patch16_224",
    "timm:eva02_tiny_patch14_224",
    "timm:efficientformer_l1",
    "timm:efficientformerv2_s0",
    "timm:fastvit_t8",
    "timm:levit_128s",
    "timm:maxvit_tiny_tf_224",
    "timm:coatnet_0_rw_224",
    "timm:repvit_m0_9",
    "timm:ghostnet_100",
    "timm:densenet121",
    "timm:inception_v3",
    "timm:mobilevit_xxs",
    "timm:edgenext_xx_small",
    "timm:poolformer_s12",
    "timm:caformer_s18",
    "timm:pvt_v2_b0",
    "timm:tiny_vit_5m_224",
    "timm:hgnetv2_b0",
    "timm:nfnet_l0",
)


def torchvision_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


FIXED_SIZE = ("torchvision:vit_", "torchvision:maxvit_")  # these take 224x224 only


def input_size_for(spec: str, small: bool = False) -> int:
    """224 for torchvision (299 for Inception v3); timm's configured size for timm.
    ``small``: 64 where the model takes any size (enough to enumerate its operators)."""
    family, _, name = spec.partition(":")
    if small and family == "torchvision" and not spec.startswith(FIXED_SIZE):
        return 96 if name == "inception_v3" else 64
    if spec == "torchvision:inception_v3":
        return 299  # its auxiliary head (run while BatchNorm is calibrated in train mode) needs 299
    if family == "timm":
        import timm

        return int(timm.get_pretrained_cfg(name).input_size[-1]) if timm.get_pretrained_cfg(name) else 224
    return 224


def cell_id(spec: str, layer: str, method: str) -> str:
    return f"{spec}|{layer}|{method}"


def cells(args) -> list[tuple[str, str, str]]:
    specs = []
    if args.family in ("all", "torchvision"):
        specs += [f"torchvision:{name}" for name in torchvision_models()]
    if args.family in ("all", "timm"):
        specs += list(TIMM_MODELS)
    if args.models:
        matched = [s for s in specs if any(fnmatch.fnmatch(s, pattern) for pattern in args.models)]
        # a name outside the lists runs too (and fails with its reason if it does not exist)
        specs = matched + [m for m in args.models if m not in matched and not any(c in m for c in "*?[")]
    layers = args.layers.split(",")
    out = []
    for spec in specs:
        for layer in layers:
            methods = (
                ALL_METHODS
                if args.methods == "all" or (args.methods == "auto" and spec in ALL_METHODS_ON and layer == "default")
                else ("gradcam",)
            )
            if args.methods not in ("all", "auto"):
                methods = tuple(args.methods.split(","))
            out += [(spec, layer, method) for method in methods]
    if args.slice:
        index, count = (int(v) for v in args.slice.split("/"))
        out = out[index - 1 :: count]
    return out


# ---------------------------------------------------------------------------------------------
# one cell, in a child process


class NoSuchStage(LookupError):
    """The model has no layer with a grid that much finer than the default layer's."""


def pick_layer(model, kind: str, input_hw) -> object:
    """The probed layer for ``default`` / ``stage-1`` / ``stage-2``."""
    import torch

    from textcam.export.target_layer import choose_layer, probe

    _, records = probe(model, torch.randn(2, 3, *input_hw, generator=torch.Generator().manual_seed(0)))
    default = choose_layer(model, records, None, input_hw)
    if kind == "default":
        return default
    factor = {"stage-1": 2, "stage-2": 4}[kind]
    h, w = default.layout.grid
    candidates = [
        r
        for r in records
        if r.layout is not None
        and r.spatial_gradient
        and r.name
        and r.layout.grid[0] >= factor * h
        and r.layout.grid[1] >= factor * w
        and len(r.name.split(".")) <= len(default.name.split(".")) + 1
    ]
    if not candidates:
        raise NoSuchStage(f"no inner stage: no layer's grid is {factor}x the default layer's {h}x{w} on each side")
    return candidates[-1]


def tensorrt_parse(onnx_path: Path) -> str | None:
    """'ok' or the parser's first error, with TensorRT installed; None without it."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt.Logger(trt.Logger.ERROR))
    if parser.parse_from_file(str(onnx_path)):
        return "ok"
    return str(parser.get_error(0)) if parser.num_errors else "failed"


def _case(spec: dict, layer_name: str = "", kind: str = "nchw", prefix_tokens: int = 0):
    from textcam.export.reference import Case

    def build():
        from textcam.export.model_source import load_model

        return load_model(spec["model"]).module

    size = spec["input_size"] or input_size_for(spec["model"])
    return Case(spec["model"], layer_name, build, (size, size), kind, prefix_tokens, cam_ok=bool(layer_name))


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def start_peak_measurement() -> float:
    """Reset the process's peak RSS to its current RSS (Linux: ``clear_refs`` 5) and return that, in
    MB: the export's peak then excludes the benchmark's own build (a second copy of the model and
    its BatchNorm calibration), and includes, like ``textcam export``, the caller's model."""
    from textcam.export.bundle_export import _return_freed_memory

    _return_freed_memory()  # as the export does between stages: the baseline is what lives
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """The peak RSS since :func:`start_peak_measurement` (since the start where it cannot reset)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def weights_digest(model) -> str:
    """SHA-256 over every parameter and buffer: the parity phase must rebuild the exported model."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def child(spec: dict) -> dict:
    """One phase of a cell: ``export`` (build, pick the layer, export; its peak RSS is the export's)
    or ``parity`` (build again, run the bundle against both references). Two processes, so that the
    references (pytorch-grad-cam's parameter gradients, a float64 copy of the model) never share an
    address space with what the export left behind: ViT-H/14 needs that to fit in 24 GB."""
    import numpy as np  # noqa: F401 (the references need it loaded before torch threads start)
    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("phase") == "parity":
        return parity(spec)
    from textcam.export.parity_matrix import export_despite_verification
    from textcam.export.reference import build_model

    layer_kind, method = spec["layer"], spec["method"]
    case = _case(spec)
    row: dict = {"input_size": case.input_size[0], "threads": spec["threads"]}
    start = time.perf_counter()
    try:
        model = build_model(case)  # parameters keep requires_grad (pytorch-grad-cam)
        layer = pick_layer(model, layer_kind, case.input_size)
    except NoSuchStage as exc:  # a model whose grid never gets finer (ViT): no inner stage to explain
        row.update(status="not applicable", error=str(exc))
        return row
    except Exception as exc:  # a model that cannot be built: the cell's result
        row.update(status="export failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}")
        return row
    layout = layer.layout
    case = _case(spec, layer.name, layout.kind, layout.prefix_tokens)
    row.update(
        layer_name=layer.name,
        layout=layout.kind,
        prefix_tokens=layout.prefix_tokens,
        grid=list(layout.grid),
        params=sum(p.numel() for p in model.parameters()),
        weights_digest=weights_digest(model),
        build_s=round(time.perf_counter() - start, 1),
    )
    baseline = start_peak_measurement()
    out = Path(spec["work"]) / "bundle.textcam"
    start = time.perf_counter()
    try:
        export_despite_verification(case, model, method, out)
    except Exception as exc:  # the export's own one-line error is the cell's result
        message = str(exc).splitlines()[0][:400]
        # plain CAM refusing a head that is not pool + linear is the method's definition, not a miss
        status = "not applicable" if message.startswith("method=cam needs") else "export failed"
        row.update(status=status, error=message, export_s=round(time.perf_counter() - start, 1))
        return row
    row["export_s"] = round(time.perf_counter() - start, 1)
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    row["peak_counts"] = "export"  # older rows' peaks also count the benchmark's own model build
    row["model_rss_mb"] = round(baseline, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    row["timings"] = manifest["timings"]
    row["verification"] = manifest["verification"]
    row["onnx_mb"] = round(manifest["model"]["size_bytes"] / 1e6, 2)
    row["onnx_vs_weights"] = round(manifest["model"]["size_bytes"] / (4 * row["params"]), 3)
    row["tensorrt_static"] = manifest["tensorrt"]
    row["tensorrt_parser"] = tensorrt_parse(out / "model.onnx")
    row["status"] = "ok" if row["verification"].get("passed") else "refused by verification"
    return row


def parity(spec: dict) -> dict:
    """The exported bundle in ``spec['work']`` against pytorch-grad-cam and float64 autograd."""
    from textcam.export.parity_matrix import compare, failures, open_session
    from textcam.export.reference import build_model

    exported = spec["exported"]
    case = _case(spec, exported["layer_name"], exported["layout"], exported["prefix_tokens"])
    model = build_model(case)  # the same seeds: the same weights as the exported model's
    if weights_digest(model) != exported["weights_digest"]:
        raise RuntimeError("the model built for parity differs from the exported one (non-deterministic build)")
    session = open_session(Path(spec["work"]) / "bundle.textcam")
    start = time.perf_counter()
    batches = [compare(case, model, session, spec["method"], b) for b in (1, 3)]
    keys = (
        "heatmap_max_abs",
        "logits_rel",
        "weights_rel",
        "activation_rel",
        "heatmap_vs_fp64_onnx",
        "heatmap_vs_fp64_library",
        "weights_vs_fp64_onnx",
        "weights_vs_fp64_eager32",
    )
    row = {key: max(b[key] for b in batches) for key in keys}
    row["compare_s"] = round(time.perf_counter() - start, 1)
    row["parity_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    row["parity_problems"] = [f"b{b['batch']}: {p}" for b in batches for p in failures(case, spec["method"], b)]
    return row


def cause(row: dict) -> str:
    """Why a cell misses a parity target, from its own numbers ('' when it meets them)."""
    if row.get("status") != "ok" and row.get("status") != "refused by verification":
        return row.get("error", "")
    misses = []
    if row["heatmap_max_abs"] > HEATMAP_TARGET:
        if row["heatmap_vs_fp64_onnx"] <= 2 * row["heatmap_vs_fp64_library"] + 1e-5:
            misses.append(
                "heatmap: pytorch-grad-cam's float32 map is as far from float64 as the graph's "
                f"({row['heatmap_vs_fp64_library']:.1e} vs {row['heatmap_vs_fp64_onnx']:.1e})"
            )
        else:
            misses.append(
                f"heatmap: the graph is {row['heatmap_vs_fp64_onnx']:.1e} from float64, "
                f"pytorch-grad-cam {row['heatmap_vs_fp64_library']:.1e}"
            )
    if row["logits_rel"] > LOGITS_TARGET:
        misses.append(f"logits {row['logits_rel']:.1e} from eager float32")
    trivial = [p for p in row["parity_problems"] if "trivial" in p or "class" in p]
    misses += sorted(set(p.split(": ", 1)[1] for p in trivial))
    return "; ".join(misses)


def _run_child(payload: dict, timeout: float) -> dict:
    """One child phase's JSON row, or a crashed / timeout row."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(payload)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout:.0f} s", "wall_s": round(timeout, 1)}
    wall = round(time.perf_counter() - start, 1)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        return {"status": "crashed", "error": f"exit {done.returncode}: {tail[0][:300]}", "wall_s": wall}
    row = json.loads(lines[-1])
    row["wall_s"] = wall
    return row


def run_cell(spec: str, layer: str, method: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="textcam-coverage-") as work:
        payload = {
            "model": spec,
            "layer": layer,
            "method": method,
            "work": work,
            "threads": args.threads,
            "input_size": args.input_size,
            "phase": "export",
        }
        row = _run_child(payload, args.timeout)
        if row["status"] not in ("ok", "refused by verification"):
            return row
        checked = _run_child(dict(payload, phase="parity", exported=row), args.timeout - row["wall_s"])
        if "status" in checked:  # the parity phase itself crashed or ran out of time
            return dict(row, status=f"parity {checked['status']}", error=checked["error"])
        row.update(checked, wall_s=round(row["wall_s"] + checked["wall_s"], 1))
        row["cause"] = cause(row)
        return row


# ---------------------------------------------------------------------------------------------
# the report


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"cells": {}}


def record_cell(out: Path, key: str, row: dict) -> dict:
    """Add one cell to ``out/coverage.json`` under a lock, re-reading it first: runs of different
    slices (``--slice``) can share one results folder."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "coverage.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results(out / "coverage.json")
        results["cells"][key] = row
        results["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results["machine"] = machine()
        save_results(results, out)
    return results


def save_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"coverage.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out / "coverage.json")
    (out / "coverage.md").write_text(markdown(results))


def _share(rows: list[dict]) -> str:
    rows = [r for r in rows if r.get("status") != "not applicable"]
    ok = sum(1 for r in rows if r.get("status") == "ok")
    return f"{ok}/{len(rows)} ({100 * ok / len(rows):.0f}%)" if rows else "0/0"


def _names(rows: list[dict]) -> str:
    return f" ({', '.join(r['id'].split('|')[0].removeprefix('torchvision:') for r in rows)})" if rows else ""


def _spread(rows: list[dict]) -> list[str]:
    """Median and worst export time and peak memory over ``rows`` that exported."""
    done = [r for r in rows if "export_s" in r and "peak_rss_mb" in r]
    if not done:
        return []
    lines = []
    for key, unit in (("export_s", "s"), ("peak_rss_mb", "MB")):
        values = sorted(r[key] for r in done)
        worst = max(done, key=lambda r: r[key])
        lines.append(
            f"- torchvision default layer, {'export time' if unit == 's' else 'peak RSS'}: median "
            f"{values[len(values) // 2]:.0f} {unit}, 90th percentile {values[int(0.9 * (len(values) - 1))]:.0f} "
            f"{unit}, worst {worst[key]:.0f} {unit} ({worst['id'].split('|')[0].removeprefix('torchvision:')})"
        )
    return lines


def markdown(results: dict) -> str:
    rows = [dict(row, id=key) for key, row in sorted(results["cells"].items())]
    tv_default = [r for r in rows if r["id"].startswith("torchvision:") and r["id"].endswith("|default|gradcam")]
    tv_inner = [r for r in rows if r["id"].startswith("torchvision:") and "|stage-" in r["id"]]
    timm_default = [r for r in rows if r["id"].startswith("timm:") and r["id"].endswith("|default|gradcam")]
    inapplicable = [r for r in tv_inner if r.get("status") == "not applicable"]
    ok_rows = [r for r in tv_default if r.get("status") == "ok"]
    slow = [r for r in ok_rows if r.get("export_s", 0) > EXPORT_TIME_TARGET_S]
    big = [r for r in ok_rows if r.get("peak_rss_mb", 0) > EXPORT_MEMORY_TARGET_MB]
    lines = [
        "# Export coverage",
        "",
        f"Generated by `benchmarks/coverage.py` (last cell {results.get('updated', '?')}; "
        f"{results.get('machine', '')}). Random-init models, BatchNorm calibrated, head re-drawn; each cell "
        "exported in a fresh process; parity on fresh inputs, batch 1 and 3.",
        "",
        f"- torchvision at the default layer: **{_share(tv_default)}** exported and verified (target 100%)",
        f"- torchvision at inner stages: **{_share(tv_inner)}**; not applicable (no finer grid than the default "
        f"layer's): {len(inapplicable)}{_names(inapplicable)}",
        f"- timm at the default layer: **{_share(timm_default)}**",
        f"- all cells: **{_share(rows)}** (target >= 95%)",
        f"- torchvision default-layer exports over {EXPORT_TIME_TARGET_S} s: {len(slow)}{_names(slow)}; over "
        f"{EXPORT_MEMORY_TARGET_MB} MB peak RSS: {len(big)}{_names(big)}",
        *_spread(tv_default),
        "",
        "Columns: export s (trace / onnx / verify); peak MB: the export process's peak RSS during the export "
        "(the model being exported included, as with `textcam export`; `*`: measured before the peak was reset "
        "after the benchmark's own model build, which that figure includes); ONNX size over the "
        "float32 weights; TensorRT: static parser check (`ok` or the first problem); heatmap vs pytorch-grad-cam "
        "(max abs) / logits vs eager (rel); verification: the graph's channel-weight error vs float64 / eager "
        "float32's (the export refuses when the graph's exceeds 4x eager's + a floor). Cause: why a cell misses.",
        "",
        "| model | layer | method | status | export s (trace/onnx/verify) | peak MB | ONNX/weights | TensorRT "
        "| heatmap / logits | weights err graph / eager32 | cause |",
        "|---|---|---|---|---|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        model, layer, method = r["id"].split("|")
        name = f"{layer} `{r['layer_name']}`" if r.get("layer_name") else layer
        t = r.get("timings", {})
        export = (
            f"{r['export_s']:.0f} ({t.get('trace_s', 0):.0f}/{t.get('onnx_export_s', 0):.0f}/"
            f"{t.get('verify_s', 0):.0f})"
            if "timings" in r
            else f"{r.get('export_s', r.get('wall_s', 0)):.0f}"
        )
        trt = r.get("tensorrt_static", {})
        trt_text = "-" if not trt else "ok" if trt.get("compatible") else (trt.get("problems") or ["?"])[0]
        parity = f"{r['heatmap_max_abs']:.1e} / {r['logits_rel']:.1e}" if "heatmap_max_abs" in r else "-"
        v = r.get("verification", {})
        weights = (
            f"{v['channel_weights_max_rel_err']:.1e} / {v['eager_float32']['channel_weights_max_rel_err']:.1e}"
            if "eager_float32" in v
            else "-"
        )
        cause_text = (r.get("cause") or r.get("error") or "").replace("|", "/")
        star = "*" if "peak_rss_mb" in r and r.get("peak_counts") != "export" else ""
        lines.append(
            f"| {model} | {name} | {method} | {r['status']} | {export} | {r.get('peak_rss_mb', 0):.0f}{star} | "
            f"{r.get('onnx_vs_weights', 0):.3f} | {trt_text} | {parity} | {weights} | {cause_text} |"
        )
    return "\n".join(lines) + "\n"


README_START = "<!-- coverage-table:start (benchmarks/coverage.py --readme README.md writes this) -->"
README_END = "<!-- coverage-table:end -->"


def readme_table(results: dict) -> str:
    """The README's parity table: one row per (model, layer) that ran, one column per method; each
    cell is heatmap vs pytorch-grad-cam / logits vs eager, or the status, with numbered causes."""
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for key, cell in sorted(results["cells"].items()):
        model, layer, method = key.split("|")
        rows.setdefault((model, cell.get("layer_name") or layer), {})[method] = cell
    methods = [m for m in ALL_METHODS if any(m in r for r in rows.values())]
    notes: list[str] = []
    lines = ["| model / layer | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for (model, layer), by_method in rows.items():
        cells = []
        for method in methods:
            cell = by_method.get(method)
            if cell is None:
                cells.append("")
                continue
            if "heatmap_max_abs" in cell:
                text = f"{cell['heatmap_max_abs']:.1e} / {cell['logits_rel']:.1e}"
                missed = cell["heatmap_max_abs"] > HEATMAP_TARGET or cell["logits_rel"] > LOGITS_TARGET
                text = f"**{text}** ✗" if missed else text
            else:
                text = cell["status"]
            reason = cell.get("cause") or ("" if cell.get("status") == "ok" else cell.get("error", ""))
            if cell.get("status") == "refused by verification":
                text += " (refused by verification)"
                reason = reason or cell["verification"].get("error", "")
            if reason:
                reason = reason.replace("|", "/")
                if reason not in notes:  # one note per distinct reason (every ViT lacks an inner stage)
                    notes.append(reason)
                text += f" [{notes.index(reason) + 1}]"
            cells.append(text)
        lines.append(f"| {model.removeprefix('torchvision:')} / {layer} | " + " | ".join(cells) + " |")
    lines += [""] + [f"[{i}] {note}  " for i, note in enumerate(notes, 1)]
    return "\n".join(lines).rstrip() + "\n"


def write_readme(results: dict, readme: Path) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme}: no coverage-table markers; add {README_START!r} and {README_END!r}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_START + "\n\n" + readme_table(results) + "\n" + README_END + tail)


def machine() -> str:
    import platform

    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("all", "torchvision", "timm"), default="all")
    parser.add_argument("--models", nargs="*", help="model specs or glob patterns (e.g. 'torchvision:vit_*')")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated: default,stage-1,stage-2")
    parser.add_argument(
        "--methods",
        default="auto",
        help="'auto' (all methods on a few models' default layer, gradcam elsewhere), 'all', or a comma-separated list",
    )
    parser.add_argument("--slice", help="I/N: run every N-th cell starting at the I-th (for parallel machines)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per cell")
    parser.add_argument("--input-size", type=int, default=0, help="override every model's input size (0: own)")
    parser.add_argument("--redo", action="store_true", help="run cells that already have a result")
    parser.add_argument("--report", action="store_true", help="only rewrite coverage.md from coverage.json")
    parser.add_argument("--readme", type=Path, help="rewrite the parity table between the markers in this README")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    results = load_results(args.out / "coverage.json")
    if args.report or args.readme:
        save_results(results, args.out)
        if args.readme:
            write_readme(results, args.readme)
        return
    todo = [c for c in cells(args) if args.redo or cell_id(*c) not in results["cells"]]
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety
        tqdm = None
    bar = tqdm(todo, unit="cell") if tqdm else todo
    for spec, layer, method in bar:
        if tqdm:
            bar.set_description(f"{spec} {layer} {method}")
        row = run_cell(spec, layer, method, args)
        record_cell(args.out, cell_id(spec, layer, method), row)
        message = f"{spec} {layer} {method}: {row['status']} {row.get('export_s', row.get('wall_s', 0))} s"
        (bar.write if tqdm else print)(
            message + (f" ({row.get('error') or row.get('cause')})" if row.get("error") or row.get("cause") else "")
        )


if __name__ == "__main__":
    main()
