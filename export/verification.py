"""Verified export: refuse a wrong graph, not float32 rounding.

The written ONNX graph is run in ONNX Runtime on fresh inputs and compared with eager PyTorch
autograd. A correct float32 graph is not exact, and on a badly conditioned network (a deep
backward whose channel weights are spatial means of gradients of mixed sign) eager float32 is
itself far from the exact answer. Fixed tolerances either pass wrong graphs or refuse correct
ones. So each output is measured three times on the same inputs:

- ``graph``: the exported graph (ONNX Runtime, float32) against eager float64 autograd;
- ``eager float32``: eager PyTorch in float32 against the same float64 computation, on the inputs
  as given, and once more as another implementation would compute it: channels-last weights
  (other convolution kernels) and the image jittered by a relative 2^-24 (below what storing it
  in float32 already rounds away). This is how far float32 itself can be from the answer;
- the graph is refused when its error exceeds ``FACTOR`` x eager float32's error + a floor:

      error(graph, float64) > FACTOR * error(eager float32, float64) + FLOOR[output]

Channels whose activations are zero to float32 precision (every value within ``DEAD`` of the
image's largest activation, in float64) are left out of the channel-weight comparison and
counted (``dead_channels``): their weight can be 0/0. XGrad-CAM divides by sum_ij A_k + 1e-7,
and on such a channel float32 implementations legitimately disagree by order one (ONNX Runtime's
SiLU returns 0 where PyTorch's returns -1e-8, EfficientNet-B0's ``features``); the channel adds
nothing to the map, which is still compared in full.

A wrong graph (a dropped term, a wrong sign, another layer, a weight changed) is off by order one
in some output and stays refused; a correct graph on an ill-conditioned layer is as far from
float64 as eager float32 is, and passes. Every number goes into the manifest's ``verification``.

Inputs differ from the tracing example in values and batch size, so a graph that had baked the
example's gradients in as constants cannot pass. They mix Gaussian noise with natural-looking
images (a 1/f spectrum, as photographs have, plus flat-coloured shapes), whose activations
resemble real ones more than noise does.

Where the model cannot run in float64 (dtype-specific code), the graph is compared with eager
float32 directly, with the floors as tolerances.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from textcam.errors import TextcamError
from textcam.export.joint_graph import INPUT_NAMES
from textcam.runtime.backends.onnxruntime_runner import session_options
from textcam.runtime.comparison import Comparison

# error(graph) may exceed error(eager float32) by this factor: ONNX Runtime's kernels sum in
# other orders than PyTorch's, so the two float32 computations scatter around float64 alike but
# not identically.
FACTOR = 4.0
# What a correct graph may always be off by (relative for logits / weights / activations, absolute
# for the [0, 1] map). A wrong graph is off by order one.
FLOORS = {
    "logits_max_rel_err": 1e-5,
    "channel_weights_max_rel_err": 1e-4,
    "channel_activation_max_rel_err": 1e-5,
    "cam_max_abs_err": 1e-3,
}
JITTER_DRAWS = 1
JITTER = 2.0**-24
# A channel is dead (zero to float32 precision) when all its values are within this much of the
# image's largest activation: 16 units in the last place of it.
DEAD = 2.0**-20

UNSTEADY = 0.1
"""An eager float32 run's channel weights this far (relative, per row) from float64 make the row
ill-conditioned: left out of the weights and map comparisons (see :func:`_measure`)."""

ILL_CONDITIONED_DRAWS = 4
"""Eager float32 runs added per batch (half channels-last) when its logits are ILL_CONDITIONED."""

ILL_CONDITIONED = 1e-2
"""Eager float32 logits this far (relative) from float64 mean the network itself cannot be computed
in float32 to better than a percent on these inputs (seen: random-init EfficientNet-B6, 0.79): the
export is fine, but every float32 runtime's answers, eager PyTorch's included, are approximate."""


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))


def _errors(
    got: dict[str, np.ndarray], exact: dict[str, np.ndarray], rows: np.ndarray, live: np.ndarray
) -> dict[str, float]:
    """The four measures of ``got`` against ``exact`` over ``rows`` (where both chose the same class);
    channel weights only where ``live`` ([B, C]: not a dead channel)."""
    errors = {"logits_max_rel_err": _rel(got["logits"], exact["logits"])}
    compared = live & rows[:, None]
    if rows.any() and compared.any():
        errors["channel_weights_max_rel_err"] = _rel(got["weights"][compared], exact["weights"][compared])
        errors["cam_max_abs_err"] = float(np.abs(got["cam"][rows] - exact["cam"][rows]).max())
    else:
        errors["channel_weights_max_rel_err"] = errors["cam_max_abs_err"] = 0.0
    errors["channel_activation_max_rel_err"] = _rel(got["activation"], exact["activation"])
    return errors


def _row_errors(got: np.ndarray, want: np.ndarray, live: np.ndarray) -> np.ndarray:
    """[B] each row's largest channel-weight error relative to the row's largest float64 weight (live channels)."""
    diff = np.where(live, np.abs(got - want), 0.0).max(axis=1)
    return diff / np.maximum(np.where(live, np.abs(want), 0.0).max(axis=1), 1e-30)


def _measure(graph: list[dict], eager32: list[list[dict]], exact: list[dict], live: list[np.ndarray],
             in_float64: bool) -> tuple[dict[str, float], dict[str, float], list[float], int]:
    """The graph's and eager float32's errors against float64 per measure (worst over the batches),
    the float64 logit gaps where the graph chose another class, and the rows left out as ill-conditioned.

    A row is ill-conditioned when an eager float32 run's channel weights are more than ``UNSTEADY``
    (relative) from float64 there: the gradient reaching the layer is below float32's rounding, so
    any float32 computation of that row's weights and map is noise (seen: random-init
    EfficientNetV2-L at ``features.5``, eager float32 430x off in the weights while its map happened
    to land within 0.15 and the graph's did not). Those rows' weights and maps are compared for
    neither side, so they neither refuse a graph nor widen the bounds; logits are compared on all.
    """
    graph_err = dict.fromkeys(FLOORS, 0.0)
    eager_err = dict.fromkeys(FLOORS, 0.0)
    gaps = []
    unsteady = 0
    for got, runs, want, alive in zip(graph, eager32, exact, live, strict=True):
        same = got["chosen"] == want["chosen"]
        scale = max(float(np.abs(want["logits"]).max()), 1e-30)  # as the logits error is measured
        for row in np.flatnonzero(~same):
            logits = want["logits"][row]
            gaps.append(abs(logits[got["chosen"][row]] - logits[want["chosen"][row]]) / scale)
        steady = same.copy()
        if in_float64:
            for run in runs:
                agree = run["chosen"] == want["chosen"]
                steady &= ~(agree & (_row_errors(run["weights"], want["weights"], alive) > UNSTEADY))
        unsteady += int((same & ~steady).sum())
        for key, value in _errors(got, want, steady, alive).items():
            graph_err[key] = max(graph_err[key], value)
        if in_float64:
            for run in runs:
                agree = steady & (run["chosen"] == want["chosen"])
                for key, value in _errors(run, want, agree, alive).items():
                    eager_err[key] = max(eager_err[key], value)
    return graph_err, eager_err, gaps, unsteady


def natural_images(batch: int, input_hw: tuple[int, int], mean, std, generator: torch.Generator) -> Tensor:
    """Normalized images with a photograph's statistics: a 1/f amplitude spectrum, channels
    correlated, plus a few flat-coloured rectangles (edges and uniform regions)."""
    h, w = input_hw
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    amplitude = 1.0 / torch.sqrt(fy**2 + fx**2).clamp_min(1.0 / max(h, w))

    def field(n: int) -> Tensor:
        phase = torch.rand(n, h, w // 2 + 1, generator=generator) * 2 * math.pi
        noise = torch.fft.irfft2(amplitude * torch.polar(torch.ones_like(phase), phase), s=(h, w))
        noise = noise - noise.mean(dim=(1, 2), keepdim=True)
        return noise / noise.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)

    luminance = field(batch)[:, None]
    pixels = 0.5 + 0.18 * (luminance + 0.35 * field(batch * 3).reshape(batch, 3, h, w))
    for b in range(batch):
        for _ in range(3):
            y0, x0 = (int(torch.randint(0, s - s // 4, (), generator=generator)) for s in (h, w))
            y1 = y0 + max(1, int(torch.randint(h // 8 + 1, h // 2 + 2, (), generator=generator)))
            x1 = x0 + max(1, int(torch.randint(w // 8 + 1, w // 2 + 2, (), generator=generator)))
            pixels[b, :, y0:y1, x0:x1] = torch.rand(3, 1, 1, generator=generator)
    pixels = pixels.clamp(0, 1)
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def verification_batches(
    input_hw: tuple[int, int], batch_sizes: tuple[int, ...], mean, std, seed: int
) -> list[Tensor]:
    """One batch per size; rows alternate natural-looking images and Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for size in batch_sizes:
        natural = natural_images(size, input_hw, mean, std, generator)
        noise = torch.randn(size, 3, *input_hw, generator=generator)
        rows = torch.arange(size)[:, None, None, None]
        batches.append(torch.where(rows % 2 == 0, natural, noise))
    return batches


