"""``textcam build-engine``: the bundle's joint graph as a TensorRT engine for this GPU.

Steps: (1) for fp16/bf16, write the reduced-precision copy of the graph beside the engines
(:mod:`textcam.engines.precision`: forward pass reduced, backward pass and CAM in fp32); (2) parse
it into a strongly typed network and build with one optimization profile per concurrent
execution context (``concurrency``), all with the same dynamic-batch range, an optional
workspace limit and an optional timing cache file that later builds reuse; (3) run the engine
and ONNX Runtime (CPU) on fresh random inputs and compare (:mod:`textcam.engines.parity`);
(4) only if that passes, move the engine to ``engines/<precision>-sm<arch>-trt<version>.plan``
and record it in the manifest, replacing an entry with the same (GPU arch, TensorRT version,
precision).

TensorRT 10 and 11 differ here in one respect: 11 removed the FP16/BF16 builder flags and builds
every network strongly typed (its STRONGLY_TYPED creation flag is accepted and ignored); 10 still
has the flags, but they must not be set on a strongly typed network. So the same code serves
both: request STRONGLY_TYPED, never set a precision flag, put precision in the graph. fp32
engines clear TF32 (on by default for fp32 layers on Ampere and later), whose 10-bit mantissa
would miss the 1e-3 parity target.

Needs TensorRT and a CUDA binding, not torch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from textcam.engines.entries import (
    DEFAULT_CONCURRENCY,
    ENGINES_DIR,
    BatchProfile,
    EngineEntry,
    check_precision,
    check_precision_on_gpu,
    engine_file_name,
    reduced_graph_name,
    replace_entry,
)
from textcam.engines.graph_surgery import extract_logits_graph
from textcam.engines.parity import ParityReport, check_parity
from textcam.engines.precision import PrecisionReport, write_reduced_graph
from textcam.errors import TextcamError, first_line
from textcam.runtime.backends import tensorrt_runner
from textcam.runtime.backends.cuda_memory import DeviceMemory, open_device_memory
from textcam.runtime.bundle import Bundle
from textcam.runtime.bundle_files import write_file_atomic
from textcam.runtime.bundle_update import update_bundle

MAX_CONCURRENCY = 16


class ParityFailure(TextcamError):
    """The engine was built but does not match ONNX Runtime; nothing was recorded."""

    def __init__(self, report: ParityReport):
        super().__init__(f"{report.summary()}; the engine was not saved")
        self.report = report


@dataclass(frozen=True)
class BuildSettings:
    precision: str
    profile: BatchProfile
    concurrency: int = DEFAULT_CONCURRENCY
    workspace_gb: float | None = None
    timing_cache: Path | None = None

    def __post_init__(self):
        check_precision(self.precision)
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise TextcamError(f"--concurrency {self.concurrency}: expected 1 to {MAX_CONCURRENCY}")
        if self.workspace_gb is not None and not self.workspace_gb > 0:
            raise TextcamError(f"--workspace-gb {self.workspace_gb}: expected a positive number of GiB")
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise TextcamError(f"--timing-cache {self.timing_cache}: is a directory; give a file path")


@dataclass(frozen=True)
class BuildResult:
    entry: EngineEntry
    path: Path
    parity: ParityReport
    precision_report: PrecisionReport | None
    build_s: float


def profile_shapes(shape: tuple[int, ...], profile: BatchProfile, name: str) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of an input whose first dimension is the dynamic batch."""
    if not shape or shape[0] != -1 or any(d < 0 for d in shape[1:]):
        raise TextcamError(f"graph input {name}: shape {tuple(shape)}; expected a dynamic batch and fixed other sizes")
    return tuple((batch, *shape[1:]) for batch in (profile.min, profile.opt, profile.max))


