"""Latency of a Grad-CAM explanation on the CPU: textcam's joint ONNX graph vs plain inference and
vs the eager-PyTorch CAM libraries (pytorch-grad-cam, torchcam), timed interleaved in one process.

Contenders, per model/layer and batch size (all on the same float32 batch, same random weights):

- ``plain``: the classifier alone, exported with ``torch.onnx.export(dynamo=True)`` (dynamic
  batch), one ONNX Runtime session: the cost of a prediction without an explanation;
- ``graph``: the textcam bundle's joint graph, raw call (``explainer.runner.run``);
- ``explain``: ``Explainer.explain`` on the float batch (graph + softmax + per-image results);
- ``torchcam``: ``torchcam.methods.GradCAM``, eager: forward with grad, argmax, CAM call;
- ``pytorch-grad-cam``: ``pytorch_grad_cam.GradCAM``, eager, targets = the predicted classes.
- ``logits-subgraph`` (opt-in with ``--contenders``): the bundle's own graph pruned to the logits
  (what ``textcam bench`` calls "plain").

Every ONNX Runtime session runs with ``intra_op_num_threads = --threads`` and spinning off (idle
ORT threads otherwise busy-wait and starve torch, and each other, in the same process); torch gets
``torch.set_num_threads(--threads)``.

A row whose timings contradict each other (``explain`` faster than the ``graph`` it contains, or
``graph`` faster than ``plain`` / ``logits-subgraph``, beyond the rounds' interquartile range:
``textcam.runtime.timing.contradiction``) is refused: the report gives the reason instead of its
numbers' ratios, and the script exits 1.

Full run (see benchmarks/README.md)::

    python benchmarks/latency.py --cache /tmp/textcam-bench-cache

Smoke run (seconds)::

    python benchmarks/latency.py --quick --out /tmp/latency-smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

DEFAULT_CONFIGS = ("resnet50:layer4", "resnet50:layer3", "vit_b_16:encoder.layers.encoder_layer_11.ln_1")
QUICK_CONFIGS = ("resnet18:layer4", "vit_tiny:encoder.layers.encoder_layer_1.ln_1")
CONTENDERS = ("plain", "logits-subgraph", "graph", "explain", "torchcam", "pytorch-grad-cam")
DEFAULT_CONTENDERS = ("plain", "graph", "explain", "torchcam", "pytorch-grad-cam")
# explain / plain ceilings by target layer name (no target for other layers)
OVERHEAD_TARGETS = {"layer4": 1.10, "layer3": 1.30}
TORCHCAM_BATCHES = (1, 8)  # explain must beat torchcam at these batch sizes
PGC_TARGET = (1, 4.0)  # pytorch-grad-cam / explain >= 4 at batch 1
# (outer, inner): outer does all of inner's work and more on the same engine (ORT, same threads); plain
# is the same forward exported by torch, logits-subgraph the bundle's own graph pruned to the logits
CONTAINS = (("explain", "graph"), ("graph", "logits-subgraph"), ("explain", "logits-subgraph"),
            ("graph", "plain"), ("explain", "plain"))
DEFAULT_LAYERS = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
    "vit_tiny": "encoder.layers.encoder_layer_1.ln_1",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# models


def build_model(name: str, num_classes: int, input_hw: tuple[int, int]):
    """A torchvision classifier with seeded random weights, in eval mode.

    ``vit_tiny`` is a 2-block ViT for smoke runs (it exercises the token-layout path in seconds).
    A zero-initialized final Linear (torchvision's ViT head) is re-initialized: with zero head
    weights every gradient, hence every Grad-CAM map, would be zero.
    """
    import torch
    from torch import nn
    from torchvision.models import VisionTransformer

    from textcam.export.model_source import torchvision_model

    torch.manual_seed(0)
    if name == "vit_tiny":
        model = VisionTransformer(
            image_size=input_hw[0], patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
            num_classes=num_classes,
        )
    elif name.startswith("vit_"):
        if input_hw[0] != input_hw[1]:
            raise SystemExit(f"{name}: torchvision's ViT needs a square input, got {input_hw}")
        model = torchvision_model(name, num_classes, image_size=input_hw[0])
    else:
        model = torchvision_model(name, num_classes)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and not linears[-1].weight.detach().any():
        nn.init.normal_(linears[-1].weight, std=0.02)
    return model.eval()


def peer_reshape(model, layer: str, input_hw) -> tuple[tuple[int, ...], Callable | None]:
    """The layer's output shape (without the batch) and the peers' ``reshape_transform``, both from
    textcam's own layer probe: the layout's ``to_grid`` for token / channels-last outputs (drop the
    prefix tokens, reshape to the grid, channels first), ``None`` for NCHW outputs."""
    from textcam.export.target_layer import probe_layer

    probed = probe_layer(model, layer, input_hw)
    reshape = None if probed.layout.kind == "nchw" else probed.layout.to_grid
    return tuple(probed.output.shape[1:]), reshape


def export_plain(model, input_hw, path: Path) -> Path:
    """The classifier alone, dynamo ONNX export with a dynamic batch."""
    import torch

    example = torch.randn(2, 3, *input_hw)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=["image"], output_names=["logits"],
            dynamic_shapes=({0: batch},), verbose=False, report=False,
        )
    program.save(str(path), external_data=False)
    return path


def ort_session(path: Path, threads: int):
    """A CPU session with textcam's session options (quiet, ``threads`` intra-op threads, no spinning)."""
    import onnxruntime as ort

    from textcam.runtime.backends.onnxruntime_runner import session_options

    options = session_options(threads, allow_spinning=False)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# one model/layer


@dataclass
class Config:
    model: str
    layer: str

    @property
    def name(self) -> str:
        return f"{self.model}@{self.layer}"

    @property
    def short_layer(self) -> str:
        return self.layer.rsplit(".", 1)[-1] if self.model.startswith("vit") else self.layer


def parse_configs(values: list[str]) -> list[Config]:
    configs = []
    for value in values:
        model, _, layer = value.partition(":")
        layer = layer or DEFAULT_LAYERS.get(model)
        if not layer:
            raise SystemExit(f"--configs {value!r}: give MODEL:LAYER (no default layer for {model})")
        configs.append(Config(model, layer))
    return configs


def prepare(config: Config, args, work: Path) -> dict:
    """Export (or reuse from --cache) the bundle and the plain ONNX file; build the contenders' state."""
    import torch
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from torchcam.methods import GradCAM as TorchcamGradCAM

    from textcam.engines.graph_surgery import extract_logits_graph
    from textcam.export import export_bundle
    from textcam.runtime import Explainer

    input_hw = (args.input_size, args.input_size)
    model = build_model(config.model, args.num_classes, input_hw)
    tag = f"{config.model}-{config.layer}-{input_hw[0]}x{input_hw[1]}-k{args.num_classes}".replace(".", "_")
    bundle_dir = work / f"{tag}.textcam"
    # the plain file does not depend on the layer: one per model
    plain_path = work / f"{config.model}-{input_hw[0]}x{input_hw[1]}-k{args.num_classes}.plain.onnx"
    export_s = plain_export_s = None
    if not bundle_dir.is_dir():
        log(f"{config.name}: exporting the textcam bundle")
        start = time.perf_counter()
        export_bundle(model, config.layer, bundle_dir, method="gradcam", input_size=input_hw)
        export_s = time.perf_counter() - start
    if not plain_path.is_file():
        log(f"{config.name}: exporting the plain model")
        start = time.perf_counter()
        export_plain(model, input_hw, plain_path)
        plain_export_s = time.perf_counter() - start

    shape, reshape = peer_reshape(model, config.layer, input_hw)
    state = {
        "input_hw": input_hw,
        "layer_output_shape": list(shape),
        "reshape": reshape is not None,
        "bundle": bundle_dir,
        "bundle_onnx_bytes": (bundle_dir / "model.onnx").stat().st_size,
        "plain_onnx_bytes": plain_path.stat().st_size,
        "export_s": export_s,
        "plain_export_s": plain_export_s,
    }
    wanted = set(args.contenders)
    if "plain" in wanted:
        state["plain"] = ort_session(plain_path, args.threads)
    if "logits-subgraph" in wanted:
        sub = extract_logits_graph(bundle_dir / "model.onnx", work / f"{tag}.logits.onnx")
        state["logits-subgraph"] = ort_session(sub, args.threads)
    if wanted & {"graph", "explain"}:
        state["explainer"] = Explainer(
            bundle_dir, backend_options={"intra_op_threads": args.threads, "allow_spinning": False},
            batch_size=max(args.batches)
        )
    # one model copy per eager library: their hooks must not fire in each other's forward
    if "torchcam" in wanted:
        state["torchcam_model"] = build_model(config.model, args.num_classes, input_hw)
        state["torchcam"] = TorchcamGradCAM(
            state["torchcam_model"], target_layer=config.layer, input_shape=(3, *input_hw),
            reshape_transform=reshape,
        )
    if "pytorch-grad-cam" in wanted:
        pgc_model = build_model(config.model, args.num_classes, input_hw)
        layer = dict(pgc_model.named_modules())[config.layer]
        state["pytorch-grad-cam"] = PgcGradCAM(
            model=pgc_model, target_layers=[layer], reshape_transform=reshape
        )
    del model
    torch.set_num_threads(args.threads)  # export code may have changed it
    return state


def contenders_for(state: dict, images: np.ndarray, wanted) -> dict[str, Callable[[], object]]:
    import torch

    classes = np.full(len(images), -1, dtype=np.int64)
    tensor = torch.from_numpy(images)
    calls: dict[str, Callable[[], object]] = {}
    if "plain" in wanted:
        calls["plain"] = lambda: state["plain"].run(None, {"image": images})
    if "logits-subgraph" in wanted:
        session = state["logits-subgraph"]
        name = session.get_inputs()[0].name
        calls["logits-subgraph"] = lambda: session.run(None, {name: images})
    if "graph" in wanted:
        calls["graph"] = lambda: state["explainer"].runner.run(images, classes)
    if "explain" in wanted:
        calls["explain"] = lambda: state["explainer"].explain_batch(images)
    if "torchcam" in wanted:
        extractor, model = state["torchcam"], state["torchcam_model"]

        def torchcam_call():
            with torch.enable_grad():
                scores = model(tensor)
                cams = extractor(class_idx=scores.argmax(1).tolist(), scores=scores)
            extractor.reset_hooks()  # drop the stored graph (the library keeps it until the next forward)
            return cams

        calls["torchcam"] = torchcam_call
    if "pytorch-grad-cam" in wanted:
        cam = state["pytorch-grad-cam"]
        # targets=None: the library builds ClassifierOutputTarget(argmax) from its own forward
        calls["pytorch-grad-cam"] = lambda: cam(input_tensor=tensor, targets=None)
    return calls


def agreement(state: dict, images: np.ndarray, wanted) -> dict:
    """Cheap sanity check that the contenders explain the same thing (not a parity test)."""
    import torch

    result: dict = {}
    if "explainer" not in state:
        return result
    outputs = state["explainer"].runner.run(images, np.full(len(images), -1, dtype=np.int64))
    if "plain" in wanted:
        logits = state["plain"].run(None, {"image": images})[0]
        result["plain_logits_max_abs_diff"] = float(np.abs(logits - outputs["logits"]).max())
        result["same_predictions_as_plain"] = bool((logits.argmax(1) == outputs["class_index"]).all())
    if "pytorch-grad-cam" in wanted:
        cams = state["pytorch-grad-cam"](input_tensor=torch.from_numpy(images), targets=None)
        result["cam_max_abs_diff_vs_pytorch_grad_cam"] = float(np.abs(cams - outputs["cam"]).max())
    return result


def run_config(config: Config, args, work: Path) -> dict:
    log(f"{config.name}: preparing")
    state = prepare(config, args, work)
    rows = []
    for batch, rounds in zip(args.batches, args.rounds, strict=True):
        shape = (batch, 3, *state["input_hw"])
        images = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
        calls = contenders_for(state, images, args.contenders)
        log(f"{config.name}: batch {batch}, {rounds} rounds x {len(calls)} contenders")
        rows.append(result_row(batch, rounds, interleaved(calls, rounds, args.warmup)))
        if rows[-1]["refused"]:
            log(f"{config.name}: batch {batch} refused: {rows[-1]['refused']}")
        if batch == min(args.batches):
            rows[-1]["agreement"] = agreement(state, images, args.contenders)
    result = {
        "name": config.name,
        "model": config.model,
        "layer": config.layer,
        "input_size": list(state["input_hw"]),
        "num_classes": args.num_classes,
        "layer_output_shape": state["layer_output_shape"],
        "reshape_transform": "drop prefix tokens, reshape to grid" if state["reshape"] else None,
        "bundle_onnx_bytes": state["bundle_onnx_bytes"],
        "plain_onnx_bytes": state["plain_onnx_bytes"],
        "export_s": round(state["export_s"], 2) if state["export_s"] is not None else None,
        "plain_export_s": round(state["plain_export_s"], 2) if state["plain_export_s"] is not None else None,
        "results": rows,
    }
    for key in ("torchcam", "pytorch-grad-cam"):
        if hasattr(state.get(key), "remove_hooks"):
            state[key].remove_hooks()
    if "pytorch-grad-cam" in state:
        state["pytorch-grad-cam"].activations_and_grads.release()
    state.clear()
    gc.collect()
    return result


def result_row(batch: int, rounds: int, stats: dict) -> dict:
    """One batch size's row from :func:`interleaved`'s stats: medians, min, p90, interquartile range and
    ratios, or, when the timings contradict each other (``CONTAINS``), ``refused`` and no ratios."""
    from textcam.runtime.timing import contradiction

    medians = {name: s["median_ms"] for name, s in stats.items()}
    refused = contradiction(stats, CONTAINS)
    return {
        "batch": batch,
        "rounds": rounds,
        "median_ms": rounded(medians),
        "min_ms": rounded({name: s["min_ms"] for name, s in stats.items()}),
        "p90_ms": rounded({name: s["p90_ms"] for name, s in stats.items()}),
        "iqr_ms": rounded({name: s["q3_ms"] - s["q1_ms"] for name, s in stats.items()}),
        "ratios": {} if refused else ratios(medians),  # no ratio from numbers that contradict each other
        "refused": refused,
    }


def interleaved(calls, rounds: int, warmup: int) -> dict:
    from textcam.runtime.timing import interleaved_medians

    return interleaved_medians(calls, rounds=rounds, warmup=warmup)


def rounded(values: dict[str, float], digits: int = 3) -> dict[str, float]:
    return {k: round(v, digits) for k, v in values.items()}


def ratios(medians: dict[str, float]) -> dict[str, float]:
    pairs = {
        "explain_over_plain": ("explain", "plain"),
        "graph_over_plain": ("graph", "plain"),
        "logits_subgraph_over_plain": ("logits-subgraph", "plain"),
        "explain_over_torchcam": ("explain", "torchcam"),
        "torchcam_over_explain": ("torchcam", "explain"),
        "pytorch_grad_cam_over_explain": ("pytorch-grad-cam", "explain"),
    }
    return {
        key: round(medians[a] / medians[b], 3)
        for key, (a, b) in pairs.items()
        if a in medians and b in medians and medians[b] > 0
    }


# ---------------------------------------------------------------------------------------------
# targets, report


def evaluate_targets(configs: list[dict]) -> list[dict]:
    checks = []
    for config in configs:
        ceiling = OVERHEAD_TARGETS.get(config["layer"])
        for row in config["results"]:
            r, batch = row["ratios"], row["batch"]
            if ceiling is not None and "explain_over_plain" in r:
                checks.append(check(f"explain/plain <= {ceiling:.2f}", config, batch,
                                    r["explain_over_plain"], ceiling, r["explain_over_plain"] <= ceiling))
            if batch in TORCHCAM_BATCHES and "explain_over_torchcam" in r:
                checks.append(check("explain faster than torchcam (explain/torchcam < 1)", config, batch,
                                    r["explain_over_torchcam"], 1.0, r["explain_over_torchcam"] < 1.0))
            if batch == PGC_TARGET[0] and "pytorch_grad_cam_over_explain" in r:
                value = r["pytorch_grad_cam_over_explain"]
                checks.append(check(f"pytorch-grad-cam/explain >= {PGC_TARGET[1]:g}", config, batch,
                                    value, PGC_TARGET[1], value >= PGC_TARGET[1]))
    return checks


def check(target: str, config: dict, batch: int, value: float, threshold: float, passed: bool) -> dict:
    return {"target": target, "config": config["name"], "batch": batch, "value": value,
            "threshold": threshold, "pass": bool(passed)}


def dist_version(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info(threads: int) -> dict:
    import onnxruntime
    import torch

    cpu_model = cpu_model_name()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "torch_parallel_backend": "OpenMP" if "OpenMP" in torch.__config__.parallel_info() else "other",
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
        "versions": {
            "python": platform.python_version(),
            "textcam": dist_version("textcam"),
            "torch": torch.__version__,
            "torchvision": dist_version("torchvision"),
            "onnx": dist_version("onnx"),
            "onnxscript": dist_version("onnxscript"),
            "onnxruntime": onnxruntime.__version__,
            "grad-cam": dist_version("grad-cam"),
            "torchcam": dist_version("torchcam"),
            "numpy": np.__version__,
        },
    }


COLUMNS = (
    ("plain", "plain ms"), ("logits-subgraph", "logits-subgraph ms"), ("graph", "graph ms"),
    ("explain", "explain ms"), ("torchcam", "torchcam ms"), ("pytorch-grad-cam", "pytorch-grad-cam ms"),
)
RATIO_COLUMNS = (
    ("explain_over_plain", "explain/plain"), ("graph_over_plain", "graph/plain"),
    ("torchcam_over_explain", "torchcam/explain"),
    ("pytorch_grad_cam_over_explain", "pytorch-grad-cam/explain"),
)


def markdown(report: dict) -> str:
    m = report["machine"]
    s = report["settings"]
    v = m["versions"]
    lines = [
        "# textcam explanation latency (CPU)",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m['platform']}.  ",
        f"Threads: {s['threads']} for torch and for every ONNX Runtime session (spinning off). "
        f"Load average before/after: {s['loadavg_before']} / {s['loadavg_after']}.  ",
        f"Versions: textcam {v['textcam']}, torch {v['torch']}, torchvision {v['torchvision']}, "
        f"onnxruntime {v['onnxruntime']}, grad-cam {v['grad-cam']}, torchcam {v['torchcam']}.  ",
        f"Interleaved rounds (medians), warmup {s['warmup']}; random-init weights, "
        f"{s['num_classes']} classes, input {s['input_size']}x{s['input_size']}"
        + (" (quick smoke run: numbers are not meaningful)" if s["quick"] else "") + ".",
        "",
    ]
    for config in report["configs"]:
        present = [c for c in COLUMNS if any(c[0] in r["median_ms"] for r in config["results"])]
        ratio_cols = [c for c in RATIO_COLUMNS if any(c[0] in r["ratios"] for r in config["results"])]
        lines += [
            f"## {config['name']}",
            "",
            f"Joint graph {config['bundle_onnx_bytes'] / 1e6:.1f} MB, "
            f"plain {config['plain_onnx_bytes'] / 1e6:.1f} MB"
            f"; layer output {config['layer_output_shape']}"
            + (f", {config['reshape_transform']} for the peers" if config["reshape_transform"] else "") + ".",
            "",
            "| " + " | ".join(["batch", "rounds", *(h for _, h in present + ratio_cols)]) + " |",
            "|" + "---:|" * (2 + len(present) + len(ratio_cols)),
        ]
        for row in config["results"]:
            cells = [str(row["batch"]), str(row["rounds"])]
            if row.get("refused"):
                cells += [f"refused: {row['refused']}"] + [""] * (len(present) + len(ratio_cols) - 1)
            else:
                cells += [fmt(row["median_ms"].get(k), 2) for k, _ in present]
                cells += [fmt(row["ratios"].get(k), 3) for k, _ in ratio_cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Targets", "", "| target | config | batch | value | result |", "|---|---|---:|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['config']} | {t['batch']} | {t['value']:.3f} | "
                     f"{'PASS' if t['pass'] else 'MISS'} |")
    if not report["targets"]:
        lines.append("| (no target applies to this run) | | | | |")
    passed = sum(t["pass"] for t in report["targets"])
    lines += ["", f"{passed}/{len(report['targets'])} targets met."]
    refused = refused_rows(report)
    if refused:
        lines += ["", f"{len(refused)} row(s) refused (timings that contradict each other; no target is judged "
                      "on them): " + "; ".join(refused) + "."]
    return "\n".join(lines) + "\n"


