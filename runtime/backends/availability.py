"""Which backends can run on this machine, and, in one phrase, why a backend cannot.

Probing imports nothing heavy: package presence is checked with ``find_spec``, ONNX Runtime's
providers are listed (onnxruntime is a base dependency) and the CUDA device count comes from
whichever CUDA binding is installed. The phrases end up in the one-line error of
:func:`textcam.runtime.backends.create_runner`.
"""

from __future__ import annotations

from textcam.runtime.backends.cuda_memory import cuda_device_count, installed_allocators, module_present

ONNXRUNTIME_GPU_PROVIDERS = {
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}


def unavailable_reason(backend: str) -> str | None:
    """None when ``backend`` can run here, else why not (e.g. "the tensorrt package is not installed")."""
    if backend == "onnxruntime":
        return None
    if backend in ONNXRUNTIME_GPU_PROVIDERS:
        import onnxruntime

        provider = ONNXRUNTIME_GPU_PROVIDERS[backend]
        if provider not in onnxruntime.get_available_providers():
            return f"this onnxruntime has no {provider}; replace it with onnxruntime-gpu: pip install 'textcam[gpu]'"
        count, why = cuda_device_count()
        return None if count else why
    if backend == "tensorrt":
        if not module_present("tensorrt"):
            return "the tensorrt package is not installed; pip install 'textcam[tensorrt]'"
        if not installed_allocators():
            return "neither cuda-python nor pycuda is installed; pip install 'textcam[tensorrt]'"
        count, why = cuda_device_count()
        return None if count else why
    if backend == "openvino":
        installed = module_present("openvino")
        return None if installed else "the openvino package is not installed; pip install 'textcam[openvino]'"
    return f"unknown backend {backend!r}"


def available_backends(candidates) -> list[str]:
    return [name for name in candidates if unavailable_reason(name) is None]
