"""textcam.semantics_store: give each channel of the explained layer a meaning in CLIP space.

Offline (needs the ``[semantics]`` extra): scan a probe image set with the bundle's own graph,
embed the top- and bottom-activating images with CLIP, fit one LDA direction per channel, embed
a vocabulary, and freeze it all into ``semantics.safetensors`` inside the bundle.
"""

from textcam.semantics_store.builder import BuildReport, build_semantics
from textcam.semantics_store.clip_encoder import ClipEncoder, load_clip

__all__ = ["BuildReport", "ClipEncoder", "build_semantics", "load_clip"]
