"""The bundle's conformance self-test: a few images and the outputs every host must reproduce.

Every host of a bundle (this Python runtime, a C++ core, Triton, OpenVINO, each GPU backend) is
held to the same check: the bundle carries ``selftest-<sha12>.safetensors`` (named by the
manifest's ``selftest`` section) with a handful of uint8 RGB images and what the reference host
(this runtime, ONNX Runtime on the CPU, fp32, the bundle's default concept settings) computed
for them. A host runs the stored (already decoded) images end to end, through its own
preprocessing, its graph and its concept selection, and compares: ``textcam selftest BUNDLE``,
``Explainer.selftest()`` or :func:`run_selftest` here; other hosts read the same file.

File contents (safetensors; N images, K classes, C channels, H x W the graph input, k top_k):

==========================  ==========  ==============================================================
tensor                      dtype       meaning
==========================  ==========  ==============================================================
``image_{i}``               uint8       [h_i, w_i, 3] RGB, i = 0..N-1; sizes and aspect ratios differ
``input``                   float32     [N, 3, H, W] the preprocessed images (resize, scale, normalize)
``logits``                  float32     [N, K]
``class_index``             int64       [N] (the graph ran with ``target_class`` = -1: predicted)
``cam``                     float32     [N, H, W] at graph resolution
``channel_weights``         float32     [N, C]
``channel_activation``      float32     [N, C]
``concept_ids``             int64       [N, k] the selected phrases, in selection order (with semantics)
``concept_scores``          float32     [N, k] their cosines (with semantics)
==========================  ==========  ==============================================================

Metadata (strings): ``format`` (``textcam-selftest``), ``format_version``, ``model_sha256`` (the
graph the outputs came from; another graph is refused), ``target_class`` (-1), ``seed`` and
``generated_indices`` (which of :func:`selftest_images` were kept), ``unstable_images`` (0 unless
too few stable images were found), ``reference``; with semantics ``semantics_sha256`` and
``concept_settings`` (JSON: the selection settings used, which every host applies whatever its
own defaults).

Two runs are compared, so that a preprocessing difference and a graph difference are told apart
(report rows in this order: ``preprocess``, ``graph``, ``end-to-end``):

- ``graph``: the host's graph (and concept selection) on the stored ``input`` tensor. Only the
  graph's arithmetic can differ; tolerances are tight.
- ``end-to-end``: the host on the stored images, its own preprocessing first. The ``input`` row
  checks the preprocessing; the outputs then also carry the preprocessing's rounding, so their
  tolerances are looser (see below).

Tolerances (``manifest["selftest"]["tolerances"]``), chosen so that a correct float32 host passes
with a wide margin and a wrong one fails; measured on the default bundle and a resnet18 (numbers
from the change that introduced this module, the tests in ``tests/test_selftest.py`` keep them):

- ``input`` (max abs, normalized units): one grey level of the worst channel,
  ``scale / min(std)`` (1/(255 * min std)), plus 1e-5 for float rounding. Pillow documents that
  its resampling may move a value by one level between versions. Measured: another filter moves
  textured pixels by many levels (nearest 0.42, bicubic 0.12, box 0.40, OpenCV's
  non-antialiased INTER_LINEAR 0.12, against 0.0175 for the default bundle).
- ``logits``, ``channel_weights``, ``channel_activation`` (max rel: per image, the largest absolute
  difference over the largest reference magnitude of that image) and ``cam`` (max abs, maps in
  [0, 1]): 1e-3 each, the limits ``textcam build-engine`` already holds fp32 engines to (an engine
  that passed its build parity must pass this). Measured, correct hosts: ONNX Runtime with 1 or 2
  threads, batch 1 or 16, the fused graph or not: 0 to 2e-7; graph optimizations off: logits 1e-6,
  cam 1.2e-6. Wrong hosts: weights perturbed by 0.1% (x(1 + 1e-3 N(0,1))): logits 2.3e-3 to 3.3e-3,
  cam 3.8e-3 to 8.3e-3; by 1%: 10x that; another CAM method (LayerCAM's graph for a Grad-CAM
  bundle): cam 0.45, weights 1.0. TF32 (10-bit mantissa), emulated by rounding the weights and
  the input, already reaches logits 9e-4: like the fp32 engines, a TF32 host is not held to fp32.
- ``class_index``, ``concept_ids``: exact (mismatch count 0), the same phrases in the same order.
- ``concept_scores`` (max abs, cosines): 5e-4 (correct hosts 6e-8; 1% weights 3.8e-3).
- ``end_to_end.*``: the same outputs from the host's own preprocessing, which may differ by the
  ``input`` tolerance. Measured when the self-test is built (:func:`_probes`): the stored inputs
  moved by one grey level (all values +1, all -1, a random third each +1/0/-1) through the
  reference graph; the tolerance is the larger of the graph tolerance and 2x the largest change
  (default bundle: logits 6e-2, cam 2.6e-2). Class and phrase ids stay exact: images whose class
  or phrases change under those probes, or whose top logit leads by less than 20x the logits
  tolerance, are not used (the next generated image is), so a correct host cannot flip them.

Hosts running reduced precision (fp16/bf16 GPU backends) get the numeric tolerances widened to
the engine parity's (2e-2, 5e-2; :func:`widened`); ``input`` and the ids stay as recorded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from textcam.errors import TextcamError, first_line
from textcam.runtime import concepts as _concepts
from textcam.runtime import images as _images
from textcam.runtime.bundle import Bundle
from textcam.runtime.comparison import Comparison, ComparisonReport

SELFTEST_FORMAT = "textcam-selftest"
SELFTEST_VERSION = 1
SELFTEST_SEED = 20261201
DEFAULT_IMAGES = 4
MAX_IMAGES = 256
IMAGE_SIZES = ((37, 53), (64, 64), (120, 200), (301, 17), (224, 224), (17, 301), (97, 131), (480, 360))
"""(height, width) of the first self-test images: down- and up-scaling, wide and tall, odd sizes."""

GRAPH_OUTPUTS = ("logits", "class_index", "cam", "channel_weights", "channel_activation")
CONCEPT_OUTPUTS = ("concept_ids", "concept_scores")
MEASURES = {
    "input": "max abs", "logits": "max rel", "class_index": "mismatches", "cam": "max abs",
    "channel_weights": "max rel", "channel_activation": "max rel", "concept_ids": "mismatches",
    "concept_scores": "max abs",
}
GRAPH_TOLERANCES = {
    "logits": 1e-3, "class_index": 0.0, "cam": 1e-3, "channel_weights": 1e-3, "channel_activation": 1e-3,
    "concept_ids": 0.0, "concept_scores": 5e-4,
}
REDUCED_PRECISION = {"fp16": 2e-2, "bf16": 5e-2}
"""Reduced-precision hosts: numeric tolerances widened to these (the engine parity's limits)."""
MARGIN_FACTOR = 20.0
"""An image is stable when its top logit leads by this many logits tolerances (relative)."""
END_TO_END = "end_to_end."
SENSITIVITY_FACTOR = 2.0
"""End-to-end tolerance = max(graph tolerance, this x the change a one-level input drift causes)."""
EXACT = ("class_index", "concept_ids")
_HINT = "re-run `textcam export` (or `textcam semantics`) to rebuild the self-test"


# ---- the images ----------------------------------------------------------------------------------

def selftest_images(count: int = DEFAULT_IMAGES) -> list[np.ndarray]:
    """``count`` deterministic uint8 [h, w, 3] RGB images (numpy only, seed :data:`SELFTEST_SEED`).

    Each is a smooth colour field (a few low-frequency waves and soft blobs per channel) with a
    mild texture on top (smoothed noise at a few pixels' scale, +-12 levels), so that a different
    resize filter shows in the pixels while the model's outputs are not on a knife edge. Sizes
    come from :data:`IMAGE_SIZES`, then from the seed.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_IMAGES:
        raise TextcamError(f"count={count!r}: expected the number of self-test images, 1 to {MAX_IMAGES}")
    rng = np.random.default_rng(SELFTEST_SEED)
    result = []
    for index in range(int(count)):
        if index < len(IMAGE_SIZES):
            height, width = IMAGE_SIZES[index]
        else:
            height, width = (int(v) for v in rng.integers(8, 400, size=2))
        result.append(_smooth_image(rng, height, width))
    return result


def _smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    y = (np.arange(height, dtype=np.float64) + 0.5) / height
    x = (np.arange(width, dtype=np.float64) + 0.5) / width
    yy, xx = np.meshgrid(y, x, indexing="ij")
    image = np.empty((height, width, 3), dtype=np.float64)
    base = rng.uniform(60, 190, size=3)
    for channel in range(3):
        field = np.full((height, width), base[channel])
        for _ in range(3):  # low-frequency waves
            fy, fx = rng.uniform(-2.5, 2.5, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            field += rng.uniform(15, 40) * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
        for _ in range(2):  # soft blobs
            cy, cx = rng.uniform(0.1, 0.9, size=2)
            radius = rng.uniform(0.12, 0.35)
            field += rng.uniform(-60, 60) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
        image[..., channel] = field
    image += 12.0 * _texture(rng, height, width)[..., None] * rng.uniform(0.6, 1.0, size=3)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator, height: int, width: int, cell: float = 3.0) -> np.ndarray:
    """Noise on a coarse grid (one value every ``cell`` pixels), bilinearly upsampled, in [-1, 1]."""
    gh, gw = math.ceil(height / cell) + 2, math.ceil(width / cell) + 2
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw))
    gy = np.arange(height) / cell
    gx = np.arange(width) / cell
    y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
    ty, tx = (gy - y0)[:, None], (gx - x0)[None, :]
    top = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
    bottom = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
    return top * (1 - ty) + bottom * ty


# ---- running a host -----------------------------------------------------------------------------

def _settings_dict(settings: _concepts.ConceptSettings) -> dict[str, Any]:
    return {"beta": settings.beta, "top_k": settings.top_k, "candidates": settings.candidates,
            "l1": settings.l1, "l2": settings.l2, "steps": settings.steps, "center": settings.center}


def _graph_and_concepts(explainer, batch: np.ndarray, settings: _concepts.ConceptSettings | None
                        ) -> dict[str, np.ndarray]:
    """The host's graph on ``batch`` (predicted classes), in ``explainer.batch_size`` chunks, and
    with ``settings`` its concept selection; only the self-test's outputs are kept."""
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(batch), explainer.batch_size):
        chunk = np.ascontiguousarray(batch[start:start + explainer.batch_size], dtype=np.float32)
        raw = explainer.runner.run(chunk, np.full(len(chunk), -1, dtype=np.int64))
        missing = [name for name in GRAPH_OUTPUTS if name not in raw]
        if missing:
            raise TextcamError(f"backend {explainer.backend!r}: the graph returned no {', '.join(missing)}; "
                               "it does not run the bundle's graph")
        part = {name: np.asarray(raw[name]) for name in GRAPH_OUTPUTS}
        if settings is not None:
            selection = _select(explainer, raw, settings)
            part["concept_ids"] = np.asarray(selection.ids, dtype=np.int64)
            part["concept_scores"] = np.asarray(selection.scores, dtype=np.float32)
        parts.append(part)
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _select(explainer, outputs: Mapping[str, np.ndarray], settings: _concepts.ConceptSettings):
    """The host's concept selection, with the self-test's settings whatever the host's own are."""
    store = explainer.semantics
    return _concepts.select_for_outputs(outputs, store.channel_semantics, store.text_embeddings, settings)


