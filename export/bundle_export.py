"""``export_bundle``: model in, verified bundle directory out."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import math
import numbers
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import onnx
import torch
from torch import nn

import textcam
from textcam.errors import TextcamError
from textcam.export.cam_methods import CamMethod, get_method
from textcam.export.joint_graph import ACTIVATIONS_OUTPUT, INPUT_NAMES, OUTPUT_NAMES, JointExplainer
from textcam.export.layout import LAYOUTS, infer_layout
from textcam.export.target_layer import ProbedLayer, choose_layer, find_module, linear_head_weight, probe
from textcam.export.tensorrt_compat import tensorrt_report
from textcam.export.tracing import OPSET, export_onnx, trace_joint
from textcam.export.verification import verify_onnx
from textcam.runtime.bundle import Bundle
from textcam.runtime.bundle_files import (
    MANIFEST_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    check_output_dir,
    sha256_file,
    staged_bundle_dir,
    write_file_atomic,
    write_manifest,
)
from textcam.runtime.manifest import (
    RESIZE_POLICIES,
    FileRef,
    GraphSection,
    InputSection,
    Manifest,
    ModelSection,
    SelftestSection,
    TargetLayerSection,
    TensorSpec,
    VerificationSection,
)
from textcam.runtime.preprocessing_spec import PREPROCESSING
from textcam.runtime.selftest import build_selftest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SELFTEST_FILE = "selftest.safetensors"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_bundle` wrote: the bundle's path and the facts worth printing.

    It is path-like (``os.fspath``, ``open``, ``Path(result)``, ``Explainer(result)`` and ``str`` give
    the bundle directory), so code written for the plain ``Path`` that ``export_bundle`` used to
    return keeps working; for ``/`` or ``.name`` use ``result.path``.
    """

    path: Path
    """The bundle directory."""
    layer: str
    """The explained layer (the one chosen when ``target_layer=None``)."""
    method: str
    verification: dict
    """The check against eager PyTorch, as in the manifest: passed, batch sizes, worst errors."""
    timings: dict[str, float]
    """Seconds per stage (probe, trace, ONNX export, verify, self-test)."""
    manifest: dict = field(repr=False)
    """The manifest written, as a plain dict (format version 2 layout)."""

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def _parse_size(input_size) -> tuple[int, int]:
    given = input_size
    if isinstance(input_size, str):  # "224" or "224x288", as the CLI takes it
        parts = [part.strip() for part in input_size.lower().split("x")]
        if len(parts) == 2:
            input_size = tuple(int(v) if v.isdigit() else v for v in parts)
        else:
            input_size = int(parts[0]) if len(parts) == 1 and parts[0].isdigit() else ()
    try:
        size = (input_size, input_size) if isinstance(input_size, numbers.Integral) else tuple(input_size)
    except TypeError:
        size = ()
    shown = given if isinstance(given, str) else "x".join(str(s) for s in size) if size else repr(given)
    if len(size) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size):
        raise TextcamError(f"input_size={shown}: expected H or HxW (integers), e.g. 224 or 224x288")
    if not all(8 <= s <= 4096 for s in size):
        raise TextcamError(f"input_size={shown}: each side must be between 8 and 4096 pixels")
    return (int(size[0]), int(size[1]))


def _rgb(name: str, values) -> tuple[float, float, float]:
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise TextcamError(f"{name}={values!r}: expected three finite numbers (R,G,B)")
    return numbers


def _stage(progress: Callable[[str], None] | None, message: str) -> float:
    _return_freed_memory()
    if progress:
        progress(message)
    return time.perf_counter()


