"""OpenVINO on the CPU (Intel edge machines, or any x86/ARM CPU), float32 unless asked otherwise.

OpenVINO reads the bundle's ONNX graph directly (``Core.read_model``); the batch stays dynamic.
Its CPU plugin runs in bfloat16 by default on CPUs that have bf16 instructions (Sapphire Rapids,
recent Xeons), and the joint graph's backward pass in bf16 moves channel weights enough to change
which concepts are named. So the precision is pinned: ``precision="fp32"`` (the default) sets
``INFERENCE_PRECISION_HINT=f32``; ``precision="bf16"`` lets the plugin use bf16 and is then
held to the self-test's reduced-precision tolerances (5e-2 on the numeric outputs, class and
concept ids exact; see :mod:`textcam.runtime.selftest`).

On a CPU without bfloat16 instructions (AVX2-only x86, where the plugin's
``OPTIMIZATION_CAPABILITIES`` read ``FP32, INT8, BIN``) the plugin accepts the bf16 hint and
silently compiles f32. ``precision="bf16"`` is then refused in one line naming what the device
has, rather than running fp32 and reporting bf16; the compiled model's precision is read back as
well, in case a plugin drops the hint for another reason.
"""

from __future__ import annotations

import threading

import numpy as np

from textcam.errors import TextcamError, first_line
from textcam.runtime.backends.base import GraphRunner
from textcam.runtime.bundle import Bundle

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
CAPABILITY = {"bf16": "BF16"}  # the OPTIMIZATION_CAPABILITIES entry a reduced precision needs
COMPILED_TYPE = {"fp32": "f32", "bf16": "bf16"}  # what INFERENCE_PRECISION_HINT reads back (Type.get_type_name)


def check_precision_supported(precision: str, device: str, capabilities: list[str]) -> None:
    """A one-line TextcamError when ``device`` cannot run ``precision`` (its capability list says so)."""
    needed = CAPABILITY.get(precision)
    if needed and needed not in capabilities:
        raise TextcamError(
            f"precision={precision!r}: OpenVINO's {device} device here has no {needed} support (its capabilities: "
            f"{', '.join(capabilities)}); use precision='fp32', or a machine whose CPU has bfloat16 instructions "
            "(AVX512_BF16 or AMX)"
        )


class OpenVinoRunner(GraphRunner):
    """One compiled model; each thread gets its own infer request, so ``run`` is thread-safe.

    ``threads``: OpenVINO's ``INFERENCE_NUM_THREADS`` (default: the plugin's, all cores);
    ``device``: an OpenVINO device name (``"CPU"``; ``"GPU"`` for Intel graphics where installed).
    """

    name = "openvino"

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: int | None = None, device: str = "CPU"):
        import openvino as ov

        if precision not in PRECISIONS:
            raise TextcamError(f"precision={precision!r}: the openvino backend runs {' or '.join(PRECISIONS)}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise TextcamError(f"threads={threads!r}: expected a positive number of threads")
        core = ov.Core()
        if device not in core.available_devices:
            raise TextcamError(f"device={device!r}: not an OpenVINO device here; available: "
                               f"{', '.join(core.available_devices)}")
        check_precision_supported(precision, device,
                                  [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")])
        self.precision = precision
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        path = bundle.model_path
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for graphs it cannot take
            raise TextcamError(f"{path}: OpenVINO cannot load it ({first_line(exc)}); "
                               "try backend='onnxruntime', or re-run `textcam export`") from None
        compiled_type = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if compiled_type != COMPILED_TYPE[precision]:
            raise TextcamError(f"precision={precision!r}: OpenVINO's {device} device compiled the graph in "
                               f"{compiled_type}, not {COMPILED_TYPE[precision]}; use precision='fp32'")
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.outputs = [(port.get_any_name(), port) for port in self.compiled.outputs]
        expected = [i.name for i in bundle.info.graph.inputs]
        if self.input_names != expected:
            raise TextcamError(f"{path}: graph inputs {self.input_names} differ from the manifest's {expected}; "
                               "re-run `textcam export`")
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, images: np.ndarray, target_class: np.ndarray) -> dict[str, np.ndarray]:
        request = self._request()
        request.infer({self.input_names[0]: images, self.input_names[1]: target_class})
        # copies: the request's buffers are reused by the next call on this thread
        return {name: np.array(request.get_tensor(port).data) for name, port in self.outputs}
