"""CLIP through open_clip: the image and text towers that give channels and phrases a shared space.

``--clip MODEL[:PRETRAINED]`` builds an open_clip model (``ViT-B-32:openai`` downloads the
published weights where downloads are possible); ``--clip-checkpoint PATH --clip-model MODEL``
loads a local state dict into a named architecture. textcam adds its own small configs
(``textcam-tiny-clip``, trained on the shapes world) to open_clip's registry.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np

from textcam.errors import TextcamError, did_you_mean, first_line


def register_configs() -> None:
    import open_clip

    folder = resources.files("textcam.semantics_store").joinpath("clip_configs")
    open_clip.add_model_config(Path(str(folder)))


class ClipEncoder:
    """Embeds images and phrases; every embedding is L2-normalized float32."""

    def __init__(self, model, preprocess, tokenizer, model_id: str):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id

    @property
    def dim(self) -> int:
        import torch

        with torch.no_grad():
            return int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])

    def embed_images(self, images: Sequence) -> np.ndarray:
        import torch

        batch = torch.stack([self.preprocess(image) for image in images])
        with torch.no_grad():
            features = self.model.encode_image(batch).float()
        return _normalize(features.numpy())

    def embed_phrases(self, phrases: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Each phrase through every template, embeddings averaged then normalized (DESIGN 4.4)."""
        import torch

        prompts = [template.format(phrase) for phrase in phrases for template in templates]
        chunks = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                tokens = self.tokenizer(prompts[start : start + batch_size])
                chunks.append(_normalize(self.model.encode_text(tokens).float().numpy()))
        per_prompt = np.concatenate(chunks).reshape(len(phrases), len(templates), -1)
        return _normalize(per_prompt.mean(axis=1))


SPARSE_ROWS_SUFFIX = ".rows"
"""A compact (``.safetensors``) checkpoint may store a large embedding table as only the rows a
model uses: ``NAME.rows`` (int64 row ids) next to ``NAME`` (those rows); other rows load as zero.
A tiny CLIP trained on a closed world uses a few hundred of its tokenizer's 49,408 tokens."""


def read_checkpoint(path: Path, reference: dict) -> dict:
    """A state dict from a PyTorch file or a (compact) safetensors file, shaped like ``reference``."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TextcamError(f"--clip-checkpoint {path}: not a PyTorch or safetensors checkpoint ({first_line(exc)})") \
            from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise TextcamError(f"--clip-checkpoint {path}: expected a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for key in [k for k in state if k.endswith(SPARSE_ROWS_SUFFIX)]:
        name = key.removesuffix(SPARSE_ROWS_SUFFIX)
        rows, values = state.pop(key), state.get(name)
        if name not in reference or values is None or values.shape[0] != rows.shape[0]:
            raise TextcamError(f"--clip-checkpoint {path}: sparse rows of {name!r} do not fit the model")
        full = torch.zeros(reference[name].shape, dtype=values.dtype)
        full[rows.long()] = values
        state[name] = full
    return state


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@contextmanager
def _quiet_logs():
    """open_clip and the hub client log every retry and 'initialized randomly'; errors still surface."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def load_clip(spec: str | None = None, checkpoint: str | None = None, model_name: str | None = None) -> ClipEncoder:
    """Build the CLIP encoder from ``--clip`` or from ``--clip-checkpoint`` + ``--clip-model``."""
    try:
        import open_clip
        import torch  # noqa: F401  (checked here so a missing torch gets the same one-line hint)
    except ImportError:
        raise TextcamError("textcam semantics needs the semantics extra: pip install 'textcam[semantics]'") from None
    register_configs()
    if (spec is None) == (checkpoint is None):
        raise TextcamError("pass either --clip MODEL[:PRETRAINED] or --clip-checkpoint PATH with --clip-model MODEL")
    name, _, pretrained = (spec or model_name or "").partition(":")
    if checkpoint is not None and not model_name:
        raise TextcamError("--clip-checkpoint needs --clip-model naming its architecture (see open_clip.list_models())")
    available = open_clip.list_models()
    if name not in available:
        raise TextcamError(f"CLIP model {name!r}: unknown{did_you_mean(name, available)} (available: "
                           f"{', '.join(available[:12])}, ... {len(available)} in all)")
    try:
        with _quiet_logs():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
    except Exception as exc:  # open_clip raises RuntimeError/OSError/hub errors for missing weights
        tags = open_clip.list_pretrained_tags_by_model(name)
        tags = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "") if tags else "none published"
        raise TextcamError(
            f"--clip {spec}: cannot load ({first_line(exc)}); pretrained tags for {name}: {tags}; offline, use "
            "--clip-checkpoint PATH --clip-model NAME"
        ) from None
    model_id = f"{name}:{pretrained}" if pretrained else name
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise TextcamError(f"--clip-checkpoint {path}: file not found")
        state = read_checkpoint(path, model.state_dict())
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise TextcamError(
                f"--clip-checkpoint {path}: does not fit --clip-model {name} ({first_line(exc, 200)})"
            ) from None
        model_id = f"{name}@sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    return ClipEncoder(model, preprocess, open_clip.get_tokenizer(name), model_id)
