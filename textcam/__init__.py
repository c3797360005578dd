"""textcam: text-annotated class activation maps, exported once and served without PyTorch.

The distribution has three stages, each its own subpackage:

- :mod:`textcam.export` (needs torch): traces a model into one ONNX graph that returns the
  prediction, the gradients and the CAM heatmap, and writes a bundle directory;
- :mod:`textcam.runtime` (numpy + onnxruntime): loads a bundle and explains images;
- the ``textcam`` console command (:mod:`textcam.cli`) fronts both.

Every problem that is the caller's to fix raises :class:`TextcamError` (one line naming the
parameter or file)::

    from textcam import TextcamError
    from textcam.runtime import Explainer

    try:
        with Explainer("resnet50.textcam") as explainer:
            print(explainer.explain("cat.jpg").label)
    except TextcamError as exc:
        print(f"error: {exc}")
"""

from textcam.errors import TextcamError

__version__ = "0.1.0"
__all__ = ["TextcamError", "__version__"]
