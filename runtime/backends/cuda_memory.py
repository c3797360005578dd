"""CUDA device memory, pinned host buffers, streams and graphs behind one small interface.

The TensorRT runner needs little from CUDA: allocate device buffers, page-locked host buffers
(asynchronous copies need them), a stream per execution context, copies, a synchronize, and,
for CUDA-graph replay, stream capture. Two Python bindings can provide that:

* **cuda-python** (``cuda-python`` / ``cuda-bindings``, NVIDIA's official bindings), imported as
  ``from cuda.bindings import runtime``: the old ``from cuda import cudart`` was removed in
  cuda-python 13. It talks to the CUDA runtime API, as TensorRT does, so both share the device's
  primary context with no extra care;
* **pycuda**, still common in TensorRT code bases: it works on the primary context too (retained
  and pushed around each call, so worker threads can use it). It has no stream-capture API that
  this module relies on, so CUDA-graph replay needs cuda-python.

Nothing here is imported by ``textcam.runtime`` at import time; :func:`open_device_memory` loads
a binding when a GPU backend is created.
"""

from __future__ import annotations

import ctypes
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from textcam.errors import TextcamError

ALLOCATORS = ("cuda-python", "pycuda")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "major.minor"
    total_memory_bytes: int


class DeviceMemory(ABC):
    """What the TensorRT runner needs from a CUDA binding. Pointers are plain ints."""

    name: str
    supports_graphs: bool = False

    def __init__(self, device: int = 0):
        self.device = device

    @abstractmethod
    def info(self) -> GpuInfo: ...

    def activate(self) -> AbstractContextManager:
        """Make the device current in the calling thread for the duration of a call."""
        return nullcontext()

    @abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def free(self, pointer: int) -> None: ...

    @abstractmethod
    def pinned(self, nbytes: int) -> np.ndarray:
        """A page-locked uint8 host buffer of ``nbytes``; released by :meth:`free_pinned`."""

    @abstractmethod
    def free_pinned(self, buffer: np.ndarray) -> None: ...

    @abstractmethod
    def create_stream(self) -> object: ...

    @abstractmethod
    def destroy_stream(self, stream: object) -> None: ...

    @abstractmethod
    def stream_handle(self, stream: object) -> int:
        """The raw ``cudaStream_t`` as an int (what TensorRT's ``execute_async_v3`` takes)."""

    @abstractmethod
    def to_device(self, pointer: int, host: np.ndarray, stream: object) -> None:
        """Asynchronous copy of the contiguous (pinned) ``host`` array to ``pointer``."""

    @abstractmethod
    def to_host(self, host: np.ndarray, pointer: int, stream: object) -> None:
        """Asynchronous copy from ``pointer`` into the contiguous (pinned) ``host`` array."""

    @abstractmethod
    def synchronize(self, stream: object) -> None: ...

    def capture_graph(self, stream: object, enqueue: Callable[[], None]) -> object:
        """Record what ``enqueue`` puts on ``stream`` into an executable CUDA graph."""
        raise TextcamError(f"CUDA-graph replay needs cuda-python; the {self.name} allocator cannot capture graphs")

    def launch_graph(self, graph: object, stream: object) -> None:
        raise TextcamError(f"CUDA-graph replay needs cuda-python; the {self.name} allocator cannot launch graphs")

    def destroy_graph(self, graph: object) -> None:
        """Release a graph made by :meth:`capture_graph`."""
        raise TextcamError(f"the {self.name} allocator has no CUDA graphs to release")


def _pinned_view(pointer: int, nbytes: int) -> np.ndarray:
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))