def _return_freed_memory() -> None:
    """Hand what the last stage freed back to the system (glibc keeps freed heap otherwise).

    The probe's activations (ConvNeXt-L: 1.7 GB at batch 2) stayed resident through tracing and
    the ONNX export, and the verification's through the self-test (0.3 GB higher peak); other
    allocators than glibc's return memory their own way, and nothing is done there.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def export_bundle(
    model: nn.Module,
    target_layer: str | None,
    out: str | Path,
    method: str = "gradcam",
    input_size: int | tuple[int, int] = (224, 224),
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    layout: str = "auto",
    resize: str = "stretch",
    with_activations: bool = False,
    source: dict | None = None,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> ExportResult:
    """Export ``model`` into a bundle directory ``out`` holding ``manifest.json`` and ``model.onnx``.

    ``target_layer`` is the dotted name of the module whose output is explained (``None``: the
    last spatial layer the logits depend on). The ONNX graph returns logits, the chosen class,
    the heatmap at input resolution and the channel weights in one call (see
    :mod:`textcam.export.joint_graph`). The graph is verified against eager PyTorch before the
    bundle is written; a failed check raises :class:`~textcam.errors.TextcamError` and leaves
    ``out`` untouched. An existing bundle at ``out`` is replaced only with ``force=True``.
    Returns an :class:`ExportResult` (path-like: the bundle directory).

    Example::

        import torchvision
        from textcam.export import export_bundle
        result = export_bundle(torchvision.models.resnet50(), "layer4", "resnet50.textcam")
        print(result.path, result.layer, result.verification["passed"], result.timings)
    """
    if not isinstance(model, nn.Module):
        raise TextcamError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if target_layer is not None and not isinstance(target_layer, str):
        raise TextcamError(f"target_layer={target_layer!r}: expected a dotted module name such as 'layer4'")
    out = Path(out)
    check_output_dir(out, overwrite=force)  # before the slow part
    input_hw = _parse_size(input_size)
    cam_method = get_method(method)
    if resize not in RESIZE_POLICIES:
        raise TextcamError(f"resize {resize!r}: choose one of {', '.join(RESIZE_POLICIES)}")
    if layout not in LAYOUTS:
        raise TextcamError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    mean, std = _rgb("mean", mean), _rgb("std", std)
    if any(s <= 0 for s in std):
        raise TextcamError(f"std={','.join(map(str, std))}: each value must be positive")
    timings: dict[str, float] = {}

    start = _stage(progress, "probing layers")
    prepared = prepare_joint(model, target_layer, cam_method, input_hw, layout, with_activations, progress)
    joint, layer, example, num_classes = prepared.joint, prepared.layer, prepared.example, prepared.num_classes
    if class_names is not None and len(class_names) != num_classes:
        raise TextcamError(
            f"class_names: {len(class_names)} names given, but the model has {num_classes} classes; "
            "give one name per class, in logit order"
        )
    timings["probe_s"] = time.perf_counter() - start

    with staged_bundle_dir(out, overwrite=force) as stage:
        start = _stage(progress, "tracing forward + backward + CAM")
        target_example = torch.tensor([-1, 0])
        graph = trace_joint(joint, example, target_example)
        timings["trace_s"] = time.perf_counter() - start

        start = _stage(progress, "exporting to ONNX")
        onnx_path = stage / MODEL_FILE
        onnx_model = export_onnx(graph, example, target_example, onnx_path, joint=joint)  # without weights
        del graph
        timings["onnx_export_s"] = time.perf_counter() - start

        start = _stage(progress, "verifying against eager PyTorch on fresh inputs")
        verification = verify_onnx(onnx_path, joint, input_hw, mean=mean, std=std)
        timings["verify_s"] = time.perf_counter() - start
        del joint, prepared  # the private copy of the model: the self-test's session needs the room

        details = dict(source or {"source": type(model).__name__})
        data_path = stage / WEIGHTS_FILE
        data = FileRef(WEIGHTS_FILE, sha256_file(data_path), data_path.stat().st_size) if data_path.exists() else None
        manifest = Manifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            producer={"textcam": textcam.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                      "python": sys.version.split()[0], "opset": OPSET},
            model=ModelSection(str(details.pop("source")), FileRef(MODEL_FILE, sha256_file(onnx_path),
                                                                   onnx_path.stat().st_size), num_classes, details,
                               data),
            input=InputSection(height=input_hw[0], width=input_hw[1], mean=mean, std=std, resize=resize,
                               preprocessing=dict(PREPROCESSING)),
            classes=tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(num_classes)),
            target_layer=TargetLayerSection(**layer.layout.describe(), name=layer.name),
            method=cam_method.name,
            graph=_graph_signature(onnx_model),
            verification=VerificationSection(bool(verification.pop("passed")),
                                             tuple(verification.pop("batch_sizes", ())), verification),
            tensorrt=tensorrt_report(onnx_model),
            timings={k: round(v, 3) for k, v in timings.items()},
        )
        manifest = Manifest.from_dict(manifest.to_dict(), str(stage / MANIFEST_FILE))  # the checks readers make
        start = _stage(progress, "writing the self-test (expected outputs for every host)")
        data, fields = build_selftest(Bundle.from_manifest(stage, manifest))
        selftest_path = stage / SELFTEST_FILE
        write_file_atomic(selftest_path, data)
        manifest = manifest.replace(selftest=SelftestSection(
            FileRef(SELFTEST_FILE, sha256_file(selftest_path), selftest_path.stat().st_size), **fields))
        timings["selftest_s"] = time.perf_counter() - start
        manifest = manifest.replace(timings={k: round(v, 3) for k, v in timings.items()})
        write_manifest(stage, manifest)
    written = manifest.to_dict()
    return ExportResult(out, layer.name, cam_method.name, dict(written.get("verification") or {}),
                        dict(manifest.timings), written)


@dataclass(frozen=True)
class PreparedJoint:
    """The traceable joint module of an export, before tracing (see :func:`prepare_joint`)."""

    joint: JointExplainer
    layer: ProbedLayer
    example: torch.Tensor
    """The tracing example: [2, 3, H, W], seed 0."""
    num_classes: int


def prepare_joint(
    model: nn.Module,
    target_layer: str | None,
    cam_method: CamMethod,
    input_hw: tuple[int, int],
    layout: str = "auto",
    with_activations: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PreparedJoint:
    """A private eval-mode copy of ``model``, probed, with its layer chosen and wrapped for tracing."""
    # A private copy: switching off in-place ops (which clash with retaining activations and
    # with the leaf the gradient is taken against) must not touch the caller's model.
    model = _private_copy(model).eval().float()
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    example = torch.randn(2, 3, *input_hw, generator=torch.Generator().manual_seed(0))
    if target_layer is not None:
        find_module(model, target_layer)
    logits, records = probe(model, example)
    layer = choose_layer(model, records, target_layer, input_hw)
    if target_layer is None and progress:
        progress(f"picked layer '{layer.name}' (output {tuple(layer.output.shape[1:])}); "
                 "pass target_layer (--layer) to choose")
    if layout != "auto":
        layer.layout = infer_layout(layer.output, model, input_hw, layout)
    head = linear_head_weight(model, layer, logits) if cam_method.needs_linear_head else None
    joint = JointExplainer(
        model, find_module(model, layer.name), cam_method, layer.layout, input_hw, head, with_activations
    ).eval()
    return PreparedJoint(joint, layer, example, int(logits.shape[1]))


def _private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters share the caller's storage, without gradients.

    Only input-side gradients are ever needed, and nothing in the export writes to a weight (the
    float64 verification rebinds the copy's parameters, never the caller's), so sharing saves one
    copy of the weights while probing, tracing, exporting and running the graph's session (VGG-16:
    0.55 GB; ViT-H/14: 2.5 GB); the float64 reference still needs its own, twice the size.
    """
    memo: dict[int, object] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = nn.Parameter(parameter.detach(), requires_grad=False)
    return copy.deepcopy(model, memo)


def _graph_signature(model: onnx.ModelProto) -> GraphSection:
    def describe(values):
        result = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            result.append(TensorSpec(value.name, dtype, tuple(dims)))
        return result

    inputs, outputs = describe(model.graph.input), describe(model.graph.output)
    names = [o.name for o in outputs]
    if names[: len(OUTPUT_NAMES)] != list(OUTPUT_NAMES) or [i.name for i in inputs] != list(INPUT_NAMES):
        raise TextcamError(f"internal error: exported graph has unexpected inputs/outputs {names}")
    return GraphSection(tuple(inputs), tuple(outputs), ACTIVATIONS_OUTPUT in names)