def _preprocess(images: list[np.ndarray], spec) -> np.ndarray:
    """The runtime's decoding and preprocessing of uint8 RGB arrays (as Explainer.explain), looked up in
    :mod:`textcam.runtime.images` at each call."""
    return np.stack([_images.preprocess(_images.decode(image), spec)[0] for image in images])


# ---- building -----------------------------------------------------------------------------------

def build_selftest(bundle: Bundle | str | Path, images: int = DEFAULT_IMAGES) -> tuple[bytes, dict[str, Any]]:
    """Run the reference host on self-test images and return (safetensors bytes, manifest fields).

    The reference host is this runtime: ``Explainer(bundle, backend="onnxruntime")`` on the CPU,
    the bundle's default concept settings. The images are the first ``images`` of
    :func:`selftest_images` (a few more are generated) whose answer is stable for this model: the
    predicted class leads by a margin, and neither the class nor the phrases change when the input
    drifts by one grey level (see :func:`_probes`); should too few be stable, the least unstable
    fill up. The fields are the manifest's ``selftest`` section without its file:
    ``{"images": N, "tolerances": {...}, "concepts": bool}``. Record them with
    :func:`textcam.runtime.bundle_update.update_bundle` and a
    :class:`textcam.runtime.manifest.SelftestSection`.
    """
    from safetensors.numpy import save

    from textcam.runtime.explainer import Explainer

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)) or not 1 <= images <= MAX_IMAGES:
        raise TextcamError(f"images={images!r}: expected the number of self-test images, 1 to {MAX_IMAGES}")
    pool = selftest_images(min(MAX_IMAGES, images + max(4, images)))
    # one copy of the weights: an export builds this right after its verification, with the
    # caller's model still in memory (ViT-L/16's export peaked here)
    explainer = Explainer(bundle, backend="onnxruntime", backend_options={"prepack_weights": False})
    try:
        settings = explainer.concept_settings if explainer.semantics is not None else None
        batch = _preprocess(pool, bundle.input)
        # the rest of the pool only when the first images are not all stable: most models' are, and
        # the graph runs four times per image (a large model's export spent half its time here)
        outputs = _graph_and_concepts(explainer, batch[:images], settings)
        probes = _probes(bundle, explainer, batch[:images], settings)
        chosen, unstable = _choose(outputs, probes, images)
        if unstable and len(batch) > images:
            rest = batch[images:]
            outputs = _joined(outputs, _graph_and_concepts(explainer, rest, settings))
            probes = [_joined(a, b) for a, b in zip(probes, _probes(bundle, explainer, rest, settings), strict=True)]
            chosen, unstable = _choose(outputs, probes, images)
    finally:
        explainer.close()
    pictures = [pool[i] for i in chosen]
    outputs = {name: value[chosen] for name, value in outputs.items()}
    probes = [{name: value[chosen] for name, value in probe.items()} for probe in probes]
    tolerances = {"input": input_tolerance(bundle.input)}
    tolerances.update({name: GRAPH_TOLERANCES[name] for name in outputs})
    for name in outputs:
        drift = max((_measure(name, outputs[name], probe[name]) for probe in probes), default=0.0)
        limit = max(GRAPH_TOLERANCES[name], 0.0 if name in EXACT else SENSITIVITY_FACTOR * drift)
        tolerances[END_TO_END + name] = float(f"{limit:.3g}")
    tensors: dict[str, np.ndarray] = {f"image_{i}": np.ascontiguousarray(p) for i, p in enumerate(pictures)}
    tensors["input"] = np.ascontiguousarray(batch[chosen], dtype=np.float32)
    for name, value in outputs.items():
        tensors[name] = np.ascontiguousarray(value, dtype=np.int64 if name in EXACT else np.float32)
    metadata = {"format": SELFTEST_FORMAT, "format_version": str(SELFTEST_VERSION),
                "model_sha256": bundle.model_sha256, "images": str(len(pictures)), "target_class": "-1",
                "seed": str(SELFTEST_SEED), "generated_indices": json.dumps([int(i) for i in chosen]),
                "unstable_images": str(unstable), "reference": "textcam.runtime, onnxruntime CPU, fp32"}
    if settings is not None:
        metadata["semantics_sha256"] = bundle.info.semantics.store.sha256
        metadata["concept_settings"] = json.dumps(_settings_dict(settings), sort_keys=True)
    fields = {"images": len(pictures), "tolerances": tolerances, "concepts": settings is not None}
    return save(tensors, metadata=metadata), fields


