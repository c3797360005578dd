"""textcam.engines: the torch-free stage after export: TensorRT engines and reduced precision.

* :mod:`textcam.engines.entries`: the manifest's engine entries, batch profiles, and which engine
  fits this machine (no TensorRT needed);
* :mod:`textcam.engines.graph_surgery`: the nodes that compute the logits, and the logits-only
  subgraph (the plain-inference baseline);
* :mod:`textcam.engines.precision`: the fp16/bf16 copy of a joint graph (forward pass reduced,
  gradients and CAM in fp32);
* :mod:`textcam.engines.parity`: does a built engine compute what ``model.onnx`` computes;
* :mod:`textcam.engines.build`: ``textcam build-engine`` (needs TensorRT and a CUDA binding).

The GPU runners that execute engines live in :mod:`textcam.runtime.backends`. Nothing here
imports torch; importing this package imports none of its modules.
"""
