"""textcam.shapes_world: a synthetic world with known attributes, for the offline default and for
measuring explanation quality. The generator needs numpy only."""

from textcam.shapes_world.generator import BACKGROUNDS, COLORS, SHAPES, SIZES, TEXTURES, Scene, ShapesWorld

__all__ = ["BACKGROUNDS", "COLORS", "SHAPES", "SIZES", "TEXTURES", "Scene", "ShapesWorld"]
