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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from textcam.errors import TextcamError, did_you_mean, first_line


def register_configs() -> None:
    import open_clip

    folder = resources.files("textcam.semantics_store").joinpath("clip_configs")
    open_clip.add_model_config(Path(str(folder)))


@dataclass
class Coverage:
    """How much of a vocabulary the CLIP text tower can actually read.

    A phrase is covered when every token of it (and of every prompt template) has a row in the
    token-embedding table that holds data. A compact checkpoint keeps only the rows its texts used
    (``SPARSE_ROWS_SUFFIX``); every other token loads as a zero row, and a phrase made of such
    tokens embeds as confident nonsense. For a full CLIP every phrase is covered.
    """

    phrases: int
    covered: int
    affected: list[str] = field(default_factory=list)
    """Phrases with at least one token the checkpoint does not hold, in vocabulary order."""
    missing_words: list[str] = field(default_factory=list)
    """The words of those phrases (and templates) that map to missing rows, distinct, in order."""
    template_words: list[str] = field(default_factory=list)
    """Words of the prompt templates that map to missing rows (then every phrase is affected)."""
    truncated: int = 0
    """Prompts longer than the text tower's context, which cuts them."""
    checked: bool = True
    """False when this CLIP's tokenizer or embedding table cannot be inspected."""

    @property
    def fraction(self) -> float:
        return self.covered / self.phrases if self.phrases else 1.0

    def describe(self) -> str:
        if not self.checked:
            return f"{self.phrases} phrases; coverage not checked (this CLIP's tokenizer cannot be inspected)"
        text = (f"{self.covered} of {self.phrases} phrases ({100 * self.fraction:.1f}%) fully covered by the CLIP "
                "tokenizer and embedding table")
        if self.truncated:
            text += f"; {self.truncated} prompt(s) longer than the text context are cut"
        return text


class ClipEncoder:
    """Embeds images and phrases; every embedding is L2-normalized float32."""

    def __init__(self, model, preprocess, tokenizer, model_id: str, source: str | None = None):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.source = source or model_id
        """What to name in messages: the checkpoint file, or the --clip spec."""
        self._held_rows: np.ndarray | None = None

    def held_token_rows(self) -> np.ndarray | None:
        """bool [vocab]: which token-embedding rows hold data (False: a zero row, unknown to the checkpoint)."""
        if self._held_rows is None:
            table = getattr(getattr(self.model, "token_embedding", None), "weight", None)
            if table is None:
                return None
            self._held_rows = (table.detach() != 0).any(dim=1).cpu().numpy()
        return self._held_rows

    def _token_ids(self, text: str) -> list[int] | None:
        encode = getattr(self.tokenizer, "encode", None)
        return list(encode(text)) if callable(encode) else None

    def coverage(self, phrases: Sequence[str], templates: Sequence[str]) -> Coverage:
        """Which ``phrases`` (through ``templates``) use only tokens this CLIP holds; see :class:`Coverage`."""
        held = self.held_token_rows()
        if held is None or self._token_ids("x") is None:
            return Coverage(len(phrases), len(phrases), checked=False)

        def missing_words(text: str) -> list[str]:
            ids = self._token_ids(text) or []
            if all(0 <= i < len(held) and held[i] for i in ids):
                return []
            return [w for w in text.split() if not all(0 <= i < len(held) and held[i]
                                                       for i in self._token_ids(w) or [])] or [text]

        template_words = [w for t in templates for w in missing_words(t.replace("{}", " "))]
        affected, words = [], list(dict.fromkeys(template_words))
        for phrase in phrases:
            missing = missing_words(phrase)
            if missing or template_words:
                affected.append(phrase)
                words.extend(w for w in missing if w not in words)
        context = getattr(self.tokenizer, "context_length", None)
        truncated = 0
        if context:
            overhead = max(len(self._token_ids(t.replace("{}", "")) or []) for t in templates) if templates else 0
            truncated = sum(len(self._token_ids(p) or []) + overhead + 2 > context for p in phrases)
        return Coverage(len(phrases), len(phrases) - len(affected), affected, words, template_words, truncated)

    def check_coverage(self, phrases: Sequence[str], templates: Sequence[str], where: str = "vocab") -> Coverage:
        """:meth:`coverage`, refusing (one line) a vocabulary with phrases this CLIP cannot read."""
        report = self.coverage(phrases, templates)
        if report.affected:
            shown = ", ".join(repr(w) for w in report.missing_words[:5])
            more = f" and {len(report.missing_words) - 5} more" if len(report.missing_words) > 5 else ""
            cause = (f"the templates use words it does not hold ({shown}{more})" if report.template_words else
                     f"they use words it does not hold ({shown}{more})")
            raise TextcamError(
                f"{where}: {len(report.affected)} of {report.phrases} phrase(s) cannot be read by the CLIP "
                f"{self.source}: {cause}, which embed as zero vectors; "
                + ("change the templates" if report.template_words else "drop those phrases")
                + ", or use a CLIP trained on them (the compact tiny CLIP reads builtin:shapes-world)"
            )
        return report

    @property
    def dim(self) -> int:
        import torch

        with torch.no_grad():
            return int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])

    def embed_images(self, images: Sequence) -> np.ndarray:
        import torch

        # on the model's device: a Ray embedding actor with a GPU moves the model there
        device = next(self.model.parameters()).device
        batch = torch.stack([self.preprocess(image) for image in images]).to(device)
        with torch.no_grad():
            features = self.model.encode_image(batch).float().cpu()
        return _normalize(features.numpy())

    def embed_phrases(self, phrases: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Each phrase through every template, embeddings averaged then normalized (docs/architecture.md section 4.4).

        Phrases with tokens the checkpoint does not hold are refused (:meth:`check_coverage`).
        """
        import torch

        self.check_coverage(phrases, templates, where="phrases")
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
    source = f"--clip {spec}" if spec else None
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
        source = f"checkpoint {path}"
    return ClipEncoder(model, preprocess, open_clip.get_tokenizer(name), model_id, source)
