"""TensorRT engines recorded in a bundle: the manifest entries, the batch profile, and which engine fits here.

A serialized engine only runs on the GPU architecture and the exact TensorRT version that built
it, so a bundle can hold several (``engines/*.plan``), one per (compute capability, TensorRT
version, precision), each described by an entry in ``manifest["engines"]``. This module is
torch-free and TensorRT-free: it reads and checks those entries, picks the one that matches the
machine, and words the rebuild command when none does. ``textcam build-engine`` writes them
(:mod:`textcam.engines.build`).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from textcam.errors import TextcamError, did_you_mean

ENGINES_DIR = "engines"
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_MIN_BATCH, DEFAULT_OPT_BATCH, DEFAULT_MAX_BATCH = 1, 8, 32
DEFAULT_CONCURRENCY = 2
MAX_BATCH_LIMIT = 4096  # a typo guard: larger profiles only waste device memory


def check_precision(value: str) -> str:
    """``value`` if it names a supported precision, else a one-line TextcamError listing them."""
    if value not in PRECISIONS:
        raise TextcamError(
            f"precision {value!r}: expected one of {', '.join(PRECISIONS)}{did_you_mean(str(value), PRECISIONS)}"
        )
    return value


MIN_COMPUTE_CAPABILITY = {"bf16": (8, 0)}
"""The oldest GPU architecture with the precision's tensor-core arithmetic (bf16: Ampere, sm80); on an
older GPU TensorRT cannot build a strongly typed bf16 network, so the build is refused before it starts."""


def check_precision_on_gpu(precision: str, compute_capability: str, gpu_name: str) -> str:
    """``precision`` if this GPU can run it, else one line naming what the GPU is and what it can run."""
    needed = MIN_COMPUTE_CAPABILITY.get(precision)
    have = tuple(int(part) for part in compute_capability.split(".")[:2])
    if needed and have < needed:
        can = [p for p in PRECISIONS if have >= MIN_COMPUTE_CAPABILITY.get(p, (0, 0))]
        raise TextcamError(
            f"precision {precision!r}: {gpu_name} (compute capability {compute_capability}) has no {precision} "
            f"arithmetic (it needs {needed[0]}.{needed[1]} or newer); this GPU runs {', '.join(can)}"
        )
    return precision


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (``min``..``max``) and the one it was tuned for (``opt``)."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        values = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise TextcamError(f"batch profile {self.describe()}: batch sizes must be positive integers")
        if self.max > MAX_BATCH_LIMIT:
            raise TextcamError(f"--max-batch {self.max}: at most {MAX_BATCH_LIMIT} images per engine call")
        if not self.min <= self.opt <= self.max:
            raise TextcamError(
                f"--min-batch {self.min} --opt-batch {self.opt} --max-batch {self.max}: "
                "expected min <= opt <= max"
            )

    @classmethod
    def resolve(cls, min_batch: int | None = None, opt_batch: int | None = None,
                max_batch: int | None = None) -> BatchProfile:
        """Fill what is not given: min 1, max 32 (or the largest given), opt 8 clamped into [min, max].

        Values that are given are validated as given (min <= opt <= max), never silently changed.
        """
        for flag, value in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise TextcamError(f"{flag} {value!r}: expected a positive integer")
        low = DEFAULT_MIN_BATCH if min_batch is None else min_batch
        high = max(DEFAULT_MAX_BATCH, low, opt_batch or 0) if max_batch is None else max_batch
        opt = min(max(DEFAULT_OPT_BATCH, low), high) if opt_batch is None else opt_batch
        return cls(low, opt, high)

    @classmethod
    def from_dict(cls, value: Any) -> BatchProfile:
        try:
            return cls(int(value["min"]), int(value["opt"]), int(value["max"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TextcamError(f"batch profile {value!r}: expected {{min, opt, max}} ({exc})") from None

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.min}-{self.opt}-{self.max}"

    def chunks(self, count: int) -> list[tuple[int, int, int]]:
        """Split ``count`` images into runs the engine accepts: (start, stop, batch to run).

        Runs hold at most ``max`` images; a run smaller than ``min`` (only possible when min > 1)
        is padded up to ``min`` by the runner, so the batch to run can exceed stop - start.
        """
        runs = []
        for start in range(0, count, self.max):
            stop = min(start + self.max, count)
            runs.append((start, stop, max(stop - start, self.min)))
        return runs


@dataclass(frozen=True)
class EngineEntry:
    """One engine as the manifest records it (``manifest["engines"][i]``)."""

    file: str  # relative to the bundle, e.g. engines/fp16-sm90-trt10.8.0.43.plan
    precision: str
    tensorrt: str  # the exact TensorRT version that built it
    compute_capability: str  # "major.minor" of the GPU it was built on
    profile: BatchProfile
    concurrency: int = 1  # optimization profiles = execution contexts that may run at once
    gpu: str = ""
    onnx: str = "model.onnx"  # the graph it was built from (a reduced-precision copy for fp16/bf16)
    onnx_sha256: str | None = None
    model_sha256: str | None = None  # sha256 of the bundle's model.onnx at build time
    sha256: str | None = None
    size_bytes: int | None = None
    built: str = ""
    workspace_gb: float | None = None
    parity: dict | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes engines interchangeable: one entry per key is kept."""
        return (self.compute_capability, self.tensorrt, self.precision)

    def describe(self) -> str:
        return (f"{self.precision}, sm{self.compute_capability.replace('.', '')}, TensorRT {self.tensorrt}, "
                f"batch {self.profile.describe()}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = self.profile.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest.json") -> EngineEntry:
        if not isinstance(data, dict):
            raise TextcamError(f"{where}: an 'engines' entry is not an object; rebuild the engine")
        missing = [k for k in ("file", "precision", "tensorrt", "compute_capability", "profile") if k not in data]
        if missing:
            raise TextcamError(f"{where}: engine entry lacks {', '.join(missing)}; rebuild the engine")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["profile"] = BatchProfile.from_dict(data["profile"])
        values["concurrency"] = int(data.get("concurrency", 1))
        return cls(**values)