def _live_channels(activations: Tensor) -> np.ndarray:
    """[B, C] bool: channels with some activation above ``DEAD`` x the image's largest."""
    per_channel = activations.abs().amax(dim=(2, 3))
    return (per_channel > DEAD * per_channel.amax(dim=1, keepdim=True)).numpy()


def _run_eager(joint: nn.Module, image: Tensor, target: Tensor) -> dict[str, np.ndarray]:
    with torch.enable_grad():
        logits, chosen, cam, weights, activation = (t.detach() for t in joint(image, target)[:5])
    as_numpy = {"logits": logits, "chosen": chosen, "cam": cam, "weights": weights, "activation": activation}
    return {k: v.numpy().astype(np.float64) if v.is_floating_point() else v.numpy() for k, v in as_numpy.items()}


def _run_rows(joint: nn.Module, image: Tensor, target: Tensor) -> dict[str, np.ndarray]:
    """:func:`_run_eager` one image at a time: in float64 the saved activations are the export's
    largest allocation (VGG-16 at batch 3: 0.7 GB), and eval-mode rows do not interact."""
    rows = [_run_eager(joint, image[i : i + 1], target[i : i + 1]) for i in range(len(image))]
    return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


def _jittered(image: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.rand(image.shape, generator=generator, dtype=torch.float64) * 2 - 1
    return (image.double() * (1 + JITTER * noise)).float()


def _more_float32_runs(joint: nn.Module, eager32: list[list[dict]], images, targets, generator: torch.Generator,
                       draws: int, channels_last: bool) -> None:
    """Append ``draws`` eager float32 runs per batch on freshly jittered images (channels-last
    weights and images: other kernels)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with _ChannelsLast(joint) if channels_last else contextlib.nullcontext():
        for runs, image, target in zip(eager32, images, targets, strict=True):
            for _ in range(draws):
                runs.append(_run_eager(joint, _jittered(image, generator).contiguous(memory_format=layout), target))


class _ChannelsLast:
    """The joint module's 4-d weights in channels-last memory order, and back: other kernels
    (oneDNN's NHWC convolutions), so other rounding at every layer, like another runtime's."""

    def __init__(self, joint: nn.Module):
        self.joint = joint

    def __enter__(self) -> None:
        self.joint.to(memory_format=torch.channels_last)

    def __exit__(self, *exc) -> None:
        self.joint.to(memory_format=torch.contiguous_format)


class _InFloat64:
    """The joint module switched to float64 in place and back (float32 -> float64 -> float32 is
    exact), so the reference costs no second copy of the weights."""

    def __init__(self, joint: nn.Module):
        self.joint = joint
        self.ok = True

    def __enter__(self) -> bool:
        try:
            self.joint.double()
            if self.joint.head_weight is not None:  # a plain attribute, which .double() skips
                self.joint.head_weight = self.joint.head_weight.double()
            probe = torch.zeros(1, 3, *self.joint.input_hw, dtype=torch.float64)
            with torch.enable_grad():
                self.joint(probe, torch.tensor([-1]))
        except Exception:  # a model with dtype-specific code: no float64 reference
            self.ok = False
        return self.ok

    def __exit__(self, *exc) -> None:
        self.joint.float()
        if self.joint.head_weight is not None:
            self.joint.head_weight = self.joint.head_weight.float()


def verify_onnx(
    onnx_path: Path,
    joint: nn.Module,
    input_hw: tuple[int, int],
    batch_sizes: tuple[int, ...] = (1, 3),
    seed: int = 20261124,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
) -> dict:
    """Compare the graph and eager float32 with eager float64; raise if the graph is clearly worse.

    Returns the report stored in the manifest: the graph's errors against float64 (the
    ``*_max_*_err`` keys), eager float32's (``eager_float32``), the bounds applied (``bounds``).
    """
    import onnxruntime as ort

    images = verification_batches(input_hw, batch_sizes, mean, std, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        classes = int(joint.model(images[0][:1]).shape[1])
    targets = []
    for image in images:
        # row 0 explains the predicted class (-1), the others a random class
        target = torch.randint(0, classes, (image.shape[0],), generator=generator)
        target[0] = -1
        targets.append(target)

    # a few runs only: no second, pre-packed copy of the weights (ViT-L/16: 0.85 GB)
    options = session_options(intra_op_threads=None, allow_spinning=True, prepack_weights=False)
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = ("logits", "chosen", "cam", "weights", "activation")
    graph = []
    for image, target in zip(images, targets, strict=True):
        got = session.run(None, {INPUT_NAMES[0]: image.numpy(), INPUT_NAMES[1]: target.numpy()})[:5]
        graph.append({k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in zip(names, got, strict=True)})
    del session

    eager32 = [[_run_eager(joint, image, t)] for image, t in zip(images, targets, strict=True)]
    _more_float32_runs(joint, eager32, images, targets, generator, JITTER_DRAWS, channels_last=True)
    live = []  # [B, C] per batch: channels not zero to float32 precision (all, without float64)
    rows_live: list[np.ndarray] = []
    with _InFloat64(joint) as in_float64:
        joint.inspect_activations = lambda a: rows_live.append(_live_channels(a)) if in_float64 else None
        try:
            exact = []
            for image, target, runs in zip(images, targets, eager32, strict=True):
                if not in_float64:
                    exact.append(runs[0])
                    continue
                rows_live.clear()
                exact.append(_run_rows(joint, image.double(), target))
                live.append(np.concatenate(rows_live))
        finally:
            joint.inspect_activations = None
    if not in_float64:
        live = [np.ones(run["weights"].shape, dtype=bool) for run in exact]
    reference = "eager autograd, float64" if in_float64 else "eager autograd, float32 (the model cannot run in float64)"

    graph_err, eager_err, gaps, unsteady = _measure(graph, eager32, exact, live, in_float64)
    if in_float64 and eager_err["logits_max_rel_err"] > ILL_CONDITIONED:
        # float32's own error is large and erratic here: two samples under-estimate its spread
        for channels_last in (False, True):
            _more_float32_runs(joint, eager32, images, targets, generator, ILL_CONDITIONED_DRAWS // 2, channels_last)
        graph_err, eager_err, gaps, unsteady = _measure(graph, eager32, exact, live, in_float64)
    bounds = {key: FACTOR * eager_err[key] + FLOORS[key] for key in FLOORS}
    # A tie that float32 cannot resolve: logits within their bound of float64 can swap two classes
    # whose gap is under twice that bound. The other class's map is not comparable; the logits are.
    near_ties = sum(bool(gap <= 2 * bounds["logits_max_rel_err"]) for gap in gaps)
    class_mismatches = len(gaps) - near_ties
    rows = [Comparison(key, "max abs" if "_abs_" in key else "max rel", graph_err[key], bounds[key]) for key in FLOORS]
    rows.append(Comparison("chosen classes", "mismatches", float(class_mismatches), 0.0))
    failed = [row.failure() for row in rows if not row.passed]
    report = {
        "batch_sizes": list(batch_sizes),
        "seed": seed,
        "inputs": "natural-looking (1/f spectrum + shapes) and Gaussian rows",
        "reference": reference,
        **{key: float(value) for key, value in graph_err.items()},
        "eager_float32": {key: float(value) for key, value in eager_err.items()},
        "bounds": {key: float(value) for key, value in bounds.items()},
        "rule": f"graph error vs float64 <= {FACTOR:g} x eager float32 error vs float64 + floor",
        "float32_runs": len(eager32[0]),
        "near_ties": near_ties,
        "dead_channels": int(sum((~alive).sum() for alive in live)),
        "ill_conditioned_rows": unsteady,
        "warnings": [],
    }
    if unsteady:
        report["warnings"].append(
            f"on {unsteady} of the check's {sum(len(g['chosen']) for g in graph)} rows eager float32's own channel "
            f"weights are more than {UNSTEADY:.0%} from float64 (the class score's gradient at the layer is below "
            "float32 rounding there): those rows' weights and maps were not compared")
    if eager_err["logits_max_rel_err"] > ILL_CONDITIONED and in_float64:
        report["warnings"].append(
            f"eager float32 logits are {eager_err['logits_max_rel_err']:.2g} (relative) from float64 on the check's "
            "inputs: the network is ill-conditioned in float32 (typical of random or uncalibrated weights), so "
            "float32 answers from any runtime, eager PyTorch included, are approximate here")
    report["passed"] = not failed
    if failed:
        raise TextcamError(
            "verification failed: the exported graph disagrees with eager PyTorch on fresh inputs by more "
            "than float32 rounding explains ("
            + "; ".join(failed)
            + "); nothing was written. Please report this with the model and torch version."
        )
    return report
