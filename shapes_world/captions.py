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


PROMPT_TEMPLATES = ("a photo of {}.", "an image showing {}.", "{}")
"""Wrappers seen in training, so prompts such as textcam's default templates are not unknown text."""


FAMILY_WEIGHTS = (0.4, 0.15, 0.15, 0.15, 0.15)
"""How often each family (in FAMILIES order) is the one a short caption names: shape most often,
since colours and backgrounds are learned from any caption. (Shapes are still learned last:
about 1,500 steps; see the README's shapes-world section.)"""

Facts = tuple[tuple[str, str], ...]
"""(family, value) pairs a caption asserts about the largest object or the background."""


def training_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, Facts | None]:
    """A caption for ``scene`` and the facts it asserts (None: a whole-scene caption).

    Most captions name one or two attribute families of the largest object (or the background):
    a whole-scene caption can be matched by colours alone, so without these the shapes, sizes and
    textures would never need to be learned.
    """
    choice = rng.random()
    if choice < 0.15:
        caption, facts = scene.caption(), None
    elif choice < 0.3:
        caption = f"a {scene.largest.phrase()}"
        facts = tuple((f, attribute_of(scene, f)) for f in FAMILIES if f != "background")
    else:
        families = list(FAMILIES)
        picked = rng.choice(families, size=1 if choice < 0.8 else 2, replace=False, p=FAMILY_WEIGHTS)
        facts = tuple((str(f), attribute_of(scene, str(f))) for f in picked)
        caption = " and ".join(f"a {phrase(f, v)}" for f, v in facts)
    return PROMPT_TEMPLATES[int(rng.integers(len(PROMPT_TEMPLATES)))].format(caption), facts


def caption_holds(scene: Scene, caption: str, facts: Facts | None, scene_caption: str | None = None) -> bool:
    """Whether a caption made for another scene is also true of ``scene`` (then it is no negative).
    ``scene_caption``: ``scene.caption()``, when the caller already has it."""
    if facts is None:
        return (scene_caption or scene.caption()) in caption
    return all(attribute_of(scene, family) == value for family, value in facts)


def holds_matrix(scenes: list[Scene], captions: list[tuple[str, Facts | None]]) -> np.ndarray:
    """[scene, caption] booleans of :func:`caption_holds`, each scene's own caption built once."""
    own = [scene.caption() for scene in scenes]
    return np.array([[caption_holds(s, text, facts, mine) for text, facts in captions]
                     for s, mine in zip(scenes, own, strict=True)])
