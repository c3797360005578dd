"""GPU latency of a Grad-CAM explanation: textcam's TensorRT engine vs plain TensorRT inference and
vs pytorch-grad-cam on CUDA, timed interleaved in one process, ratios from the same rounds.

Contenders, per model/layer, precision and batch size (same random weights, same float batch):

- ``trt-plain``: an engine of the bundle's graph pruned to the logits (same precision and batch
  profile as the explaining engine): a prediction without an explanation; the baseline;
- ``trt-graph``: the joint engine, raw call (``explainer.runner.run``: copies in, run, copies out);
- ``trt-explain``: ``Explainer(backend="tensorrt").explain`` on the float batch (graph + softmax +
  per-image results);
- ``torch-plain``: the eager PyTorch model on CUDA, ``no_grad``, fp32 (context for the baseline);
- ``pytorch-grad-cam``: ``pytorch_grad_cam.GradCAM`` on CUDA, fp32, targets = predicted classes.

Every contender returns host (numpy) results or synchronizes CUDA before it returns, so the
times are end-to-end wall clock. Input: float32 batches on the host, as a service would have. No
contender runs an ONNX Runtime session, so no CPU thread pool spins between the calls.

A row whose timings contradict each other (``trt-explain`` faster than the ``trt-graph`` it contains,
``trt-graph`` faster than ``trt-plain``, ``pytorch-grad-cam`` faster than ``torch-plain``, beyond the
rounds' interquartile range: ``textcam.runtime.timing.contradiction``) is refused: the report says why
instead of giving its numbers, and the script exits 1.

Full run (needs an NVIDIA GPU, TensorRT, torch with CUDA and grad-cam)::

    python benchmarks/gpu_latency.py --precisions fp32,fp16 --work /tmp/textcam-gpu-bench

Smoke run::

    python benchmarks/gpu_latency.py --quick --out /tmp/gpu-latency-smoke

Without a GPU it exits with one line saying why. Writes ``gpu_latency.json`` and ``.md`` into
``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

DEFAULT_CONFIGS = ("resnet50:layer4", "resnet50:layer3", "vit_b_16:encoder.layers.encoder_layer_11.ln_1")
QUICK_CONFIGS = ("resnet18:layer4",)
CONTENDERS = ("trt-plain", "trt-graph", "trt-explain", "torch-plain", "pytorch-grad-cam")
RATIOS = (
    ("trt_graph_over_plain", "trt-graph", "trt-plain"),
    ("trt_explain_over_plain", "trt-explain", "trt-plain"),
    ("pytorch_grad_cam_over_trt_explain", "pytorch-grad-cam", "trt-explain"),
    ("torch_plain_over_trt_plain", "torch-plain", "trt-plain"),
)
# (outer, inner): outer does all of inner's work and more on the same engine
CONTAINS = (("trt-explain", "trt-graph"), ("trt-graph", "trt-plain"), ("trt-explain", "trt-plain"),
            ("pytorch-grad-cam", "torch-plain"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def gpu_missing() -> str | None:
    """Why this benchmark cannot run here (one phrase), or None."""
    from textcam.runtime.backends.availability import unavailable_reason

    reason = unavailable_reason("tensorrt")
    if reason:
        return reason
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'textcam[export,bench]')"
    if not torch.cuda.is_available():
        return "torch has no CUDA device (a CUDA build of torch is needed for pytorch-grad-cam)"
    return None


def prepare(config: str, precision: str, args, work: Path) -> dict:
    """Export (or reuse) the bundle, build the engine (timing cache kept in --work), set up every contender."""
    from latency import DEFAULT_LAYERS, build_model, peer_reshape  # this script's folder is on sys.path
    from pytorch_grad_cam import GradCAM

    from textcam.engines.build import build_engine
    from textcam.export import export_bundle
    from textcam.runtime import Explainer
    from textcam.runtime.plain_baseline import plain_inference

    name, _, layer = config.partition(":")
    layer = layer or DEFAULT_LAYERS[name]
    input_hw = (args.input_size, args.input_size)
    model = build_model(name, args.num_classes, input_hw)
    tag = f"{name}-{layer}-{input_hw[0]}-k{args.num_classes}".replace(".", "_")
    bundle = work / f"{tag}.textcam"
    if not (bundle / "manifest.json").is_file():
        log(f"{config}: exporting")
        export_bundle(model, layer, bundle, input_size=input_hw)
    log(f"{config}: building the {precision} engine")
    build_engine(bundle, precision, 1, min(8, max(args.batches)), max(args.batches),
                 timing_cache=work / "timing.cache", progress=log)
    explainer = Explainer(bundle, backend="tensorrt", batch_size=max(args.batches),
                          backend_options={"precision": precision, "contexts": 1})
    plain_run, release = plain_inference(explainer)
    _, reshape = peer_reshape(model, layer, input_hw)
    cuda_model = model.cuda().eval()
    module = dict(cuda_model.named_modules())[layer]
    cam = GradCAM(model=cuda_model, target_layers=[module], reshape_transform=reshape)
    return {"explainer": explainer, "plain": plain_run, "release": release, "model": cuda_model, "cam": cam}


def contenders(state: dict, images: np.ndarray) -> dict[str, Callable[[], object]]:
    import torch

    classes = np.full(len(images), -1, dtype=np.int64)

    def torch_plain():
        with torch.no_grad():
            logits = state["model"](torch.from_numpy(images).cuda())
        return logits.cpu()  # synchronizes

    def grad_cam():
        return state["cam"](input_tensor=torch.from_numpy(images).cuda(), targets=None)  # numpy maps

    return {
        "trt-plain": lambda: state["plain"](images),
        "trt-graph": lambda: state["explainer"].runner.run(images, classes),
        "trt-explain": lambda: state["explainer"].explain_batch(images),
        "torch-plain": torch_plain,
        "pytorch-grad-cam": grad_cam,
    }


def agreement(state: dict, images: np.ndarray) -> dict:
    """A sanity check that the contenders explain the same thing (the parity tests gate it)."""
    import torch

    outputs = state["explainer"].runner.run(images, np.full(len(images), -1, dtype=np.int64))
    maps = state["cam"](input_tensor=torch.from_numpy(images).cuda(), targets=None)
    return {"cam_max_abs_diff_vs_pytorch_grad_cam": float(np.abs(maps - outputs["cam"]).max())}


def run(config: str, precision: str, args, work: Path) -> dict:
    from textcam.runtime.timing import contradiction, interleaved_medians

    state = prepare(config, precision, args, work)
    spec = state["explainer"].bundle.input
    rows = []
    try:
        for batch in args.batches:
            images = np.random.default_rng(batch).standard_normal((batch, 3, spec.height, spec.width))
            images = images.astype(np.float32)
            log(f"{config} {precision} batch {batch}: {args.rounds} rounds")
            stats = interleaved_medians(contenders(state, images), rounds=args.rounds, warmup=3)
            medians = {name: s["median_ms"] for name, s in stats.items()}
            refused = contradiction(stats, CONTAINS)
            if refused:
                log(f"{config} {precision} batch {batch} refused: {refused}")
            rows.append({
                "batch": batch,
                "refused": refused,
                "median_ms": {k: round(v, 3) for k, v in medians.items()},
                "p90_ms": {k: round(s["p90_ms"], 3) for k, s in stats.items()},
                # no ratio from numbers that contradict each other
                "ratios": {} if refused else {key: round(medians[a] / medians[b], 3) for key, a, b in RATIOS},
                "images_per_s_explain": round(1e3 * batch / medians["trt-explain"], 1),
                "agreement": agreement(state, images),
            })
        entry = state["explainer"].runner.entry
        return {"config": config, "precision": precision, "engine": entry.to_dict() if entry else None,
                "results": rows}
    finally:
        state["release"]()
        state["explainer"].close()


def machine() -> dict:
    import torch

    from textcam.runtime.backends.cuda_memory import open_device_memory

    gpu = open_device_memory().info()

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "gpu_memory_gb": round(gpu.total_memory_bytes / 2**30, 1),
        "platform": platform.platform(),
        "versions": {name: version(name) for name in ("textcam", "tensorrt", "cuda-python", "torch", "grad-cam",
                                                      "onnxruntime", "numpy")} | {"torch_cuda": torch.version.cuda},
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# GPU latency: textcam (TensorRT) vs plain TensorRT vs pytorch-grad-cam (CUDA)",
        "",
        f"{m['gpu']} (sm{m['compute_capability'].replace('.', '')}), TensorRT {m['versions'].get('tensorrt')}, "
        f"torch {m['versions'].get('torch')}; medians of {report['rounds']} interleaved rounds, milliseconds, "
        "host float32 batch in, host results out.",
        "",
    ]
    for run_ in report["runs"]:
        lines += [f"## {run_['config']}, {run_['precision']}", "",
                  "| batch | " + " | ".join(f"{c} ms" for c in CONTENDERS) + " | explain/plain | graph/plain | "
                  "grad-cam/explain | img/s (explain) |",
                  "|---:|" + "---:|" * (len(CONTENDERS) + 4)]
        for row in run_["results"]:
            r = row["ratios"]
            if row["refused"]:
                lines.append(f"| {row['batch']} | refused: {row['refused']} |" + " |" * (len(CONTENDERS) + 3))
                continue
            lines.append(f"| {row['batch']} | " + " | ".join(f"{row['median_ms'][c]:.2f}" for c in CONTENDERS)
                         + f" | {r['trt_explain_over_plain']:.2f} | {r['trt_graph_over_plain']:.2f} | "
                         f"{r['pytorch_grad_cam_over_trt_explain']:.2f} | {row['images_per_s_explain']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def int_list(value: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected positive integers separated by commas, e.g. 1,8,32")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=None, metavar="MODEL:LAYER")
    parser.add_argument("--precisions", default="fp32,fp16", help="comma-separated: fp32, fp16, bf16")
    parser.add_argument("--batch-sizes", dest="batches", type=int_list, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/textcam-gpu-bench"),
                        help="bundles, engines and the timing cache are kept here between runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64x64, batches 1,8, 5 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs = args.configs or list(QUICK_CONFIGS)
        args.input_size, args.num_classes, args.rounds, args.batches = 64, 10, 5, [1, 8]
    args.configs = args.configs or list(DEFAULT_CONFIGS)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = gpu_missing()
    if missing:
        print(f"gpu_latency: cannot run here: {missing}", file=sys.stderr)
        return 1
    from textcam.engines.entries import check_precision

    for precision in args.precisions:
        check_precision(precision)
    args.work.mkdir(parents=True, exist_ok=True)
    runs = [run(config, precision, args, args.work) for config in args.configs for precision in args.precisions]
    report = {"machine": machine(), "rounds": args.rounds, "batches": args.batches, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_latency.md").write_text(markdown(report))
    log(f"wrote {args.out / 'gpu_latency.json'} and gpu_latency.md")
    refused = [f"{r['config']} {r['precision']} batch {row['batch']}" for r in runs for row in r["results"]
               if row["refused"]]
    if refused:
        log(f"error: {len(refused)} row(s) refused, their timings contradict each other: {'; '.join(refused)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
