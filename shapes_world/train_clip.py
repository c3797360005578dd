"""Train textcam-tiny-clip on the shapes world (open_clip's own model classes and tokenizer).

    python -m textcam.shapes_world.train_clip --out clip.safetensors    # minutes on 2 cores

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

from textcam.shapes_world import splits
from textcam.shapes_world.captions import (
    FAMILIES,
    PROMPT_TEMPLATES,
    attribute_of,
    holds_matrix,
    phrase,
    training_caption,
)
from textcam.shapes_world.generator import SHAPES, SIZES, ShapesWorld

CLIP_MODEL = "textcam-tiny-clip"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # open_clip's OpenAI constants
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def to_tensor(images: list[np.ndarray]):
    import torch

    batch = (np.stack(images).astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())


def build_model():
    import open_clip

    from textcam.semantics_store.clip_encoder import register_configs

    register_configs()
    return open_clip.create_model(CLIP_MODEL), open_clip.get_tokenizer(CLIP_MODEL)


def training_batch(world: ShapesWorld, step: int, batch_size: int) -> list:
    """Scenes in groups of len(SHAPES) that differ only in the largest object's shape, the first
    object pinned small in every other group (else "small" never describes the largest object:
    zero-shot size accuracy went from 0.67 to 0.9 with it).

    The groups were meant to teach shapes, which colours and backgrounds let contrastive training
    skip; within 600 steps they did not (shapes need about 1,500; see the README's shapes-world
    section), and they cost nothing.
    """
    scenes = []
    for i in range(batch_size):
        group = step * batch_size // len(SHAPES) + i // len(SHAPES)
        size = SIZES[group % len(SIZES)]
        scenes.append(world.scene(group, shape=SHAPES[i % len(SHAPES)], size=size))
    return scenes


def train(steps: int, batch_size: int, seed: int, log=print):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model, tokenizer = build_model()
    world = ShapesWorld(64, seed=seed)
    rng = np.random.default_rng(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(steps):
        scenes = training_batch(world, step, batch_size)
        images = to_tensor([s.image for s in scenes])
        captions = [training_caption(s, rng) for s in scenes]
        texts = tokenizer([text for text, _ in captions])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(texts), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        # a caption that is also true of another image in the batch is not a negative for it
        holds = torch.from_numpy(holds_matrix(scenes, captions).astype(np.float32))
        loss = (F.cross_entropy(logits, holds / holds.sum(dim=1, keepdim=True))
                + F.cross_entropy(logits.T, holds.T / holds.T.sum(dim=1, keepdim=True))) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)")
    return model.eval(), tokenizer


def zero_shot(model, tokenizer, count: int = 500, seed: int = splits.CLIP_EVAL) -> dict[str, float]:
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


TOKEN_TABLE = "token_embedding.weight"


def known_texts(count: int = 2000, seed: int = 0) -> list[str]:
    """Every kind of text the model is meant to read: sampled training captions, its own vocabulary
    (``builtin:shapes-world``, whose distractors it reads on purpose) and the prompt templates.

    Not ``builtin:attributes``: those words never occur in training, so their rows would be the
    untrained initial values and a vocabulary of them would rank as confident nonsense. Dropped
    rows load as zeros, which ``textcam semantics`` refuses by name."""
    from textcam.semantics_store.vocabulary import DEFAULT_TEMPLATES, builtin_phrases

    world, rng = ShapesWorld(64, seed=seed), np.random.default_rng(seed)
    texts = [training_caption(world.scene(i), rng)[0] for i in range(count)]
    texts += [phrase(f, v) for f, (values, _) in FAMILIES.items() for v in values]
    texts += builtin_phrases("builtin:shapes-world")
    return texts + list(DEFAULT_TEMPLATES) + list(PROMPT_TEMPLATES)


def save_compact(model, tokenizer, path: Path) -> dict:
    """fp16 safetensors with only the token-embedding rows of :func:`known_texts` (see
    ``textcam.semantics_store.clip_encoder.SPARSE_ROWS_SUFFIX``): about 4 MB instead of 36."""
    import torch
    from safetensors.torch import save_file

    from textcam.semantics_store.clip_encoder import SPARSE_ROWS_SUFFIX

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    rows = torch.unique(tokenizer(known_texts()).flatten())
    state[TOKEN_TABLE] = state[TOKEN_TABLE][rows].contiguous()
    state[TOKEN_TABLE + SPARSE_ROWS_SUFFIX] = rows.to(torch.int64)
    save_file(state, str(path), metadata={"model": CLIP_MODEL, "token_rows": str(len(rows))})
    return {"token_rows": len(rows), "bytes": path.stat().st_size}


def load_compact(path: Path):
    """The model saved by :func:`save_compact`, as an open_clip model in eval mode."""
    from textcam.semantics_store.clip_encoder import read_checkpoint

    model, tokenizer = build_model()
    model.load_state_dict(read_checkpoint(Path(path), model.state_dict()))
    return model.eval(), tokenizer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="where to save the weights: .safetensors (compact fp16) or .pt (full state dict)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=splits.CLIP_TRAIN)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = train(args.steps, args.batch_size, args.seed, log=lambda m: print(m, file=sys.stderr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".safetensors":
        save_compact(model, tokenizer, args.out)
        model, tokenizer = load_compact(args.out)  # report what was saved
    else:
        torch.save(model.state_dict(), args.out)
    accuracy = zero_shot(model, tokenizer)
    print(json.dumps({"zero_shot_accuracy": accuracy, "steps": args.steps, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