def serialize_engine(onnx_path: Path, settings: BuildSettings, memory: DeviceMemory,
                     log: Callable[[str], None] = lambda _m: None) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build it; the serialized plan."""
    trt = tensorrt_runner.import_tensorrt()  # looked up per call: tests replace it with a fake
    logger = trt.Logger(trt.Logger.WARNING)
    with memory.activate():
        builder = trt.Builder(logger)
        flags = 0
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is not None:  # TensorRT 10: opt in; 11: always on, the flag is accepted and ignored
            flags |= 1 << int(strongly_typed)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            detail = first_line(errors[0].desc()) if errors else "no detail"
            node = f" at node {errors[0].node_name()}" if errors and hasattr(errors[0], "node_name") else ""
            raise TextcamError(f"{onnx_path}: TensorRT's ONNX parser rejects the graph{node}: {detail}")
        config = builder.create_builder_config()
        if settings.workspace_gb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gb * (1 << 30)))
        if settings.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        for _ in range(settings.concurrency):  # one profile per execution context that may run at once
            profile = builder.create_optimization_profile()
            for tensor in inputs:
                low, opt, high = profile_shapes(tuple(tensor.shape), settings.profile, tensor.name)
                profile.set_shape(tensor.name, low, opt, high)
            config.add_optimization_profile(profile)
        cache_path = Path(settings.timing_cache) if settings.timing_cache else None
        cached = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
        cache = config.create_timing_cache(cached)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            log(f"timing cache {cache_path} is from another GPU or TensorRT version; starting an empty one")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TextcamError(f"{onnx_path}: TensorRT could not build the engine (see its log above); a larger "
                               "--workspace-gb or a smaller --max-batch may help")
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def record_engine(bundle_path: Path, entry: EngineEntry) -> None:
    """Add ``entry`` (its files already in the bundle) to the manifest, replacing one with the same key."""
    with update_bundle(bundle_path) as update:
        update.manifest = update.manifest.replace(engines=tuple(replace_entry(update.manifest.engines, entry)))


def build_engine(
    bundle: str | Path | Bundle,
    precision: str = "fp32",
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gb: float | None = None,
    timing_cache: str | Path | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    device: int = 0,
    allocator: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build, check and record a TensorRT engine for ``bundle`` on this machine's GPU (see the module doc)."""
    from textcam.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
    from textcam.runtime.backends.tensorrt_runner import TensorRTRunner

    log = progress or (lambda _message: None)
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    settings = BuildSettings(check_precision(precision), BatchProfile.resolve(min_batch, opt_batch, max_batch),
                             concurrency, workspace_gb, Path(timing_cache) if timing_cache else None)
    trt = tensorrt_runner.import_tensorrt()  # looked up per call: tests replace it with a fake
    memory = open_device_memory(allocator, device)
    gpu = memory.info()
    check_precision_on_gpu(settings.precision, gpu.compute_capability, gpu.name)
    started = time.perf_counter()
    model_sha = opened.model_sha256
    with update_bundle(opened.path) as update:
        reduced = None
        onnx_path = opened.model_path
        onnx_ref = None
        if settings.precision != "fp32":
            stem = reduced_graph_name(settings.precision).removesuffix(".onnx")
            staged_onnx = update.staging_path(stem, ".onnx", ENGINES_DIR)
            log(f"writing the {settings.precision} graph (forward pass reduced, gradients fp32)")
            reduced = write_reduced_graph(opened.model_path, staged_onnx, settings.precision, model_sha)
            onnx_ref = update.adopt(staged_onnx, stem, ".onnx")
            onnx_path = opened.path / onnx_ref.file
        log(f"building a {settings.precision} engine on {gpu.name} (sm{gpu.compute_capability.replace('.', '')}, "
            f"TensorRT {trt.__version__}), batch {settings.profile.describe()}, {settings.concurrency} profile(s)")
        plan = serialize_engine(onnx_path, settings, memory, log)
        stem = engine_file_name(settings.precision, gpu.compute_capability, trt.__version__).removesuffix(".plan")
        staging = update.staging_path(stem, ".plan", ENGINES_DIR)
        staging.write_bytes(plan)
        build_s = time.perf_counter() - started
        log("checking the engine against ONNX Runtime (CPU) on fresh random inputs")
        reference = OnnxRuntimeRunner(opened)
        candidate = TensorRTRunner(opened, engine=staging, allocator=allocator, device=device)
        try:
            report = check_parity(reference.run, candidate.run, (opened.input.height, opened.input.width),
                                  len(opened.classes), settings.precision)
        finally:
            candidate.close()
        if not report.passed:
            raise ParityFailure(report)
        plan_ref = update.adopt(staging, stem, ".plan")
        entry = EngineEntry(
            file=plan_ref.file,
            precision=settings.precision,
            tensorrt=trt.__version__,
            compute_capability=gpu.compute_capability,
            profile=settings.profile,
            concurrency=settings.concurrency,
            gpu=gpu.name,
            onnx=onnx_ref.file if onnx_ref else opened.info.model.graph.file,
            onnx_sha256=onnx_ref.sha256 if onnx_ref else model_sha,
            model_sha256=model_sha,
            sha256=plan_ref.sha256,
            size_bytes=plan_ref.size_bytes,
            built=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            workspace_gb=settings.workspace_gb,
            parity=report.to_dict(),
        )
        update.manifest = update.manifest.replace(engines=tuple(replace_entry(update.manifest.engines, entry)))
    final = opened.path / plan_ref.file
    return BuildResult(entry, final, report, reduced, build_s)


def build_plain_engine(bundle: Bundle, precision: str, profile: BatchProfile, memory: DeviceMemory,
                       workspace_gb: float | None = None) -> bytes:
    """An engine of the logits-only part of the graph (same weights, precision and profile).

    The "plain inference" baseline of ``textcam bench --backend tensorrt`` and the GPU latency
    benchmark: the explanation's cost is reported as a ratio to this.
    """
    with tempfile.TemporaryDirectory() as folder:
        plain = extract_logits_graph(bundle.model_path, Path(folder) / "plain.onnx")
        if precision != "fp32":
            reduced = Path(folder) / f"plain.{precision}.onnx"
            write_reduced_graph(plain, reduced, precision)
            plain = reduced
        settings = BuildSettings(precision, profile, concurrency=1, workspace_gb=workspace_gb)
        return serialize_engine(plain, settings, memory)