def input_tolerance(spec) -> float:
    """One grey level in normalized units (the worst channel), plus 1e-5 for float rounding."""
    return float(spec.scale / min(spec.std) + 1e-5)


def _probes(bundle: Bundle, explainer, batch: np.ndarray, settings) -> list[dict[str, np.ndarray]]:
    """The outputs for inputs drifted by one grey level: all values +1, all -1, and a seeded random
    third each of +1, 0 and -1 (what a host within the ``input`` tolerance may feed its graph)."""
    level = (np.float32(bundle.input.scale) / np.asarray(bundle.input.std, np.float32))[None, :, None, None]
    rng = np.random.default_rng(SELFTEST_SEED + 1)
    steps = (np.ones_like(batch), -np.ones_like(batch), rng.integers(-1, 2, size=batch.shape).astype(np.float32))
    return [_graph_and_concepts(explainer, (batch + step * level).astype(np.float32), settings) for step in steps]


def _joined(first: dict[str, np.ndarray], then: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([first[name], then[name]]) for name in first}


def _choose(outputs: dict[str, np.ndarray], probes: list[dict[str, np.ndarray]], count: int
            ) -> tuple[np.ndarray, int]:
    """The first ``count`` stable images (indices, in order), and how many unstable ones had to fill up."""
    logits = outputs["logits"].astype(np.float64)
    top = np.sort(logits, axis=1)
    margin = (top[:, -1] - top[:, -2]) / np.maximum(np.abs(logits).max(axis=1), 1e-30) if logits.shape[1] > 1 \
        else np.ones(len(logits))
    stable = margin > MARGIN_FACTOR * GRAPH_TOLERANCES["logits"]
    for probe in probes:
        for name in EXACT:
            if name in outputs:
                stable &= (probe[name] == outputs[name]).reshape(len(logits), -1).all(axis=1)
    ranked = sorted(range(len(logits)), key=lambda i: (not stable[i], 0 if stable[i] else -margin[i], i))
    chosen = np.array(sorted(ranked[:count]), dtype=np.int64)
    return chosen, int(np.count_nonzero(~stable[chosen]))


