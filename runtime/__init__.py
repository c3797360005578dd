"""textcam.runtime: load a bundle and explain images with numpy and ONNX Runtime (never torch).

Example::

    from textcam.runtime import Explainer
    result = Explainer("resnet50.textcam").explain("cat.jpg")
    print(result.label, result.score, result.heatmap.shape)
"""

from textcam.runtime.bundle import Bundle
from textcam.runtime.bundle_files import FORMAT_VERSION
from textcam.runtime.concepts import ConceptSettings
from textcam.runtime.explainer import Explainer
from textcam.runtime.explanation import Concept, Explanation, Group

__all__ = ["FORMAT_VERSION", "Bundle", "Concept", "ConceptSettings", "Explainer", "Explanation", "Group"]
