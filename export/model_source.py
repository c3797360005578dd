"""Turning a model spec (``torchvision:resnet50``, ``timm:vit_small_patch16_224``,
``package.module:factory``) and an optional state-dict file into an ``nn.Module`` in eval mode."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from textcam.errors import TextcamError, did_you_mean, first_line

FAMILIES = ("torchvision", "timm")


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


def torchvision_model(arch: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """The torchvision architecture ``arch`` with fresh random weights (seed torch first for a fixed
    draw); ``kwargs`` go to its builder, e.g. ``image_size`` for a ViT. Not yet in eval mode."""
    import torchvision

    _check_torchvision_arch(arch)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _build(f"torchvision:{arch}", torchvision.models.get_model, arch, weights=None, **kwargs)


def _check_torchvision_arch(arch: str) -> None:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise TextcamError(f"--model torchvision:{arch}: unknown torchvision model{did_you_mean(arch, available)}")


def _torchvision(name: str, num_classes: int | None):
    import torchvision

    arch, _, pretrained = name.partition(":")
    if not pretrained:
        return torchvision_model(arch, num_classes), None
    _check_torchvision_arch(arch)
    # torchvision:resnet50:IMAGENET1K_V2 -> the published weights (downloads once, then cached)
    published = torchvision.models.get_model_weights(arch)
    try:
        weights = published.DEFAULT if pretrained == "DEFAULT" else published[pretrained]
    except (KeyError, AttributeError):
        names = [w.name for w in published]
        raise TextcamError(f"--model torchvision:{name}: unknown weights; available: {', '.join(names)}") from None
    categories = list(weights.meta.get("categories") or [])
    if num_classes is not None and num_classes != len(categories):
        raise TextcamError(
            f"--num-classes {num_classes}: the published weights torchvision:{name} have {len(categories)} "
            f"classes; drop --num-classes, or build torchvision:{arch} and pass your own --weights"
        )
    try:
        model = _build(f"torchvision:{name}", torchvision.models.get_model, arch, weights=weights)
    except (OSError, RuntimeError) as exc:
        raise TextcamError(
            f"--model torchvision:{name}: could not load the pretrained weights ({first_line(exc)}); "
            "download them where there is network access or pass --weights FILE"
        ) from None
    return model, categories or None


def _timm(name: str, num_classes: int | None):
    try:
        import timm
    except ImportError:
        raise TextcamError("--model timm:...: the timm package is not installed (pip install timm)") from None
    if not timm.list_models(name):
        raise TextcamError(f"--model timm:{name}: unknown timm model{did_you_mean(name, timm.list_models())}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return _build(f"timm:{name}", timm.create_model, name, pretrained=False, **kwargs)


def _factory(module_name: str, attr: str, num_classes: int | None):
    spec = f"{module_name}:{attr}"
    module = _import_user_module(module_name, spec)
    factory = getattr(module, attr, None)
    if factory is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise TextcamError(
            f"--model {spec}: module {module_name!r} has no attribute {attr!r}{did_you_mean(attr, public)}"
        )
    if isinstance(factory, nn.Module):
        if num_classes is not None:
            raise TextcamError(f"--num-classes: {spec} is a ready-made module, not a factory; drop the option")
        return factory
    if not callable(factory):
        raise TextcamError(f"--model {spec}: {attr!r} is a {type(factory).__name__}, not a factory function")
    if num_classes is None:
        return _build(spec, factory)
    try:
        accepts = "num_classes" in inspect.signature(factory).parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()
        )
    except (TypeError, ValueError):  # no signature (a builtin): just try
        accepts = True
    if not accepts:
        raise TextcamError(f"--num-classes: the factory {spec} takes no num_classes argument; drop the option")
    return _build(spec, factory, num_classes=num_classes)


def _is_missing(exc: ImportError, module_name: str) -> bool:
    """Whether ``exc`` says ``module_name`` itself (or a package above it) is not on the path, as
    opposed to the module being found and failing on an import of its own."""
    missing = getattr(exc, "name", None)
    if not isinstance(exc, ModuleNotFoundError) or not missing:
        return False
    return module_name == missing or module_name.startswith(f"{missing}.")


def _import_user_module(module_name: str, spec: str):
    """Import the module of ``package.module:factory``; the current directory counts, as with ``python -m``.

    The ``textcam`` console script does not put the current directory on ``sys.path`` (``python -m
    textcam`` does), so a module beside the user is looked up there too, after everything else.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        if not _is_missing(exc, module_name):
            raise TextcamError(
                f"--model {spec}: importing {module_name!r} raised {type(exc).__name__}: {first_line(exc)}"
            ) from None
        cwd = os.getcwd()
        top = module_name.partition(".")[0]
        beside = Path(cwd, f"{top}.py").is_file() or Path(cwd, top).is_dir()
        if beside and cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
            return _import_user_module(module_name, spec)
        hint = did_you_mean(module_name, FAMILIES)
        if not hint and "." not in module_name:
            hint = "; expected 'torchvision:NAME', 'timm:NAME' or 'package.module:factory' (importable)"
        raise TextcamError(
            f"--model {spec}: cannot import {module_name!r} (module not found: {first_line(exc)}); run textcam from "
            f"the folder that holds {top}.py, or set PYTHONPATH to that folder{hint}"
        ) from None
    except Exception as exc:  # the user's module failed while importing
        raise TextcamError(
            f"--model {spec}: importing {module_name!r} raised {type(exc).__name__}: {first_line(exc)}"
        ) from None


