"""The seeds that make each split of the shapes world, in one place, so that held out means held
out everywhere: a scene is a pure function of (seed, index), and no held-out split (CLIP
evaluation, probe set, test set, demo) shares a seed with training or with another held-out split."""

CLIP_TRAIN = 0
CLASSIFIER_TRAIN = {"color": 0, "spurious": 100}
CLIP_EVAL = 10_000
PROBE = 20_000
TEST = 50_000
DEMO = 70_000
