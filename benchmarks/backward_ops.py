"""Every backward operator the export meets, and how each one reaches ONNX.

For each model (every torchvision classifier and the timm families of ``coverage.py``) the joint
function of its *first* spatial layer (so the backward crosses the whole network) runs once
eagerly under a dispatch mode that records every aten op, the autograd engine's backward kernels
included, with the layer that issued it: the ops ``make_fx`` meets when the export traces it.
Each backward op is then classified by how it reaches ONNX:

- ``textcam``: rewritten at trace time by :mod:`textcam.export.decompositions`;
- ``pytorch``: PyTorch's own decomposition, applied at trace time (``PYTORCH_DECOMPOSED``);
- ``onnx``: the exporter has an ONNX function for it;
- ``exporter``: left to the exporter's own decomposition table (unchecked: worth a look);
- ``none``: no route (the export fails and names it).

Any op (forward or backward) with no route is an export failure waiting to happen; the script
lists those per model, with the layer.

Run (about 10 minutes on 2 cores; small inputs, no ONNX export)::

    python benchmarks/backward_ops.py                 # -> results/backward_ops.{json,md}
    python benchmarks/backward_ops.py --models torchvision:resnet18 timm:efficientnet_b0
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from coverage import TIMM_MODELS, input_size_for, torchvision_models  # noqa: E402


def _overload(target) -> str:
    parts = str(target).replace("::", ".").split(".")
    return ".".join(parts if len(parts) > 2 else [*parts, "default"])


def graph_ops(graph: torch.fx.GraphModule) -> set[str]:
    return {
        _overload(node.target)
        for node in graph.graph.nodes
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
    }


def exporter_routes() -> tuple[set[str], set[str]]:
    """(ops with an ONNX function, ops the exporter decomposes with PyTorch's tables)."""
    from torch._decomp import decomposition_table as core
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    registry = ONNXRegistry.from_torchlib()
    registered = {_overload(name) for name in registry.functions}
    decomposable = {_overload(op) for op in (*core, *torch.export.default_decompositions())}
    return registered, decomposable


def is_backward(op: str) -> bool:
    return "backward" in op


def first_spatial_layer(model: torch.nn.Module, size: int) -> str:
    """The earliest layer with a spatial output the logits depend on: its backward is the whole network's."""
    from textcam.export.target_layer import probe

    model = model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    _, records = probe(model, torch.randn(2, 3, size, size))
    names = [r.name for r in records if r.layout is not None and r.layout.grid != (1, 1) and r.spatial_gradient]
    return names[0]


def survey(spec: str) -> dict:
    from textcam.export.bundle_export import prepare_joint
    from textcam.export.cam_methods import get_method
    from textcam.export.decompositions import decomposition_table
    from textcam.export.model_source import load_model
    from textcam.export.trace_diagnosis import recorded_calls

    torch.manual_seed(0)
    model = load_model(spec).module
    size = input_size_for(spec, small=True)
    prepared = prepare_joint(model, first_spatial_layer(model, size), get_method("gradcam"), (size, size))
    calls = recorded_calls(prepared.joint, prepared.example)
    if not calls:
        raise RuntimeError("the joint function did not run eagerly")
    ops = {name for name, _ in calls}
    ours = {_overload(op) for op in decomposition_table()}
    return {
        "model": spec,
        "input_size": size,
        "layer": prepared.layer.name,
        "backward_ops": sorted(op for op in ops if is_backward(op)),
        "textcam_rewritten": sorted(op for op in ops if op in ours),
        "ops": sorted(ops),
        "layers": {op: layer for op, layer in reversed(calls) if op in ops},
    }


def classify(op: str, ours: set[str], registered: set[str], decomposable: set[str]) -> str:
    from torch._decomp import get_decompositions

    from textcam.export.decompositions import PYTORCH_DECOMPOSED

    if op in {_overload(o) for o in get_decompositions(list(PYTORCH_DECOMPOSED))}:
        return "pytorch"
    if op in ours:
        return "textcam"
    if op in registered:
        return "onnx"
    if op in decomposable:
        return "exporter"
    return "none"


def write_report(rows: list[dict], out: Path) -> None:
    from textcam.export.decompositions import decomposition_table

    ours = {_overload(op) for op in decomposition_table()}
    registered, decomposable = exporter_routes()
    ops: dict[str, dict] = {}
    for row in rows:
        if "error" in row:
            continue
        for op in row["backward_ops"]:
            entry = ops.setdefault(op, {"route": classify(op, ours, registered, decomposable), "models": []})
            entry["models"].append(row["model"])
    leftovers = {
        row["model"]: sorted(
            f"{op} (layer {row['layers'].get(op)})"
            for op in row["ops"]
            if classify(op, ours, registered, decomposable) == "none"
        )
        for row in rows
        if "error" not in row
    }
    leftovers = {model: left for model, left in leftovers.items() if left}
    out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "ops": ops, "untranslatable_after_trace": leftovers, "models": rows}
    (out / "backward_ops.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Backward operators of the export",
        "",
        f"Generated by `benchmarks/backward_ops.py` (torch {torch.__version__}) over {len(rows)} models, "
        "each run at its first spatial layer (so the backward crosses the whole network), recording every "
        "aten op. Route: `textcam` = rewritten at trace time by `export/decompositions.py`; `pytorch` = "
        "PyTorch's own decomposition, applied at trace time; `onnx` = the exporter has an ONNX function; "
        "`exporter` = left to the exporter's decomposition table; `none` = no route.",
        "",
        "| backward op | route | models |",
        "|---|---|---:|",
    ]
    for op, entry in sorted(ops.items()):
        lines.append(f"| `{op}` | {entry['route']} | {len(entry['models'])} |")
    lines += ["", "## Ops (forward or backward) with no route to ONNX", ""]
    lines += [f"- {model}: {', '.join(left)}" for model, left in leftovers.items()] or ["None."]
    errors = [row for row in rows if "error" in row]
    if errors:
        lines += ["", "## Models that could not be traced", ""]
        lines += [f"- {row['model']}: {row['error']}" for row in errors]
    (out / "backward_ops.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="model specs (default: torchvision's classifiers + timm families)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    specs = args.models or [f"torchvision:{name}" for name in torchvision_models()] + list(TIMM_MODELS)
    saved = args.out / "backward_ops.json"
    # resumable: models already surveyed (without an error) are kept, and the report is rewritten after each
    rows = [r for r in json.loads(saved.read_text())["models"] if "error" not in r] if saved.exists() else []
    done = {row["model"] for row in rows}
    todo = [spec for spec in specs if spec not in done]
    for i, spec in enumerate(todo, 1):
        start = time.perf_counter()
        try:
            row = survey(spec)
        except Exception as exc:  # one row per model; the report lists failures
            row = {"model": spec, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"[{i}/{len(todo)}] {spec}: {row.get('error') or ', '.join(row['backward_ops'])}", flush=True)
        write_report(rows, args.out)
        gc.collect()
    write_report(rows, args.out)


if __name__ == "__main__":
    main()