class CudaPythonMemory(DeviceMemory):
    """cuda-python's runtime bindings (``from cuda.bindings import runtime``)."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, device: int = 0):
        super().__init__(device)
        from cuda.bindings import runtime

        self.rt = runtime
        count = self.call(runtime.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not 0 <= device < count:
            raise TextcamError(f"device {device}: this machine has {count} CUDA device(s)")
        self.call(runtime.cudaSetDevice(device), "cudaSetDevice")

    def call(self, result, what: str):
        """Unpack cuda-python's (error, value...) tuples; a failure becomes one TextcamError line."""
        error, *values = result if isinstance(result, tuple) else (result,)
        if error != self.rt.cudaError_t.cudaSuccess:
            name = getattr(error, "name", str(error))
            raise TextcamError(f"CUDA {what} failed: {name}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def info(self) -> GpuInfo:
        props = self.call(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(self.device, name.rstrip("\x00"), f"{props.major}.{props.minor}", int(props.totalGlobalMem))

    def activate(self) -> AbstractContextManager:
        self.call(self.rt.cudaSetDevice(self.device), "cudaSetDevice")  # the current device is per thread
        return nullcontext()

    def malloc(self, nbytes: int) -> int:
        return int(self.call(self.rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes} bytes)"))

    def free(self, pointer: int) -> None:
        self.call(self.rt.cudaFree(pointer), "cudaFree")

    def pinned(self, nbytes: int) -> np.ndarray:
        pointer = int(self.call(self.rt.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost({nbytes} bytes)"))
        return _pinned_view(pointer, max(nbytes, 1))

    def free_pinned(self, buffer: np.ndarray) -> None:
        self.call(self.rt.cudaFreeHost(buffer.ctypes.data), "cudaFreeHost")

    def create_stream(self) -> object:
        return self.call(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreate")

    def destroy_stream(self, stream: object) -> None:
        self.call(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_handle(self, stream: object) -> int:
        return int(stream)

    def to_device(self, pointer: int, host: np.ndarray, stream: object) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def to_host(self, host: np.ndarray, pointer: int, stream: object) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.rt.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def synchronize(self, stream: object) -> None:
        self.call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def capture_graph(self, stream: object, enqueue: Callable[[], None]) -> object:
        # thread-local mode: other threads may keep allocating and launching while this one records
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.call(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = self.call(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            return self.call(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self.call(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch_graph(self, graph: object, stream: object) -> None:
        self.call(self.rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph: object) -> None:
        self.call(self.rt.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")


class PyCudaMemory(DeviceMemory):
    """pycuda on the device's primary context (shared with TensorRT's runtime-API calls)."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        super().__init__(device)
        import pycuda.driver as driver

        self.driver = driver
        try:
            driver.init()
            count = driver.Device.count()
        except driver.Error as exc:
            raise TextcamError(f"pycuda: CUDA cannot start ({exc})") from None
        if not 0 <= device < count:
            raise TextcamError(f"device {device}: this machine has {count} CUDA device(s)")
        self.context = driver.Device(device).retain_primary_context()
        self._live: dict[int, object] = {}  # pointer -> DeviceAllocation (freed when dropped)

    def info(self) -> GpuInfo:
        device = self.driver.Device(self.device)
        major, minor = device.compute_capability()
        return GpuInfo(self.device, device.name(), f"{major}.{minor}", int(device.total_memory()))

    def activate(self) -> AbstractContextManager:
        return _PushedContext(self.context)

    def malloc(self, nbytes: int) -> int:
        with self.activate():
            allocation = self.driver.mem_alloc(max(nbytes, 1))
        self._live[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        allocation = self._live.pop(pointer, None)
        if allocation is not None:
            with self.activate():
                allocation.free()

    def pinned(self, nbytes: int) -> np.ndarray:
        with self.activate():
            return self.driver.pagelocked_empty(max(nbytes, 1), np.uint8)

    def free_pinned(self, buffer: np.ndarray) -> None:
        base = getattr(buffer, "base", None)
        if base is not None and hasattr(base, "free"):
            with self.activate():
                base.free()

    def create_stream(self) -> object:
        with self.activate():
            return self.driver.Stream()

    def destroy_stream(self, stream: object) -> None:
        """pycuda streams are released by garbage collection."""

    def stream_handle(self, stream: object) -> int:
        return int(stream.handle)

    def to_device(self, pointer: int, host: np.ndarray, stream: object) -> None:
        self.driver.memcpy_htod_async(pointer, host, stream)

    def to_host(self, host: np.ndarray, pointer: int, stream: object) -> None:
        self.driver.memcpy_dtoh_async(host, pointer, stream)

    def synchronize(self, stream: object) -> None:
        stream.synchronize()


class _PushedContext(AbstractContextManager):
    def __init__(self, context):
        self.context = context

    def __enter__(self):
        self.context.push()
        return self

    def __exit__(self, *exc):
        self.context.pop()
        return False


def installed_allocators() -> list[str]:
    """The CUDA bindings importable here, preferred first (without importing them)."""
    found = []
    if module_present("cuda.bindings"):
        found.append("cuda-python")
    if module_present("pycuda"):
        found.append("pycuda")
    return found


def module_present(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is missing or not a package
        return False


def open_device_memory(allocator: str = "auto", device: int = 0) -> DeviceMemory:
    """The chosen binding (``auto``: cuda-python, else pycuda) on ``device``; one-line errors otherwise."""
    if allocator not in ("auto", *ALLOCATORS):
        raise TextcamError(f"allocator {allocator!r}: expected auto, {', '.join(ALLOCATORS)}")
    available = installed_allocators()
    choice = (available[0] if available else None) if allocator == "auto" else allocator
    if choice is None or choice not in available:
        wanted = "cuda-python or pycuda" if allocator == "auto" else allocator
        raise TextcamError(f"{wanted} is not installed: pip install 'textcam[tensorrt]' (brings cuda-python)")
    return CudaPythonMemory(device) if choice == "cuda-python" else PyCudaMemory(device)


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, why none) using whichever binding is present, never raising.

    Used to say *why* a GPU backend is unavailable. Without any binding, the NVIDIA driver's
    /proc entries decide (Linux); elsewhere the answer is 0 with a reason.
    """
    if module_present("cuda.bindings"):
        try:
            from cuda.bindings import runtime

            error, count = runtime.cudaGetDeviceCount()
            if error == runtime.cudaError_t.cudaSuccess:
                return int(count), "" if count else "no CUDA device found"
            return 0, f"no usable CUDA device ({getattr(error, 'name', error)})"
        except Exception as exc:  # a broken CUDA install must not break backend listing
            return 0, f"CUDA runtime unusable ({type(exc).__name__}: {exc})"
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        count = len(list(gpus.iterdir()))
        return count, "" if count else "no NVIDIA GPU found"
    return 0, "no NVIDIA driver found"
