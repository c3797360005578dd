"""The shapes-world generator: seeded, attribute-faithful, and fast enough to be a probe source."""

import numpy as np
import pytest

from textcam.shapes_world import BACKGROUNDS, COLORS, SHAPES, TEXTURES, ShapesWorld


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = ShapesWorld(64, seed=3), ShapesWorld(64, seed=3), ShapesWorld(64, seed=4)
    assert np.array_equal(a.scene(10).image, b.scene(10).image)
    assert a.scene(10).caption() == b.scene(10).caption()
    assert not np.array_equal(a.scene(10).image, c.scene(10).image)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("texture", TEXTURES)
def test_pinned_attributes_are_drawn(shape, texture):
    scene = ShapesWorld(96, seed=0).scene(1, shape=shape, texture=texture, color="red", objects=1,
                                          background="teal")
    obj = scene.largest
    assert (obj.shape, obj.texture, obj.color, scene.background) == (shape, texture, "red", "teal")
    pixels = scene.image.reshape(-1, 3).astype(int)
    red = np.all(np.abs(pixels - COLORS["red"]) < 2, axis=1).sum()
    assert red > 0.3 * obj.area  # the object shows its colour (textures darken part of it)
    assert obj.area > 200
    teal = np.abs(pixels - BACKGROUNDS["teal"]).sum(axis=1) < 120
    assert teal.sum() > 0.5 * pixels.shape[0]


def test_the_largest_object_is_the_first_and_captions_name_everything():
    world = ShapesWorld(64, seed=5)
    for index in range(50):
        scene = world.scene(index)
        assert 1 <= len(scene.objects) <= 3
        assert scene.largest.size == "large"
        for obj in scene.objects:
            assert obj.shape in scene.caption() and obj.color in scene.caption()
        assert scene.background in scene.caption()
