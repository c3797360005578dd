"""Train textcam-tiny-clip on the shapes world (open_clip's own model classes and tokenizer).

    python -m textcam.shapes_world.train_clip --out clip.pt          # ~400 steps, minutes on 2 cores

Contrastive image-caption training on freshly generated scenes, then zero-shot accuracy per
attribute family (the largest object's shape, colour, size, texture; the background) on held-out
single-object scenes, with the prompts "a photo of {phrase}.".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from textcam.shapes_world.captions import FAMILIES, attribute_of, phrase, training_caption
from textcam.shapes_world.generator import SIZES, ShapesWorld

CLIP_MODEL = "textcam-tiny-clip"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # open_clip's OpenAI constants
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def to_tensor(images: list[np.ndarray]):
    import torch

    batch = (np.stack(images).astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())


def build_model():
    import open_clip

    from textcam.semantics_store.clip_encoder import _register_configs

    _register_configs()
    return open_clip.create_model(CLIP_MODEL), open_clip.get_tokenizer(CLIP_MODEL)


def train(steps: int, batch_size: int, seed: int, log=print):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model, tokenizer = build_model()
    world = ShapesWorld(64, seed=seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        scenes = [world.scene(step * batch_size + i) for i in range(batch_size)]
        images = to_tensor([s.image for s in scenes])
        texts = tokenizer([training_caption(s, rng) for s in scenes])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(texts), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        # identical captions in one batch are not negatives of each other
        same = torch.tensor([[a == b for b in texts.tolist()] for a in texts.tolist()], dtype=torch.float32)
        targets = same / same.sum(dim=1, keepdim=True)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)")
    return model.eval(), tokenizer


def zero_shot(model, tokenizer, count: int = 500, seed: int = 10_000) -> dict[str, float]:
    """Accuracy of picking the right value of each family for single-object held-out scenes."""
    import torch
    import torch.nn.functional as F

    world = ShapesWorld(64, seed=seed)
    scenes = [world.scene(i, objects=1, size=SIZES[i % 2]) for i in range(count)]
    with torch.no_grad():
        image_features = F.normalize(model.encode_image(to_tensor([s.image for s in scenes])), dim=-1)
        result = {}
        for family, (values, _) in FAMILIES.items():
            prompts = tokenizer([f"a photo of {phrase(family, v)}." for v in values])
            text_features = F.normalize(model.encode_text(prompts), dim=-1)
            predicted = (image_features @ text_features.T).argmax(dim=1).numpy()
            truth = np.array([values.index(attribute_of(s, family)) for s in scenes])
            result[family] = float((predicted == truth).mean())
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where to save the state dict (.pt)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = train(args.steps, args.batch_size, args.seed, log=lambda m: print(m, file=sys.stderr))
    accuracy = zero_shot(model, tokenizer)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(json.dumps({"zero_shot_accuracy": accuracy, "steps": args.steps, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
