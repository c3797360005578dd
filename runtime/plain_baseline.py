"""Plain inference on the explainer's own backend: the baseline an explanation's cost is a ratio to.

The baseline is the bundle's graph pruned to the nodes that compute the logits
(:func:`textcam.engines.graph_surgery.extract_logits_graph`): same weights, same backend, same
precision, no gradient. Each backend runs it its own way:

* ``onnxruntime``: a CPU session with the same thread settings;
* ``onnxruntime-cuda`` / ``onnxruntime-tensorrt``: the same runner class on the pruned graph
  (reduced the same way for fp16/bf16), through its I/O binding;
* ``tensorrt``: an engine of the pruned graph built now with the explainer's engine's precision
  and batch profile (a build takes a while; ``textcam bench`` says so before starting).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

PlainCall = Callable[[np.ndarray], object]


def plain_inference(explainer, threads: int | None = None) -> tuple[PlainCall, Callable[[], None]]:
    """(call(images) -> logits, release()) running the logits-only graph on ``explainer``'s backend."""
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
        options = {"device": runner.device, "intra_op_threads": threads, "cache_dir": runner.cache_dir}
        if backend == "onnxruntime-tensorrt":
            options.update(min_batch=runner.profile.min, opt_batch=runner.profile.opt, max_batch=runner.profile.max)
        plain = type(runner)(bundle.with_graph(plain_path), **options)  # the pruned graph as its model
        return (lambda images: plain._run_bound({"image": np.ascontiguousarray(images, np.float32)})), folder.cleanup
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(plain_path), options, providers=["CPUExecutionProvider"])
    folder.cleanup()
    return (lambda images: session.run(None, {"image": images})), (lambda: None)