def _build(spec: str, factory, *args, **kwargs):
    """Call a model constructor; its failure is the user's to fix, reported in one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constructors' deprecation chatter is not the user's concern
            return factory(*args, **kwargs)
    except Exception as exc:
        if kwargs.get("weights") is not None and isinstance(exc, (OSError, RuntimeError)):
            raise  # downloading published weights: the caller explains
        kind = type(exc).__name__
        raise TextcamError(f"--model {spec}: building the model raised {kind}: {first_line(exc)}") from None


SAVE_HINT = "expected a state dict saved with torch.save(model.state_dict(), PATH)"


def load_state_dict_file(module: nn.Module, path: Path, spec: str) -> str:
    """Load a state dict (optionally nested under 'state_dict' or 'model'); return the file's sha256.

    ``.safetensors`` files are read with safetensors, anything else with ``torch.load``
    (``weights_only``: a file holding code is refused).
    """
    if not path.exists():
        raise TextcamError(f"--weights {path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TextcamError(f"--weights {path}: cannot read it ({exc.strerror or exc})") from None
    if not data:
        raise TextcamError(f"--weights {path}: the file is empty; {SAVE_HINT}")
    state = _read_state(path, data)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problem = f"holds {_kind(state)}, not a state dict (name -> tensor)"
        raise TextcamError(f"--weights {path}: {problem}; {SAVE_HINT}")
    own = module.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel / DDP
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatch(es), e.g. {k}: file {tuple(state[k].shape)} vs model "
                f"{tuple(own[k].shape)}{_num_classes_hint(module, mismatched, state)}"
            )
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        if (missing and unexpected) or len(missing) + len(unexpected) > len(own) // 10:
            parts.append("is the file for another architecture?")
        raise TextcamError(f"--weights {path}: does not match {spec}: " + "; ".join(parts))
    module.load_state_dict(state)
    return hashlib.sha256(data).hexdigest()


def _read_state(path: Path, data: bytes):
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load as load_safetensors

            return load_safetensors(data)
        except Exception as exc:
            problem = f"not a readable safetensors file ({first_line(exc)})"
            raise TextcamError(f"--weights {path}: {problem}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if pickled:
            problem = f"it pickles Python objects ({pickled.group(1)}), not only tensors: a whole model?"
        elif data[:4] == b"PK\x03\x04":
            problem = "the file looks truncated or damaged (a torch.save archive that cannot be read)"
        else:
            problem = f"not a PyTorch checkpoint (torch.load failed: {type(exc).__name__})"
        raise TextcamError(f"--weights {path}: {problem}; {SAVE_HINT}") from None


def _kind(value) -> str:
    if isinstance(value, dict):
        if not value:
            return "an empty dict"
        odd = next(k for k, v in value.items() if not isinstance(v, torch.Tensor))
        return f"a dict whose entry {odd!r} is a {type(value[odd]).__name__}"
    return f"a {type(value).__name__}"


def _num_classes_hint(module: nn.Module, mismatched: list[str], state: dict) -> str:
    """' (pass --num-classes K to match the file)' when only the classifier's size differs."""
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return ""
    head = {f"{linears[-1]}.weight", f"{linears[-1]}.bias"}
    weight = state.get(f"{linears[-1]}.weight")
    if not set(mismatched) <= head or weight is None or weight.dim() != 2:
        return ""
    return f" (pass --num-classes {weight.shape[0]} to match the file)"
