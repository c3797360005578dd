"""Plain inference on the explainer's own backend: the baseline an explanation's cost is a ratio to.

The baseline is the bundle's graph pruned to the nodes that compute the logits
(:func:`textcam.engines.graph_surgery.extract_logits_graph`): same weights, same backend, same
precision, no gradient. Each backend runs it its own way:

* ``onnxruntime``: a CPU session with the same thread settings;
* ``onnxruntime-cuda`` / ``onnxruntime-tensorrt``: the same runner class on the pruned graph
  (reduced the same way for fp16/bf16), through its I/O binding;
* ``tensorrt``: an engine of the pruned graph built now with the explainer's engine's precision
  and batch profile (a build takes a while; ``textcam bench`` says so before starting);
* ``openvino``: the pruned graph compiled by OpenVINO with the explainer's compiled model's
  device, precision and thread count.

ONNX Runtime sessions get ``allow_spinning`` (default off): the baseline is timed interleaved with
the explainer's own sessions in one process, and a pool that busy-waits after its call starves the
next contender's, which once made an explanation measure faster than the graph it contains.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

PlainCall = Callable[[np.ndarray], object]


def plain_inference(explainer, threads: int | None = None,
                    allow_spinning: bool = False) -> tuple[PlainCall, Callable[[], None]]:
    """(call(images) -> logits, release()) running the logits-only graph on ``explainer``'s backend.

    ``threads`` and ``allow_spinning`` set an ONNX Runtime baseline's session: pass the explainer's own."""
    from textcam.engines.graph_surgery import extract_logits_graph

    bundle, runner = explainer.bundle, explainer.runner
    folder = tempfile.TemporaryDirectory(prefix="textcam-plain-")
    plain_path = extract_logits_graph(bundle.model_path, Path(folder.name) / "plain.onnx")
    backend = getattr(runner, "name", "onnxruntime")
    if backend == "tensorrt":
        from textcam.engines.build import build_plain_engine
        from textcam.runtime.backends.tensorrt_runner import EnginePool

        precision = runner.entry.precision if runner.entry else "fp32"
        plan = build_plain_engine(bundle, precision, runner.profile, runner.memory)
        pool = EnginePool(plan, runner.memory, contexts=1)

        def release() -> None:
            pool.close()
            folder.cleanup()

        return (lambda images: pool.run({"image": images})), release
    if backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        precision = runner.precision
        if precision != "fp32":
            from textcam.engines.precision import write_reduced_graph

            reduced = plain_path.with_name(f"plain.{precision}.onnx")
            write_reduced_graph(plain_path, reduced, precision)
            plain_path = reduced
        options = {"device": runner.device, "intra_op_threads": threads, "allow_spinning": allow_spinning,
                   "cache_dir": runner.cache_dir}
        if backend == "onnxruntime-tensorrt":
            options.update(min_batch=runner.profile.min, opt_batch=runner.profile.opt, max_batch=runner.profile.max)
        plain = type(runner)(bundle.with_graph(plain_path), **options)  # the pruned graph as its model
        return (lambda images: plain._run_bound({"image": np.ascontiguousarray(images, np.float32)})), folder.cleanup
    if backend == "openvino":
        return _openvino_plain(runner, plain_path), folder.cleanup
    import onnxruntime as ort

    from textcam.runtime.backends.onnxruntime_runner import session_options

    options = session_options(threads, allow_spinning)
    session = ort.InferenceSession(str(plain_path), options, providers=["CPUExecutionProvider"])
    folder.cleanup()
    return (lambda images: session.run(None, {"image": images})), (lambda: None)


def _openvino_plain(runner, plain_path: Path) -> PlainCall:
    """The pruned graph compiled as ``runner``'s model was (device, precision, threads), so that plain
    and graph run on the same engine with the same threads (``runner`` is an OpenVinoRunner)."""
    import openvino as ov

    from textcam.runtime.backends.openvino_runner import PRECISIONS

    compiled = runner.compiled
    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[runner.precision], "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": int(compiled.get_property("INFERENCE_NUM_THREADS"))}
    core = ov.Core()
    plain = core.compile_model(core.read_model(str(plain_path)), compiled.get_property("EXECUTION_DEVICES")[0],
                               config)
    request = plain.create_infer_request()
    return lambda images: request.infer({"image": images})
