"""textcam: text-annotated class activation maps, exported once and served without PyTorch.

The distribution has three stages, each its own subpackage:

- :mod:`textcam.export` (needs torch): traces a model into one ONNX graph that returns the
  prediction, the gradients and the CAM heatmap, and writes a bundle directory;
- :mod:`textcam.runtime` (numpy + onnxruntime): loads a bundle and explains images;
- the ``textcam`` console command (:mod:`textcam.cli`) fronts both.
"""

__version__ = "0.1.0"