def refused_rows(report: dict) -> list[str]:
    """'model@layer batch B' for every row refused because its timings contradict each other."""
    return [f"{config['name']} batch {row['batch']}" for config in report["configs"]
            for row in config["results"] if row.get("refused")]


def fmt(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = report["configs"]
    fig, axes = plt.subplots(1, len(configs), figsize=(5 * len(configs), 4.2), squeeze=False)
    for ax, config in zip(axes[0], configs, strict=True):
        batches = [r["batch"] for r in config["results"]]
        kept = [r for r in config["results"] if not r.get("refused")]  # refused rows are not drawn either
        for key, _ in COLUMNS:
            values = [r["median_ms"].get(key) for r in kept]
            if kept and all(v is not None for v in values):
                ax.plot([r["batch"] for r in kept], values, marker="o", label=key)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("median latency per call (ms)")
        ax.set_title(config["name"], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    threads = report["settings"]["threads"]
    cpu = report["machine"]["cpu_model"]
    fig.suptitle(f"Grad-CAM latency on CPU, {threads} threads ({cpu})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# command line


def int_list(value: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected integers separated by commas") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{value!r}: expected positive integers")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=lambda v: v.split(","), default=None,
                        help=f"MODEL:LAYER list, comma-separated (default: {','.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--batches", type=int_list, default=None, help="batch sizes (default 1,8,32)")
    parser.add_argument("--rounds", type=int_list, default=None,
                        help="timed rounds, one per batch size or one for all (default 20,8,4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per contender (default 2)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--input-size", type=int, default=None, help="square input side (default 224)")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default 1000)")
    parser.add_argument("--contenders", type=lambda v: v.split(","), default=list(DEFAULT_CONTENDERS),
                        help=f"subset of {','.join(CONTENDERS)} (default: {','.join(DEFAULT_CONTENDERS)})")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep exported bundles and plain ONNX files here and reuse them "
                             "(default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="output directory for latency.json/.md/.png (default benchmarks/results)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: resnet18@layer4 + a 2-block ViT, 64x64, batches 1,2, 2 rounds")
    args = parser.parse_args(argv)
    quick = args.quick
    args.configs = parse_configs(args.configs or list(QUICK_CONFIGS if quick else DEFAULT_CONFIGS))
    args.batches = args.batches or ([1, 2] if quick else [1, 8, 32])
    args.rounds = args.rounds or ([2] if quick else [20, 8, 4])
    if len(args.rounds) == 1:
        args.rounds = args.rounds * len(args.batches)
    if len(args.rounds) != len(args.batches):
        parser.error(f"--rounds: {len(args.rounds)} values for {len(args.batches)} batch sizes")
    args.input_size = args.input_size or (64 if quick else 224)
    args.num_classes = args.num_classes or (10 if quick else 1000)
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"--contenders: unknown {sorted(unknown)}; choose from {','.join(CONTENDERS)}")
    if args.threads < 1:
        parser.error("--threads must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    configs = []
    with tempfile.TemporaryDirectory(prefix="textcam-latency-") as tmp:
        work = args.cache or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for config in args.configs:
            configs.append(run_config(config, args, work))
    report = {
        "machine": machine_info(args.threads),
        "settings": {
            "quick": args.quick,
            "threads": args.threads,
            "batches": args.batches,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "input_size": args.input_size,
            "num_classes": args.num_classes,
            "contenders": list(args.contenders),
            "ort_allow_spinning": False,
            "loadavg_before": loadavg_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "total_s": round(time.perf_counter() - started, 1),
        },
        "configs": configs,
    }
    report["targets"] = evaluate_targets(configs)
    (args.out / "latency.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "latency.md").write_text(text)
    plot(report, args.out / "latency.png")
    print(text)
    log(f"wrote {args.out / 'latency.json'}, latency.md, latency.png in {report['settings']['total_s']} s")
    refused = refused_rows(report)
    if refused:
        log(f"error: {len(refused)} row(s) refused, their timings contradict each other: {'; '.join(refused)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