def engine_file_name(precision: str, compute_capability: str, tensorrt_version: str) -> str:
    """``fp16-sm90-trt10.8.0.43.plan``: the key spelled as a file name (one file per key)."""
    check_precision(precision)
    arch = compute_capability.replace(".", "")
    if not arch.isdigit():
        raise TextcamError(f"compute capability {compute_capability!r}: expected major.minor, e.g. 9.0")
    version = "".join(c if c.isalnum() or c in "._-" else "_" for c in tensorrt_version)
    return f"{precision}-sm{arch}-trt{version}.plan"


def reduced_graph_name(precision: str) -> str:
    """The reduced-precision copy of ``model.onnx`` kept beside the engines (``model.fp16.onnx``)."""
    if check_precision(precision) == "fp32":
        raise TextcamError("fp32 needs no reduced-precision copy of the graph: it is model.onnx")
    return f"model.{precision}.onnx"


def engine_entries(manifest: dict[str, Any], where: str = "manifest.json") -> list[EngineEntry]:
    raw = manifest.get("engines") or []
    if not isinstance(raw, list):
        raise TextcamError(f"{where}: 'engines' is not a list; rebuild the engines")
    return [EngineEntry.from_dict(item, where) for item in raw]


def replace_entry(entries: Iterable[EngineEntry], new: EngineEntry) -> list[EngineEntry]:
    """The entries with ``new`` in place of any that has its key (same GPU arch, TensorRT, precision)."""
    return [e for e in entries if e.key != new.key] + [new]


def rebuild_command(bundle_path: Path | str, precision: str, profile: BatchProfile | None = None,
                    concurrency: int | None = None) -> str:
    """The exact ``textcam build-engine`` command line that builds a matching engine here."""
    profile = profile or BatchProfile.resolve()
    command = (f"textcam build-engine {shlex.quote(str(bundle_path))} --precision {precision} "
               f"--min-batch {profile.min} --opt-batch {profile.opt} --max-batch {profile.max}")
    if concurrency and concurrency != DEFAULT_CONCURRENCY:
        command += f" --concurrency {concurrency}"
    return command


def choose_engine(
    bundle_path: Path | str,
    manifest: dict[str, Any],
    compute_capability: str,
    tensorrt_version: str,
    precision: str | None = None,
) -> EngineEntry:
    """The engine built for this GPU architecture and TensorRT version (and ``precision`` if given).

    With ``precision=None`` the first match in ``PRECISIONS`` order wins (fp32 first: it is the one
    that reproduces the ONNX reference). Every failure is one line ending in the exact
    ``textcam build-engine`` command that would make a matching engine here.
    """
    if precision is not None:
        check_precision(precision)
    entries = engine_entries(manifest, f"{bundle_path}/manifest.json")
    wanted = precision or min((e.precision for e in entries), key=PRECISIONS.index, default="fp32")
    model_sha = (manifest.get("model") or {}).get("sha256")
    fresh = [e for e in entries if e.model_sha256 in (None, model_sha)]
    here = [e for e in fresh if e.compute_capability == compute_capability and e.tensorrt == tensorrt_version]
    if precision is not None:
        here = [e for e in here if e.precision == precision]
    if here:
        return min(here, key=lambda e: PRECISIONS.index(e.precision))
    template = next((e for e in entries if e.precision == wanted), entries[0] if entries else None)
    hint = rebuild_command(bundle_path, wanted, template.profile if template else None,
                           template.concurrency if template else None)
    machine = f"this machine has sm{compute_capability.replace('.', '')} with TensorRT {tensorrt_version}"
    if not entries:
        raise TextcamError(f"{bundle_path}: the bundle has no TensorRT engine; build one with `{hint}`")
    if not fresh:
        raise TextcamError(
            f"{bundle_path}: its engines were built from another model.onnx (re-exported since); rebuild with `{hint}`"
        )
    built = "; ".join(e.describe() for e in fresh)
    what = f"no {precision} engine" if precision else "no engine"
    raise TextcamError(f"{bundle_path}: {what} for this GPU: the bundle has {built}; {machine}; "
                       f"rebuild with `{hint}`")
