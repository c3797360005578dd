"""Rebuild every committed shapes-world artifact from scratch, seeded (needs torch and open_clip):

    python -m textcam.shapes_world.build                    # into shapes_world/artifacts/
    python -m textcam.shapes_world.build --out /tmp/sw      # elsewhere, e.g. to compare

Steps, each logged with its time:

1. ``tiny_clip.safetensors``: textcam-tiny-clip trained on scenes and captions, with its
   zero-shot accuracy per attribute family on held-out single-object scenes;
2. ``color_cnn.safetensors`` and ``spurious_cnn.safetensors``: the two classifiers (see
   :mod:`textcam.shapes_world.classifiers`), with their held-out accuracies;
3. ``color.textcam`` and ``spurious.textcam``: each classifier exported (Grad-CAM at
   ``features``, activations included so maps split into channel groups) and given semantics
   computed with the tiny CLIP over a held-out probe set, vocabulary ``builtin:shapes-world``;
4. ``build_report.json``: all of the above numbers, the seeds, sizes and times.

Everything is built in a sibling folder and swapped in at the end: an interrupted build leaves
the previous artifacts as they were.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from textcam.shapes_world import artifacts, splits
from textcam.shapes_world.captions import PROMPT_TEMPLATES
from textcam.shapes_world.classifiers import CLASSES, TARGET_LAYER, TASKS, accuracy, save_weights, train
from textcam.shapes_world.generator import ShapesWorld

CLIP_STEPS = 1500
CLIP_BATCH = 128
CNN_STEPS = 600
PROBE_IMAGES = 2000
VOCABULARY = ("builtin:shapes-world",)
INPUT_SIZE = 64


def export_classifier(model, task: str, out: Path) -> Path:
    from textcam.export import export_bundle

    source = {"source": "textcam.shapes_world.classifiers:build_cnn", "task": task,
              "weights": artifacts.classifier_weights(task).name}
    return export_bundle(model, TARGET_LAYER, out, method="gradcam", input_size=(INPUT_SIZE, INPUT_SIZE),
                         class_names=list(CLASSES[task]), with_activations=True, source=source).path


def load_tiny_clip(checkpoint: Path = artifacts.CLIP_CHECKPOINT):
    """The tiny CLIP as the semantics builder uses it (load once, pass to :func:`add_semantics`)."""
    from textcam.semantics_store import load_clip

    return load_clip(checkpoint=str(checkpoint), model_name=artifacts.CLIP_MODEL)


def add_semantics(bundle: Path, probe: Path, clip, **options):
    """Channel semantics for ``bundle`` with ``clip`` (:func:`load_tiny_clip`) and the settings the
    default bundle ships with; ``options`` go to ``build_semantics`` (m=, lda=, cache=, fuse=...)."""
    from textcam.semantics_store import build_semantics

    settings = {"vocab": VOCABULARY, "templates": PROMPT_TEMPLATES, "show_progress": False, **options}
    return build_semantics(bundle, probe, clip, log=lambda m: None, **settings)


def build(out: Path, clip_steps: int = CLIP_STEPS, cnn_steps: int = CNN_STEPS, probe_images: int = PROBE_IMAGES,
          log=print) -> dict:
    import torch

    from textcam.shapes_world.train_clip import load_compact, save_compact, zero_shot
    from textcam.shapes_world.train_clip import train as train_clip

    out = Path(out)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report: dict = {"seeds": {k: v for k, v in vars(splits).items() if k.isupper()}, "seconds": {}}
    started = time.perf_counter()

    def step(name: str):
        report["seconds"][name] = round(time.perf_counter() - step.start, 1)
        log(f"[build] {name}: {report['seconds'][name]:.0f}s")
        step.start = time.perf_counter()

    step.start = started
    clip_model, tokenizer = train_clip(clip_steps, CLIP_BATCH, splits.CLIP_TRAIN, log=log)
    clip_path = stage / artifacts.CLIP_CHECKPOINT.name
    compact = save_compact(clip_model, tokenizer, clip_path)
    clip_model, tokenizer = load_compact(clip_path)  # measure what is shipped (fp16, sparse tokens)
    report["clip"] = {"model": artifacts.CLIP_MODEL, "steps": clip_steps, "batch_size": CLIP_BATCH, **compact,
                      "zero_shot_accuracy": zero_shot(clip_model, tokenizer)}
    log(f"[build] tiny CLIP zero-shot accuracy: {report['clip']['zero_shot_accuracy']}")
    step("clip")

    report["classifiers"] = {}
    clip = load_tiny_clip(clip_path)
    with tempfile.TemporaryDirectory(prefix="textcam-probe-") as probe_dir:
        probe = Path(probe_dir)
        ShapesWorld(INPUT_SIZE, seed=splits.PROBE).write_pngs(probe, probe_images)
        for task in TASKS:
            model = train(task, cnn_steps, seed=0, log=log)
            save_weights(model, artifacts.classifier_weights(task, stage))
            report["classifiers"][task] = {
                "steps": cnn_steps,
                "accuracy_train_distribution": accuracy(model, task, True),
                "accuracy_held_out": accuracy(model, task, False),
            }
            log(f"[build] {task} classifier: {report['classifiers'][task]}")
            step(f"train {task}")
            bundle = export_classifier(model, task, stage / artifacts.BUNDLES[task].name)
            step(f"export {task}")
            semantics = add_semantics(bundle, probe, clip, probe_description=(
                f"shapes world, {probe_images} held-out scenes (seed {splits.PROBE})"))
            report["classifiers"][task]["semantics"] = {"m": semantics.m, "phrases": semantics.phrases,
                                                         "probe_images": semantics.probe_images}
            step(f"semantics {task}")
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    report["sizes_bytes"] = {p.relative_to(stage).as_posix(): p.stat().st_size
                             for p in sorted(stage.rglob("*")) if p.is_file()}
    report["total_bytes"] = sum(report["sizes_bytes"].values())
    (stage / artifacts.REPORT.name).write_text(json.dumps(report, indent=2) + "\n")
    _swap_in(stage, out)
    return report


def _swap_in(stage: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=artifacts.ARTIFACTS, help="artifact folder (default: %(default)s)")
    parser.add_argument("--clip-steps", type=int, default=CLIP_STEPS)
    parser.add_argument("--cnn-steps", type=int, default=CNN_STEPS)
    parser.add_argument("--probe-images", type=int, default=PROBE_IMAGES)
    args = parser.parse_args(argv)
    if min(args.clip_steps, args.cnn_steps) < 1 or args.probe_images < 8:
        parser.error("--clip-steps and --cnn-steps must be >= 1, --probe-images >= 8")
    report = build(args.out, args.clip_steps, args.cnn_steps, args.probe_images,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({k: report[k] for k in ("clip", "classifiers", "seconds", "total_bytes")}, indent=2))


if __name__ == "__main__":
    main()