# ---- comparing ----------------------------------------------------------------------------------

def _measure(name: str, reference: np.ndarray, candidate: np.ndarray) -> float:
    """The row's worst value: mismatch count, max abs, or per-image max rel (see the module docstring)."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        return math.inf
    if MEASURES[name] == "mismatches":
        return float(np.count_nonzero(reference != candidate))
    ref = reference.astype(np.float64)
    diff = np.abs(candidate.astype(np.float64) - ref)
    if not np.isfinite(diff).all():
        return math.inf
    if diff.size == 0:
        return 0.0
    if MEASURES[name] == "max abs":
        return float(diff.max())
    rows = len(ref)
    scale = np.maximum(np.abs(ref).reshape(rows, -1).max(axis=1), 1e-30)
    return float((diff.reshape(rows, -1).max(axis=1) / scale).max())


@dataclass(frozen=True)
class SelftestReport(ComparisonReport):
    """The self-test's rows (:class:`~textcam.runtime.comparison.Comparison`, grouped by stage:
    ``preprocess``, ``graph`` on the stored input, ``end-to-end`` on the stored images)."""

    bundle: str
    backend: str
    precision: str
    images: int
    rows: tuple[Comparison, ...]

    NAME_KEY: ClassVar[str] = "output"
    GROUP_KEY: ClassVar[str | None] = "stage"

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "backend": self.backend, "precision": self.precision, "images": self.images,
                **super().to_dict()}


def compare_outputs(stage: str, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    tolerances: Mapping[str, float]) -> list[Comparison]:
    """Rows for every output in ``reference`` (in the self-test's order), against ``tolerances``
    (keys as in the manifest; ``end-to-end`` rows use the ``end_to_end.`` keys). A missing output or
    one of another shape is ``inf`` (fails)."""
    rows = []
    prefix = END_TO_END if stage == "end-to-end" else ""
    for name in ("input", *GRAPH_OUTPUTS, *CONCEPT_OUTPUTS):
        if name not in reference:
            continue
        key = prefix + name if name != "input" else "input"
        value = _measure(name, reference[name], candidate[name]) if name in candidate else math.inf
        rows.append(Comparison(name, MEASURES[name], value, float(tolerances[key]), group=stage))
    return rows


# ---- reading and running ------------------------------------------------------------------------

@dataclass(frozen=True)
class SelftestData:
    """A validated self-test file: the images, the expected outputs, the settings and tolerances."""

    path: Path
    images: list[np.ndarray]
    expected: dict[str, np.ndarray]
    """``input`` and every output, by name."""
    tolerances: dict[str, float]
    settings: _concepts.ConceptSettings | None


def read_selftest(bundle: Bundle) -> SelftestData:
    """The bundle's self-test file, checked (checksum, format, and every tensor's dtype and shape
    against the manifest), or a one-line TextcamError naming the file and what to do."""
    section = bundle.info.selftest
    if section is None:
        raise TextcamError(f"{bundle.path}: the bundle has no self-test (built by an older textcam); "
                           "re-run `textcam export` to add one")
    path = bundle.selftest_path  # size and sha256 checked here
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise TextcamError(f"{path}: not a readable safetensors file ({first_line(exc)}); {_HINT}") from None

    def fail(problem: str) -> TextcamError:
        return TextcamError(f"{path}: {problem}; {_HINT}")

    if metadata.get("format") != SELFTEST_FORMAT:
        raise fail(f"not a textcam self-test (format is not {SELFTEST_FORMAT!r})")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) < 1:
        raise fail("has no valid format_version")
    if int(version) > SELFTEST_VERSION:
        raise TextcamError(f"{path}: self-test format {version} is newer than this textcam reads "
                           f"({SELFTEST_VERSION}); upgrade textcam")
    if metadata.get("model_sha256") != bundle.model_sha256:
        raise fail(f"was computed for another graph (model_sha256 differs from {bundle.info.model.graph.file}'s)")
    count, info = section.images, bundle.info
    spec, classes, channels = info.input, info.model.num_classes, info.target_layer.channels

    def tensor(name: str, dtype, shape: tuple[int | None, ...]) -> np.ndarray:
        if name not in arrays:
            raise fail(f"lacks the tensor {name!r}")
        value = arrays[name]
        wanted = "[" + ", ".join("k" if s is None else str(s) for s in shape) + "]"
        if value.dtype != dtype or value.ndim != len(shape) or any(
                s is not None and s != v for s, v in zip(shape, value.shape, strict=True)):
            raise fail(f"tensor {name!r} is {value.dtype} {list(value.shape)}; expected {np.dtype(dtype)} {wanted}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise fail(f"tensor {name!r} holds NaN or Inf")
        return value

    pictures = []
    for index in range(count):
        image = tensor(f"image_{index}", np.uint8, (None, None, 3))
        if 0 in image.shape:
            raise fail(f"tensor 'image_{index}' is empty ({list(image.shape)})")
        pictures.append(image)
    if f"image_{count}" in arrays:
        raise fail(f"holds more images than the manifest's selftest.images ({count})")
    expected = {
        "input": tensor("input", np.float32, (count, 3, spec.height, spec.width)),
        "logits": tensor("logits", np.float32, (count, classes)),
        "class_index": tensor("class_index", np.int64, (count,)),
        "cam": tensor("cam", np.float32, (count, spec.height, spec.width)),
        "channel_weights": tensor("channel_weights", np.float32, (count, channels)),
        "channel_activation": tensor("channel_activation", np.float32, (count, channels)),
    }
    if ((expected["class_index"] < 0) | (expected["class_index"] >= classes)).any():
        raise fail(f"tensor 'class_index' holds a class outside 0..{classes - 1}")
    settings = None
    if section.concepts:
        if info.semantics is None:
            raise fail("has concepts but the bundle has no channel semantics")
        if metadata.get("semantics_sha256") != info.semantics.store.sha256:
            raise fail(f"was computed with other channel semantics (semantics_sha256 differs from "
                       f"{info.semantics.store.file}'s)")
        ids = tensor("concept_ids", np.int64, (count, None))
        expected["concept_ids"] = ids
        expected["concept_scores"] = tensor("concept_scores", np.float32, (count, ids.shape[1]))
        vocabulary = info.semantics.vocabulary_size
        if ids.shape[1] == 0 or ((ids < 0) | (ids >= vocabulary)).any():
            raise fail(f"tensor 'concept_ids' holds ids outside the vocabulary (0..{vocabulary - 1})")
        try:
            stored = json.loads(metadata["concept_settings"])
            if not isinstance(stored, dict):
                raise ValueError("not an object")
            settings = _concepts.ConceptSettings.resolve(stored)
        except (KeyError, ValueError, TypeError, TextcamError) as exc:
            raise fail(f"damaged concept_settings metadata ({first_line(exc)})") from None
        listed = min(settings.top_k, settings.candidates, vocabulary)
        if ids.shape[1] != listed:
            raise fail(f"tensor 'concept_ids' has {ids.shape[1]} phrases per image; its concept_settings list "
                       f"{listed}")
    elif "concept_ids" in arrays:
        raise fail("has concepts but the manifest's selftest.concepts is false")
    needed = ["input", *(n for n in expected if n != "input")]
    needed += [END_TO_END + n for n in expected if n != "input"]
    missing = [n for n in needed if n not in section.tolerances]
    if missing:
        raise TextcamError(f"{bundle.path / 'manifest.json'}: 'selftest.tolerances' lacks {', '.join(missing)}; "
                           f"{_HINT}")
    return SelftestData(path, pictures, expected, dict(section.tolerances), settings)


def host_precision(explainer) -> str:
    """The precision the host's graph runs in: the runner's (GPU backends, engines), else fp32."""
    runner = explainer.runner
    precision = getattr(runner, "precision", None) or getattr(getattr(runner, "entry", None), "precision", None)
    return precision if isinstance(precision, str) else "fp32"


def widened(tolerances: Mapping[str, float], precision: str) -> dict[str, float]:
    """The tolerances for a host of ``precision``: the recorded (fp32) ones, numeric outputs widened
    to :data:`REDUCED_PRECISION` for fp16/bf16; ``input``, class and phrase ids stay as recorded."""
    floor = REDUCED_PRECISION.get(precision)
    if floor is None:
        return dict(tolerances)
    keep = ("input", *EXACT, *(END_TO_END + name for name in EXACT))
    return {k: v if k in keep else max(v, floor) for k, v in tolerances.items()}


def run_selftest(bundle: Bundle | str | Path, backend: str = "onnxruntime",
                 backend_options: Mapping[str, object] | None = None, *, explainer=None) -> SelftestReport:
    """Hold a host to the bundle's self-test; returns the report (``report.passed``, ``report.table()``).

    The host is ``explainer`` when given (its backend and options; ``bundle`` may then be None),
    else ``Explainer(bundle, backend=backend, backend_options=backend_options)``. Two runs:
    the stored ``input`` through the graph and concept selection (``graph`` rows), and the stored
    images through the host's preprocessing, graph and selection (``preprocess`` and
    ``end-to-end`` rows). A bundle without a self-test, or a damaged file, raises TextcamError.
    """
    from textcam.runtime.explainer import Explainer

    if explainer is not None:
        bundle = explainer.bundle
    elif not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    data = read_selftest(bundle)
    own = explainer is None
    host = Explainer(bundle, backend=backend, backend_options=backend_options) if own else explainer
    if host.native:  # the C++ core runs its own self-test end to end (textcam.runtime.native)
        try:
            return host.selftest()
        finally:
            if own:
                host.close()
    try:
        if data.settings is not None and host.semantics is None:
            raise TextcamError(f"{bundle.path}: the self-test checks concepts but the host loaded no semantics")
        return host_report(bundle, data, host.backend, host_precision(host),
                           lambda batch: _graph_and_concepts(host, batch, data.settings))
    finally:
        if own:
            host.close()


def host_report(bundle: Bundle, data: SelftestData, host: str, precision: str,
                run: Callable[[np.ndarray], Mapping[str, np.ndarray]]) -> SelftestReport:
    """The self-test of a host that ``run`` reaches: ``run(batch)`` takes preprocessed float32
    [N, 3, H, W] images and returns the graph's outputs for the predicted classes, with
    ``concept_ids``/``concept_scores`` when the self-test checks concepts (``data.settings``).
    Hosts outside this process (a Triton server) are held to the bundle this way."""
    graph = run(data.expected["input"])
    batch = _preprocess(data.images, bundle.input)
    end_to_end = run(batch)
    expected = data.expected
    tolerances = widened(data.tolerances, precision)
    outputs = {k: v for k, v in expected.items() if k != "input"}
    rows = compare_outputs("preprocess", {"input": expected["input"]}, {"input": batch}, tolerances)
    rows += compare_outputs("graph", outputs, graph, tolerances)
    rows += compare_outputs("end-to-end", outputs, end_to_end, tolerances)
    return SelftestReport(str(bundle.path), host, precision, len(data.images), tuple(rows))
