"""Does a built engine compute what ``model.onnx`` computes? Checked right after the build.

Both sides get the same fresh random batches (a seed unrelated to export's), once with explicit
random classes, so the maps and weights compare like with like even where a reduced-precision
forward pass flips a near-tied prediction, and once with -1 (the predicted class) to report how
often the predictions agree. Pure-noise inputs give near-tied logits, so that agreement is
reported but not gated; the GPU tests gate it on real images.

The reference is ONNX Runtime on the CPU running ``model.onnx`` (fp32). Tolerances per
precision: the maps (``cam``, values in [0, 1]) by absolute error; ``logits``,
``channel_weights`` and ``channel_activation`` by the largest error relative to the largest
reference magnitude (gradients are small numbers; an absolute limit would mean nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from textcam.errors import TextcamError
from textcam.runtime.comparison import Comparison, ComparisonReport

Runner = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
PARITY_SEED = 6_2026
PARITY_BATCHES = (1, 4)
# (cam abs, logits rel, channel_weights rel, channel_activation rel) per precision
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"cam": 1e-3, "logits": 1e-3, "channel_weights": 1e-3, "channel_activation": 1e-3},
    "fp16": {"cam": 2e-2, "logits": 2e-2, "channel_weights": 2e-2, "channel_activation": 2e-2},
    "bf16": {"cam": 5e-2, "logits": 5e-2, "channel_weights": 5e-2, "channel_activation": 5e-2},
}


@dataclass(frozen=True)
class ParityReport(ComparisonReport):
    """The parity rows (:class:`~textcam.runtime.comparison.Comparison`) of one engine build."""

    precision: str
    batch_sizes: tuple[int, ...]
    seed: int
    rows: tuple[Comparison, ...]
    reference: str = "ONNX Runtime (CPU), model.onnx"

    NAME_KEY: ClassVar[str] = "check"

    def table(self) -> str:
        """The report as one aligned text table under a title line (what ``textcam build-engine`` prints)."""
        title = (f"parity vs {self.reference}: {self.precision}, batches {', '.join(map(str, self.batch_sizes))}, "
                 f"seed {self.seed}")
        return f"{title}\n{super().table()}"

    def summary(self) -> str:
        """One line: passed, or the checks that failed with their values."""
        return super().summary(f"parity {self.precision}" if self.passed else "parity")

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "precision": self.precision,
            "batch_sizes": list(self.batch_sizes),
            "seed": self.seed,
            **super().to_dict(),
        }


def _abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    if reference.shape != candidate.shape:
        return float("inf")
    return float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)), initial=0.0))


def _relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    scale = float(np.max(np.abs(reference.astype(np.float64)), initial=0.0))
    return _abs_error(reference, candidate) / max(scale, 1e-30)


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], precision: str,
                    predicted_reference: np.ndarray | None = None,
                    predicted_candidate: np.ndarray | None = None) -> tuple[Comparison, ...]:
    """The parity rows for outputs computed for the same inputs and explicit classes."""
    if precision not in TOLERANCES:
        raise TextcamError(f"precision {precision!r}: no parity tolerances defined")
    limits = TOLERANCES[precision]
    missing = [name for name in ("logits", "class_index", "cam") if name not in candidate]
    if missing:
        raise TextcamError(f"engine outputs lack {', '.join(missing)}")
    rows = [
        Comparison("logits", "max rel", _relative_error(reference["logits"], candidate["logits"]), limits["logits"]),
        Comparison("cam (given classes)", "max abs", _abs_error(reference["cam"], candidate["cam"]), limits["cam"]),
    ]
    for name in ("channel_weights", "channel_activation"):
        if name in reference and name in candidate:
            rows.append(Comparison(name, "max rel", _relative_error(reference[name], candidate[name]), limits[name]))
    same = float(np.mean(reference["class_index"] == candidate["class_index"]))
    rows.append(Comparison("class_index (given classes)", "agreement", same, 1.0))
    if predicted_reference is not None and predicted_candidate is not None:
        agree = float(np.mean(predicted_reference == predicted_candidate))
        rows.append(Comparison("predicted class (noise)", "agreement", agree, None))
    return tuple(rows)


def check_parity(reference: Runner, candidate: Runner, input_hw: tuple[int, int], num_classes: int, precision: str,
                 batch_sizes: tuple[int, ...] = PARITY_BATCHES, seed: int = PARITY_SEED) -> ParityReport:
    """Run both on the same fresh random batches and compare (see the module docstring)."""
    rng = np.random.default_rng(seed)
    collected: dict[str, list[dict[str, np.ndarray]]] = {"ref": [], "cand": []}
    predicted: dict[str, list[np.ndarray]] = {"ref": [], "cand": []}
    for batch in batch_sizes:
        images = rng.standard_normal((batch, 3, *input_hw)).astype(np.float32)
        classes = rng.integers(0, num_classes, batch).astype(np.int64)
        collected["ref"].append(reference(images, classes))
        collected["cand"].append(candidate(images, classes))
        unchosen = np.full(batch, -1, dtype=np.int64)
        predicted["ref"].append(reference(images, unchosen)["class_index"])
        predicted["cand"].append(candidate(images, unchosen)["class_index"])

    def joined(side: str) -> dict[str, np.ndarray]:
        names = collected[side][0].keys()
        return {name: np.concatenate([part[name] for part in collected[side]]) for name in names}

    rows = compare_outputs(joined("ref"), joined("cand"), precision, np.concatenate(predicted["ref"]),
                           np.concatenate(predicted["cand"]))
    return ParityReport(precision, tuple(batch_sizes), seed, rows)
