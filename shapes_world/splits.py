"""The seeds that make each split of the shapes world, in one place, so that held out means held
out everywhere: a scene is a pure function of (seed, index), and no two splits share a seed."""

CLIP_TRAIN = 0
CLASSIFIER_TRAIN = {"shape": 0, "spurious": 100}
CLIP_EVAL = 10_000
PROBE = 20_000
TEST = 50_000
DEMO = 70_000
