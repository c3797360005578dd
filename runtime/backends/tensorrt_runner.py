"""TensorRT: the bundle's engine (``textcam build-engine``) run on the GPU, same outputs as ONNX Runtime.

``EnginePool`` holds one deserialized engine and a pool of execution slots. Each slot is an
execution context with its own optimization profile (TensorRT requires a separate profile per
context in concurrent use with dynamic shapes, which is why ``build-engine --concurrency N``
builds N identical profiles), its own CUDA stream, device buffers sized for the profile's maximum
batch and page-locked host buffers (asynchronous copies need them). A call takes a free slot, so
one ``Explainer`` serves as many threads at once as the engine has profiles; further threads wait.
Batches above the profile's maximum are split, batches below its minimum padded (and trimmed).
With ``cuda_graph_batch=B``, calls of exactly B images replay a CUDA graph captured on the first
such call (less launch overhead for small models; needs cuda-python).

Nothing here imports TensorRT or CUDA at module import time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textcam.engines.entries import BatchProfile, EngineEntry, choose_engine, rebuild_command
from textcam.errors import TextcamError
from textcam.runtime.backends.base import GraphRunner
from textcam.runtime.backends.cuda_memory import DeviceMemory, GpuInfo, open_device_memory
from textcam.runtime.bundle import Bundle


def import_tensorrt():
    """The ``tensorrt`` module, or a one-line TextcamError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TextcamError(f"the tensorrt package is not installed ({exc}); pip install 'textcam[tensorrt]'") from None
    return tensorrt


