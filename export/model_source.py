"""Turning a model spec (``torchvision:resnet50``, ``timm:vit_small_patch16_224``,
``package.module:factory``) and an optional state-dict file into an ``nn.Module`` in eval mode."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from textcam.errors import TextcamError, did_you_mean, first_line


@dataclass
class LoadedModel:
    module: nn.Module
    spec: str
    weights: str | None
    weights_sha256: str | None
    class_names: list[str] | None


def load_model(spec: str, num_classes: int | None = None, weights: str | Path | None = None) -> LoadedModel:
    """Build the model named by ``spec`` and load ``weights`` (a state dict) into it."""
    family, sep, name = spec.partition(":")
    if not sep or not name:
        raise TextcamError(
            f"--model {spec!r}: expected 'torchvision:NAME', 'timm:NAME' or 'package.module:factory'"
        )
    class_names = None
    if family == "torchvision":
        module, class_names = _torchvision(name, num_classes)
    elif family == "timm":
        module = _timm(name, num_classes)
    else:
        module = _factory(family, name, num_classes)
    if not isinstance(module, nn.Module):
        raise TextcamError(f"--model {spec!r}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    digest = None
    if weights is not None:
        digest = load_state_dict_file(module, Path(weights), spec)
        class_names = None  # the file's classes are unknown; pass class names explicitly
    return LoadedModel(module.eval(), spec, str(weights) if weights else None, digest, class_names)


def _torchvision(name: str, num_classes: int | None):
    import torchvision

    arch, _, pretrained = name.partition(":")
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise TextcamError(f"--model torchvision:{arch}: unknown torchvision model{did_you_mean(arch, available)}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None, **kwargs), None
    # torchvision:resnet50:IMAGENET1K_V2 -> the published weights (downloads once, then cached)
    try:
        weights = torchvision.models.get_model_weights(arch)[pretrained] if pretrained != "DEFAULT" else "DEFAULT"
        model = torchvision.models.get_model(arch, weights=weights, **kwargs)
    except KeyError:
        names = [w.name for w in torchvision.models.get_model_weights(arch)]
        raise TextcamError(f"--model torchvision:{name}: unknown weights; available: {', '.join(names)}") from None
    except (OSError, RuntimeError) as exc:
        raise TextcamError(
            f"--model torchvision:{name}: could not load the pretrained weights ({first_line(exc)}); "
            "download them where there is network access or pass --weights FILE"
        ) from None
    meta = getattr(torchvision.models.get_model_weights(arch), pretrained, None) if pretrained != "DEFAULT" else None
    return model, list(meta.meta["categories"]) if meta is not None else None


def _timm(name: str, num_classes: int | None):
    try:
        import timm
    except ImportError:
        raise TextcamError("--model timm:...: the timm package is not installed (pip install timm)") from None
    if not timm.list_models(name):
        raise TextcamError(f"--model timm:{name}: unknown timm model{did_you_mean(name, timm.list_models())}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(name, pretrained=False, **kwargs)


def _factory(module_name: str, attr: str, num_classes: int | None):
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TextcamError(f"--model {module_name}:{attr}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise TextcamError(f"--model {module_name}:{attr}: module {module_name!r} has no attribute {attr!r}")
    if isinstance(factory, nn.Module):
        return factory
    try:
        return factory() if num_classes is None else factory(num_classes=num_classes)
    except TypeError as exc:
        raise TextcamError(f"--model {module_name}:{attr}: calling the factory failed: {exc}") from None


def load_state_dict_file(module: nn.Module, path: Path, spec: str) -> str:
    """Load a state dict (optionally nested under 'state_dict' or 'model'); return the file's sha256."""
    if not path.is_file():
        raise TextcamError(f"--weights {path}: file not found")
    data = path.read_bytes()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TextcamError(f"--weights {path}: not a PyTorch state-dict file ({first_line(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TextcamError(f"--weights {path}: expected a state dict (parameter name -> tensor)")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            same_rows = own[k].dim() and own[k].shape[1:] == state[k].shape[1:]
            hint = " (set --num-classes to match the file)" if same_rows else ""
            parts.append(
                f"{len(mismatched)} shape mismatch(es), e.g. {k}: file {tuple(state[k].shape)} vs model "
                f"{tuple(own[k].shape)}{hint}"
            )
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise TextcamError(f"--weights {path}: does not match {spec}: " + "; ".join(parts))
    module.load_state_dict(state)
    return hashlib.sha256(data).hexdigest()
