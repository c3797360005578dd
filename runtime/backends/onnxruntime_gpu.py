"""ONNX Runtime on an NVIDIA GPU (onnxruntime-gpu): the CUDA and the TensorRT execution providers.

Both run the bundle's graph as ONNX Runtime does on the CPU, so their outputs are those of
:class:`~textcam.runtime.backends.onnxruntime_runner.OnnxRuntimeRunner`. Calls go through an I/O
binding: the inputs are copied to the device once, the outputs are bound to device memory and
copied back in one step after the run (no per-output host staging inside ``run``). A binding is
made per call, so ``run`` stays thread-safe.

``precision="fp16"``/``"bf16"`` runs the reduced-precision copy of the graph (forward pass
reduced, backward pass and CAM in fp32; see :mod:`textcam.engines.precision`), written to
``engines/model.<precision>.onnx`` on first use. The TensorRT provider's own ``trt_fp16_enable``
is never set: it lets TensorRT pick fp16 kernels anywhere, the gradients included, and deep
gradients underflow fp16. Without it, ONNX Runtime builds a strongly typed TensorRT network that
follows the graph's casts.

The TensorRT provider builds its engine on the first session for a graph and caches it (and its
timing cache) in ``engines/onnxruntime-tensorrt/`` in the bundle, or in ``cache_dir``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textcam.engines.entries import ENGINES_DIR, BatchProfile, check_precision
from textcam.errors import TextcamError, first_line
from textcam.runtime.backends.base import GraphRunner
from textcam.runtime.backends.onnxruntime_runner import session_options
from textcam.runtime.backends.tensorrt_runner import run_in_chunks
from textcam.runtime.bundle import Bundle

TENSORRT_CACHE_DIR = "onnxruntime-tensorrt"


class _OnnxRuntimeGpuRunner(GraphRunner):
    provider = ""

    def __init__(self, bundle: Bundle, precision: str = "fp32", device: int = 0, intra_op_threads: int | None = None,
                 allow_spinning: bool = True, cache_dir: str | Path | None = None):
        import onnxruntime as ort

        self.precision = check_precision(precision)
        self.device = int(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(bundle.path) / ENGINES_DIR
        graph = Path(bundle.model_path) if precision == "fp32" else self._reduced_graph(bundle, precision)
        self.graph_path = graph
        options = session_options(intra_op_threads, allow_spinning)
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=self.providers(bundle))
        except Exception as exc:  # ORT raises its own exception types (bad graph, provider start failure)
            raise TextcamError(f"{graph}: ONNX Runtime ({self.provider}) cannot load it ({first_line(exc)})") from None
        if self.provider not in self.session.get_providers():
            raise TextcamError(
                f"backend {self.name!r}: ONNX Runtime could not start its {self.provider} on device {device} "
                f"(it fell back to {', '.join(self.session.get_providers())}); check the CUDA/TensorRT libraries"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _reduced_graph(self, bundle: Bundle, precision: str) -> Path:
        from textcam.engines.precision import reduced_graph

        return reduced_graph(bundle.model_path, bundle.model_sha256, self.cache_dir,
                             precision)

    def providers(self, bundle) -> list:
        raise NotImplementedError

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))

    def run(self, images: np.ndarray, target_class: np.ndarray) -> dict[str, np.ndarray]:
        feeds = dict(zip(self.input_names, (np.ascontiguousarray(images, np.float32),
                                            np.ascontiguousarray(target_class, np.int64)), strict=True))
        return self._run_bound(feeds)


class OnnxRuntimeCudaRunner(_OnnxRuntimeGpuRunner):
    """ONNX Runtime's CUDA execution provider (cuDNN kernels), CPU fallback for nothing but shapes."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"

    def providers(self, bundle) -> list:
        return [(self.provider, {"device_id": self.device}), "CPUExecutionProvider"]


class OnnxRuntimeTensorRTRunner(_OnnxRuntimeGpuRunner):
    """ONNX Runtime's TensorRT execution provider, with an engine and timing cache on disk.

    ``min_batch``/``opt_batch``/``max_batch`` set the provider's optimization profile (larger
    batches are split, as in the ``tensorrt`` backend), so one cached engine serves every size.
    """

    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"

    def __init__(self, bundle: Bundle, precision: str = "fp32", device: int = 0, intra_op_threads: int | None = None,
                 allow_spinning: bool = True, cache_dir: str | Path | None = None, min_batch: int | None = None,
                 opt_batch: int | None = None, max_batch: int | None = None, workspace_gb: float | None = None):
        self.profile = BatchProfile.resolve(min_batch, opt_batch, max_batch)
        self.workspace_gb = workspace_gb
        super().__init__(bundle, precision, device, intra_op_threads, allow_spinning, cache_dir)

    def providers(self, bundle) -> list:
        cache = self.cache_dir / TENSORRT_CACHE_DIR
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TextcamError(f"{cache}: cannot create the TensorRT engine cache ({exc.strerror or exc}); "
                               "pass cache_dir= a writable folder") from None
        spec = bundle.input
        inputs = _graph_inputs(self.graph_path)  # the logits-only baseline graph has no target_class

        def shapes(batch: int) -> str:
            dims = {"image": f"{batch}x3x{spec.height}x{spec.width}", "target_class": f"{batch}"}
            return ",".join(f"{name}:{dims[name]}" for name in inputs if name in dims)

        options = {
            "device_id": self.device,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": False,  # precision comes from the graph (see the module docstring)
            "trt_profile_min_shapes": shapes(self.profile.min),
            "trt_profile_opt_shapes": shapes(self.profile.opt),
            "trt_profile_max_shapes": shapes(self.profile.max),
        }
        if self.workspace_gb:
            options["trt_max_workspace_size"] = int(self.workspace_gb * (1 << 30))
        return [(self.provider, options), ("CUDAExecutionProvider", {"device_id": self.device}), "CPUExecutionProvider"]

    def run(self, images: np.ndarray, target_class: np.ndarray) -> dict[str, np.ndarray]:
        feeds = dict(zip(self.input_names, (np.ascontiguousarray(images, np.float32),
                                            np.ascontiguousarray(target_class, np.int64)), strict=True))
        return run_in_chunks(feeds, self.profile, self._run_bound)


def _graph_inputs(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]