def pad_batch(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with its last row repeated up to ``size`` rows (a profile's minimum batch)."""
    if len(array) >= size:
        return array
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def run_in_chunks(
    feeds: dict[str, np.ndarray],
    profile: BatchProfile,
    run_one: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Run a batch of any size as runs the profile accepts; outputs concatenated in order."""
    sizes = {len(v) for v in feeds.values()}
    if len(sizes) != 1:
        raise TextcamError(f"inputs have different batch sizes: {sorted(sizes)}")
    count = sizes.pop()
    if count == 0:
        raise TextcamError("empty batch: give at least one image")
    pieces: list[dict[str, np.ndarray]] = []
    for start, stop, size in profile.chunks(count):
        outputs = run_one({name: pad_batch(value[start:stop], size) for name, value in feeds.items()})
        pieces.append({name: value[: stop - start] for name, value in outputs.items()})
    if len(pieces) == 1:
        return pieces[0]
    return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}


@dataclass(frozen=True)
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype


class _ExecutionSlot:
    """One execution context on its own profile and stream, with buffers for the largest batch."""

    def __init__(self, engine, index: int, memory: DeviceMemory, tensors: list[_Tensor],
                 graph_batch: int | None):
        self.memory = memory
        self.tensors = tensors
        self.graph_batch = graph_batch
        self.graphs: dict[int, object] = {}
        self.device: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self.batch: int | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}
        with memory.activate():
            self.context = engine.create_execution_context()
            if self.context is None:
                raise TextcamError("TensorRT could not create an execution context (out of GPU memory?); "
                                   "use fewer contexts or a smaller --max-batch")
            self.stream = memory.create_stream()
            handle = memory.stream_handle(self.stream)
            if not self.context.set_optimization_profile_async(index, handle):
                raise TextcamError(f"TensorRT refused optimization profile {index}")
            memory.synchronize(self.stream)
            for tensor in tensors:
                if tensor.is_input:
                    largest = tuple(engine.get_tensor_profile_shape(tensor.name, index)[2])
                    self.context.set_input_shape(tensor.name, largest)
            for tensor in tensors:
                shape = tuple(self.context.get_tensor_shape(tensor.name))
                if any(d < 0 for d in shape):
                    raise TextcamError(f"engine tensor {tensor.name}: shape {shape} does not follow from the batch")
                nbytes = int(np.prod(shape, dtype=np.int64)) * tensor.dtype.itemsize
                self.device[tensor.name] = memory.malloc(nbytes)
                self.host[tensor.name] = memory.pinned(nbytes)
                self.context.set_tensor_address(tensor.name, self.device[tensor.name])

    def _host_view(self, tensor: _Tensor, shape: tuple[int, ...]) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * tensor.dtype.itemsize
        return self.host[tensor.name][:nbytes].view(tensor.dtype).reshape(shape)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))
        with self.memory.activate():
            if batch != self.batch:
                for tensor in self.tensors:
                    if tensor.is_input and not self.context.set_input_shape(tensor.name, feeds[tensor.name].shape):
                        raise TextcamError(f"engine input {tensor.name}: shape {feeds[tensor.name].shape} is outside "
                                           "the engine's profile")
                self.shapes = {t.name: tuple(self.context.get_tensor_shape(t.name)) for t in self.tensors}
                self.batch = batch
            for tensor in self.tensors:
                if tensor.is_input:
                    host = self._host_view(tensor, feeds[tensor.name].shape)
                    host[...] = feeds[tensor.name]
                    self.memory.to_device(self.device[tensor.name], host, self.stream)
            self._enqueue(batch)
            views = {}
            for tensor in self.tensors:
                if not tensor.is_input:
                    views[tensor.name] = self._host_view(tensor, self.shapes[tensor.name])
                    self.memory.to_host(views[tensor.name], self.device[tensor.name], self.stream)
            self.memory.synchronize(self.stream)
        return {name: view.copy() for name, view in views.items()}  # the pinned buffers are reused

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.memory.stream_handle(self.stream)):
            raise TextcamError("TensorRT execute_async_v3 failed (see TensorRT's log above)")

    def _enqueue(self, batch: int) -> None:
        if batch != self.graph_batch:
            self._execute()
            return
        graph = self.graphs.get(batch)
        if graph is None:
            self._execute()  # TensorRT does its lazy setup on the first run, which must not be captured
            graph = self.memory.capture_graph(self.stream, self._execute)
            self.graphs[batch] = graph
        self.memory.launch_graph(graph, self.stream)

    def close(self) -> None:
        with self.memory.activate():
            self.memory.synchronize(self.stream)
            for graph in self.graphs.values():
                self.memory.destroy_graph(graph)
            for pointer in self.device.values():
                self.memory.free(pointer)
            for buffer in self.host.values():
                self.memory.free_pinned(buffer)
            self.memory.destroy_stream(self.stream)
        self.graphs, self.device, self.host = {}, {}, {}


class EnginePool:
    """A deserialized engine and its execution slots; ``run`` is thread-safe."""

    def __init__(self, serialized: bytes, memory: DeviceMemory, contexts: int | None = None,
                 cuda_graph_batch: int | None = None, source: str = "engine", rebuild_hint: str = ""):
        trt = import_tensorrt()
        self.memory = memory
        hint = f"; rebuild with `{rebuild_hint}`" if rebuild_hint else ""
        if cuda_graph_batch is not None and not memory.supports_graphs:
            raise TextcamError(f"cuda_graph_batch={cuda_graph_batch}: CUDA-graph replay needs the cuda-python "
                               f"allocator, not {memory.name}")
        with memory.activate():
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
            self.engine = self._runtime.deserialize_cuda_engine(serialized) if serialized else None
        if self.engine is None:
            raise TextcamError(f"{source}: TensorRT {trt.__version__} cannot deserialize it (corrupt, or built by "
                               f"another TensorRT version or for another GPU){hint}")
        self.tensors = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            self.tensors.append(_Tensor(name, is_input, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))))
        self.input_names = [t.name for t in self.tensors if t.is_input]
        self.output_names = [t.name for t in self.tensors if not t.is_input]
        profiles = self.engine.num_optimization_profiles
        count = profiles if contexts is None else contexts
        if not 1 <= count <= profiles:
            raise TextcamError(f"contexts={count}: the engine has {profiles} optimization profile(s), one per "
                               f"concurrent context; use at most {profiles} or rebuild with --concurrency {count}")
        shapes = self.engine.get_tensor_profile_shape(self.input_names[0], 0)
        self.profile = BatchProfile(int(shapes[0][0]), int(shapes[1][0]), int(shapes[2][0]))
        if cuda_graph_batch is not None and not self.profile.min <= cuda_graph_batch <= self.profile.max:
            raise TextcamError(f"cuda_graph_batch={cuda_graph_batch}: outside the engine's batch profile "
                               f"{self.profile.describe()}")
        self._slots: queue.Queue[_ExecutionSlot] = queue.Queue()
        self._all: list[_ExecutionSlot] = []
        self._lock = threading.Lock()
        for index in range(count):
            slot = _ExecutionSlot(self.engine, index, memory, self.tensors, cuda_graph_batch)
            self._all.append(slot)
            self._slots.put(slot)

    @property
    def contexts(self) -> int:
        return len(self._all)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise TextcamError(f"engine inputs {missing} not given; the engine takes {self.input_names}")
        by_name = {t.name: t for t in self.tensors}
        feeds = {name: np.ascontiguousarray(feeds[name], dtype=by_name[name].dtype) for name in self.input_names}
        return run_in_chunks(feeds, self.profile, self._run_on_free_slot)

    def _run_on_free_slot(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        slot = self._slots.get()
        try:
            return slot.run(feeds)
        finally:
            self._slots.put(slot)

    def close(self) -> None:
        with self._lock:
            for slot in self._all:
                slot.close()
            self._all = []


class TensorRTRunner(GraphRunner):
    """The joint graph as a TensorRT engine from the bundle's ``engines/``, chosen for this GPU.

    ``precision``: pick the engine of that precision (default: fp32 if built, else fp16, else bf16);
    ``engine``: an :class:`EngineEntry` or a ``.plan`` path instead of choosing; ``contexts``: how
    many calls may run at once (default: the engine's profile count); ``cuda_graph_batch``: replay
    a CUDA graph for calls of exactly that many images; ``allocator``: "auto", "cuda-python" or
    "pycuda"; ``device``: the CUDA device index.
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, precision: str | None = None, engine: EngineEntry | str | Path | None = None,
                 contexts: int | None = None, cuda_graph_batch: int | None = None, allocator: str = "auto",
                 device: int = 0, verify_checksum: bool = True):
        trt = import_tensorrt()
        self.memory = open_device_memory(allocator, device)
        self.gpu: GpuInfo = self.memory.info()
        version = trt.__version__
        if isinstance(engine, (str, Path)):
            self.entry, path = None, Path(engine)
            if not path.is_file():
                raise TextcamError(f"engine {path}: file not found")
            hint = ""
        else:
            entry = engine or choose_engine(bundle.path, bundle.manifest, self.gpu.compute_capability, version,
                                            precision)
            hint = rebuild_command(bundle.path, entry.precision, entry.profile, entry.concurrency)
            if (entry.compute_capability, entry.tensorrt) != (self.gpu.compute_capability, version):
                raise TextcamError(
                    f"{bundle.path / entry.file}: built for sm{entry.compute_capability.replace('.', '')} with "
                    f"TensorRT {entry.tensorrt}; this machine has sm{self.gpu.compute_capability.replace('.', '')} "
                    f"({self.gpu.name}) with TensorRT {version}; rebuild with `{hint}`"
                )
            self.entry, path = entry, bundle.engine_path(entry, f"rebuild it with `{hint}`")  # confined, size, sha256
        self.pool = EnginePool(path.read_bytes(), self.memory, contexts, cuda_graph_batch, str(path), hint)
        expected_inputs = [i.name for i in bundle.info.graph.inputs]
        expected_outputs = [o.name for o in bundle.info.graph.outputs]
        if sorted(self.pool.input_names) != sorted(expected_inputs) or \
                not set(expected_outputs) <= set(self.pool.output_names):
            self.pool.close()
            raise TextcamError(
                f"{path}: engine tensors {self.pool.input_names} -> {self.pool.output_names} do not match the "
                f"bundle's graph {expected_inputs} -> {expected_outputs}" + (f"; rebuild with `{hint}`" if hint else "")
            )
        self.output_names = expected_outputs

    @property
    def profile(self) -> BatchProfile:
        return self.pool.profile

    def run(self, images: np.ndarray, target_class: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.pool.run({"image": images, "target_class": target_class})
        return {name: outputs[name] for name in self.output_names}

    def close(self) -> None:
        self.pool.close()
