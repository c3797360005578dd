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


def test_write_pngs_round_trips_the_scenes(tmp_path):
    from PIL import Image

    world = ShapesWorld(48, seed=9)
    paths = world.write_pngs(tmp_path / "probe", 3, start=5)
    assert [p.name for p in paths] == ["000005.png", "000006.png", "000007.png"]
    assert np.array_equal(np.asarray(Image.open(paths[1])), world.scene(6).image)


def test_the_shapes_world_vocabulary_names_every_attribute_and_has_distractors():
    from textcam.semantics_store.vocabulary import builtin_phrases
    from textcam.shapes_world.captions import FAMILIES, phrase

    vocabulary = builtin_phrases("builtin:shapes-world")
    world = {phrase(family, value) for family, (values, _) in FAMILIES.items() for value in values}
    assert world <= set(vocabulary)
    assert len(set(vocabulary) - world) >= 20
    assert len(vocabulary) == len(set(vocabulary))


def test_held_out_splits_share_no_seed_with_training_or_each_other():
    from textcam.shapes_world import splits

    held_out = [splits.CLIP_EVAL, splits.PROBE, splits.TEST, splits.DEMO]
    training = {splits.CLIP_TRAIN, *splits.CLASSIFIER_TRAIN.values()}
    assert len(set(held_out)) == len(held_out) and not training & set(held_out)


def test_pinning_one_attribute_changes_only_that_attribute():
    world = ShapesWorld(64, seed=2)
    for index in range(20):
        star, cross = world.scene(index, shape="star"), world.scene(index, shape="cross")
        assert star.caption().replace("star", "X", 1) == cross.caption().replace("cross", "X", 1)
        assert star.background == cross.background and star.noise == cross.noise
        differs = (star.image != cross.image).any(axis=2)
        assert 0 < differs.mean() < 0.2  # only pixels of the first object's outline change


def test_holds_matrix_matches_caption_holds_and_each_caption_holds_for_its_own_scene():
    from textcam.shapes_world.captions import caption_holds, holds_matrix, training_caption

    world, rng = ShapesWorld(64, seed=8), np.random.default_rng(8)
    scenes = [world.scene(i) for i in range(12)]
    captions = [training_caption(s, rng) for s in scenes]
    matrix = holds_matrix(scenes, captions)
    expected = [[caption_holds(s, text, facts) for text, facts in captions] for s in scenes]
    assert matrix.tolist() == expected and matrix.diagonal().all()
