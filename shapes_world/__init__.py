"""textcam.shapes_world: a synthetic world with known attributes, for the offline default and for
measuring explanation quality.

- ``generator``: seeded scenes (numpy only) and ``splits``: which seed makes which split;
- ``captions``: the words the world is described with;
- ``train_clip``, ``classifiers``: the tiny CLIP and the two CNNs (torch, open_clip);
- ``build``: one command that rebuilds every committed artifact; ``artifacts``: where they are;
- ``quality``: scores for explanations whose deciding attribute is known.
"""

from textcam.shapes_world.generator import BACKGROUNDS, COLORS, SHAPES, SIZES, TEXTURES, Scene, ShapesWorld

__all__ = ["BACKGROUNDS", "COLORS", "SHAPES", "SIZES", "TEXTURES", "Scene", "ShapesWorld"]
