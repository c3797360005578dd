"""Small CNN classifiers on the shapes world, with a known deciding attribute.

- task ``color``: label = colour of the largest object; shape, size, texture, background and the
  other objects' colours are nuisance. (Shape was the first choice; the tiny CLIP learns shape
  words last and only to 0.856 zero-shot accuracy within the build's CPU budget, see the README.)
- task ``spurious``: label = shape of the largest object, but in training the background colour
  predicts the label perfectly (background k for class k); held-out scenes decorrelate the two,
  exposing a model that learned the background.

    python -m textcam.shapes_world.classifiers --task color --out color_cnn.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from textcam.shapes_world import splits
from textcam.shapes_world.generator import BACKGROUNDS, COLORS, SHAPES, ShapesWorld

TASKS = ("color", "spurious")
CLASSES = {"color": tuple(COLORS), "spurious": SHAPES}
"""Each task's class names, in logit order."""
DECIDING_FAMILY = {"color": "color", "spurious": "shape"}
"""The attribute family of the largest object that a task's label is."""
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
TARGET_LAYER = "features"


def build_cnn(num_classes: int, width: int = 32):
    """conv blocks -> global average pool -> linear: a head plain CAM can explain."""
    from torch import nn

    def block(cin, cout, pool):
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    class ShapesCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *block(3, width, True), *block(width, 2 * width, True), *block(2 * width, 4 * width, False),
                *block(4 * width, 4 * width, False),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))

    return ShapesCNN()


def scenes_for(task: str, world: ShapesWorld, start: int, count: int, train: bool):
    """Scenes ``start`` .. ``start + count - 1`` of a task and their labels.

    Consecutive scenes come in groups (one per class) that differ only in the deciding attribute
    (and, for the spurious task's training set, the background that goes with it), so nothing
    but that attribute separates the classes within a batch.
    """
    scenes, labels = [], []
    backgrounds = list(BACKGROUNDS)
    classes = CLASSES[task]
    for index in range(start, start + count):
        label = index % len(classes)
        fixed = {DECIDING_FAMILY[task]: classes[label]}
        if task == "spurious" and train:
            fixed["background"] = backgrounds[label]
        scenes.append(world.scene(index // len(classes), **fixed))
        labels.append(label)
    return scenes, np.array(labels)


def to_input(images) -> np.ndarray:
    batch = (np.stack(images).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return batch.transpose(0, 3, 1, 2).copy()


def train(task: str, steps: int = 600, batch_size: int = 64, seed: int = 0, log=print):
    import torch
    import torch.nn.functional as F

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    torch.manual_seed(seed)
    model = build_cnn(len(CLASSES[task]))
    world = ShapesWorld(64, seed=seed + splits.CLASSIFIER_TRAIN[task])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        scenes, labels = scenes_for(task, world, step * batch_size, batch_size, train=True)
        logits = model(torch.from_numpy(to_input([s.image for s in scenes])))
        loss = F.cross_entropy(logits, torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"[{task}] step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)")
    return model.eval()


def accuracy(model, task: str, train_distribution: bool, count: int = 1000, seed: int = splits.TEST) -> float:
    import torch

    world = ShapesWorld(64, seed=seed)
    scenes, labels = scenes_for(task, world, 0, count, train=train_distribution)
    with torch.no_grad():
        predicted = model(torch.from_numpy(to_input([s.image for s in scenes]))).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def save_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def load_classifier(path: Path):
    """A :func:`build_cnn` with the weights of ``path`` (written by :func:`save_weights`), in eval mode."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    model = build_cnn(int(state["fc.weight"].shape[0]))
    model.load_state_dict(state)
    return model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="weights file (.safetensors)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = train(args.task, args.steps, seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, args.out)
    report = {"task": args.task, "accuracy_train_distribution": accuracy(model, args.task, True),
              "accuracy_held_out": accuracy(model, args.task, False)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
