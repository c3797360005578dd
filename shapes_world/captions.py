"""Captions and zero-shot prompts for the shapes world.

Training mixes full scene captions with short captions naming a few attributes of the largest
object or the background, so the text tower learns single-attribute phrases ("striped", "red
object") that explanation vocabularies use.
"""

from __future__ import annotations

import numpy as np

from textcam.shapes_world.generator import BACKGROUNDS, COLORS, SHAPES, SIZES, TEXTURES, Scene

# attribute family -> (values, phrase for a value); the phrases are the vocabulary's words
FAMILIES = {
    "shape": (SHAPES, lambda v: v),
    "color": (tuple(COLORS), lambda v: f"{v} object"),
    "size": (SIZES, lambda v: f"{v} object"),
    "texture": (TEXTURES, lambda v: f"{v} texture" if v != "solid" else "solid color"),
    "background": (tuple(BACKGROUNDS), lambda v: f"{v} background"),
}


def phrase(family: str, value: str) -> str:
    return FAMILIES[family][1](value)


def attribute_of(scene: Scene, family: str) -> str:
    return scene.background if family == "background" else getattr(scene.largest, family)


def training_caption(scene: Scene, rng: np.random.Generator) -> str:
    choice = rng.random()
    if choice < 0.35:
        return scene.caption()
    if choice < 0.55:
        return f"a {scene.largest.phrase()}"
    families = list(FAMILIES)
    picked = rng.choice(families, size=int(rng.integers(1, 3)), replace=False)
    return " and ".join(f"a {phrase(f, attribute_of(scene, f))}" for f in picked)
