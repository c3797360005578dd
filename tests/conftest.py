"""Shared fixtures: one way to get a test bundle.

``make_bundle(...)`` exports a model into a bundle once per test session for each distinct set of
arguments and returns its path; tests treat that bundle as read-only. A test that changes its bundle
asks for ``copy=True`` (a fresh copy in a new temporary folder) or ``copy=<path>`` (a copy at that
path). ``default_bundle_copy`` is a fresh copy of the built-in shapes-world bundle.

The helper modules beside this file (``semantics_helpers``) are put on ``sys.path`` here: the suite
runs with ``--import-mode=importlib``, which adds nothing to it.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from semantics_helpers import CLASSES, add_semantics  # noqa: E402

from textcam.engines.build import record_engine  # noqa: E402
from textcam.engines.entries import BatchProfile, EngineEntry, engine_file_name  # noqa: E402
from textcam.runtime.bundle_files import read_manifest, sha256_file  # noqa: E402

NATIVE_TEST_FILES = ("test_native.py", "test_native_gpu.py", "test_benchmark_native.py")


def pytest_report_header(config):
    """The instruction set the kernels dispatch on: results that depend on it are judged against float64,
    and `scripts/test.sh --portable` runs the suite as on an AVX2-only CPU (docs/development.md)."""
    import os

    import numpy as np

    features = np._core._multiarray_umath.__cpu_features__
    wide = [name for name in ("AVX2", "AVX512F", "AVX512_SPR") if features.get(name)]
    masked = "cpuid_avx2" in os.environ.get("LD_PRELOAD", "")
    source = "CPUID masked to AVX2 (--portable)" if masked else "as the machine reports"
    return f"cpu: {', '.join(wide) or 'no AVX2'} ({source})"


@pytest.fixture(autouse=True)
def _numpy_path_unless_asked(request, monkeypatch):
    """Every test but the native ones runs the numpy path, the reference (many replace its pieces:
    a runner, ``images.preprocess``). ``tests/test_native.py`` holds the C++ core to it."""
    if request.node.path.name not in NATIVE_TEST_FILES:
        monkeypatch.setenv("TEXTCAM_NATIVE", "0")


def _tiny_cnn():
    """conv-relu-maxpool, two more convs, GAP, linear (4 classes); explained at ``block``: forward nodes on
    both sides of the target layer, a MaxPool whose backward is rebuilt, and a weight used by both the
    forward and the backward pass."""
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
            self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.head = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.head(self.block(self.stem(x))).mean(dim=(2, 3)))

    return TinyCNN().eval()


def _resnet18(classes):
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=len(classes))


# model name -> (builder from the class names, the bundle folder's name)
NAMED_MODELS: dict[str, tuple[Callable, str]] = {
    "resnet18": (_resnet18, "resnet18.textcam"),
    "tiny-cnn": (lambda classes: _tiny_cnn(), "tiny.textcam"),
}


def _module_key(module) -> tuple:
    """What makes two exports the same: the module's class and every value in its state dict."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    kind = type(module)
    return (kind.__module__, kind.__qualname__, module.training, digest.hexdigest())


def _store_key(store) -> str:
    from textcam.runtime.semantics_file import store_bytes

    return hashlib.sha256(store_bytes(store)).hexdigest()


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory):
    """The bundle factory. ``make_bundle(model="resnet18", layer="layer4", *, input_size=(64, 64),
    classes=CLASSES, with_activations=False, seed=0, semantics=None, semantics_defaults=None,
    fused_candidates=24, copy=False, **export_options) -> Path``

    - ``model``: a name (``"resnet18"``: torchvision's, random weights, one output per class;
      ``"tiny-cnn"``: a 4-class conv net, see ``_tiny_cnn``; ``"default"``: the built-in shapes-world
      bundle, nothing exported), a ``torch.nn.Module``, or a callable returning one, or the ``Path`` of
      an existing bundle (to copy it, or add semantics to it). Names and callables are built after
      ``torch.manual_seed(seed)``; a module is exported as given.
    - ``layer``, ``input_size``, ``classes``, ``with_activations`` and ``export_options`` (``method``,
      ``mean``, ``std``, ``resize``, ...) go to ``export_bundle``; ``classes=None`` exports without names.
    - ``semantics``: a ``SemanticsStore`` (see ``semantics_helpers.make_store``) added as ``textcam
      semantics`` would, with the fused ranking graph over ``fused_candidates`` (``None``: no fused
      graph) and ``semantics_defaults``; a store without ``model_sha256`` is bound to the exported model.
    - ``copy``: ``False`` returns the session's shared bundle (do not change it); ``True`` a fresh copy
      in a new temporary folder; a path, a fresh copy at that path.

    Exports are cached by the arguments (a module by its class and weights, a store by its bytes).
    """
    import dataclasses

    cache: dict[tuple, Path] = {}

    def export(model, layer, input_size, classes, with_activations, seed, export_options) -> Path:
        torch = pytest.importorskip("torch")
        from textcam.export import export_bundle

        if isinstance(model, str):
            build, folder = NAMED_MODELS[model]
            torch.manual_seed(seed)
            module = build(classes)
        elif isinstance(model, torch.nn.Module):
            module, folder = model, f"{type(model).__name__.lower()}.textcam"
        else:
            torch.manual_seed(seed)
            module = model()
            folder = f"{type(module).__name__.lower()}.textcam"
        key = ("export", _module_key(module), layer, _freeze(input_size), _freeze(classes), with_activations,
               _freeze(export_options))
        if key not in cache:
            out = tmp_path_factory.mktemp("bundles") / folder
            cache[key] = export_bundle(module, layer, out, input_size=input_size, class_names=classes,
                                       with_activations=with_activations, **export_options).path
        return cache[key]

    def with_semantics(bundle: Path, store, defaults, fused_candidates) -> Path:
        from semantics_helpers import model_sha256

        if not store.model_sha256:
            store = dataclasses.replace(store, model_sha256=model_sha256(bundle))
        key = ("semantics", bundle, _store_key(store), _freeze(defaults), fused_candidates)
        if key not in cache:
            target = tmp_path_factory.mktemp("bundles") / bundle.name
            shutil.copytree(bundle, target)
            cache[key] = add_semantics(target, store, fused_candidates=fused_candidates, defaults=defaults)
        return cache[key]

    def make(model="resnet18", layer: str | None = "layer4", *, input_size=(64, 64), classes=CLASSES,
             with_activations=False, seed=0, semantics=None, semantics_defaults=None, fused_candidates=24,
             copy: bool | Path = False, **export_options) -> Path:
        if isinstance(model, Path) or (isinstance(model, str) and model == "default"):
            from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

            bundle = DEFAULT_BUNDLE if model == "default" else model
        else:
            classes = None if classes is None else list(classes)
            bundle = export(model, layer, input_size, classes, with_activations, seed, export_options)
        if semantics is not None:
            bundle = with_semantics(bundle, semantics, semantics_defaults, fused_candidates)
        if copy is False:
            return bundle
        target = tmp_path_factory.mktemp("copy") / bundle.name if copy is True else Path(copy)
        shutil.copytree(bundle, target)
        return target

    return make


@pytest.fixture(scope="session")
def small_bundle(make_bundle) -> Path:
    """A resnet18 (random weights, seed 0, 5 classes) explained at layer4, 64x64 input."""
    return make_bundle()


@pytest.fixture(scope="session")
def tiny_bundle(make_bundle) -> Path:
    """The tiny conv net (see ``_tiny_cnn``) explained at its middle block, 32x32 input, classes a-d."""
    return make_bundle("tiny-cnn", "block", input_size=(32, 32), classes=["a", "b", "c", "d"])


@pytest.fixture
def tiny_bundle_copy(make_bundle, tiny_bundle, tmp_path) -> Path:
    """A fresh copy of ``tiny_bundle``, ``tmp_path / "tiny.textcam"``, for a test that changes it."""
    return make_bundle(tiny_bundle, copy=tmp_path / tiny_bundle.name)


@pytest.fixture
def default_bundle_copy(make_bundle, tmp_path) -> Path:
    """A fresh copy of the built-in shapes-world bundle, ``tmp_path / "color.textcam"``."""
    from textcam.shapes_world.artifacts import DEFAULT_BUNDLE

    return make_bundle("default", copy=tmp_path / DEFAULT_BUNDLE.name)


# --- TensorRT engines ----------------------------------------------------------------------------------------


@pytest.fixture
def add_fake_engine():
    """``add_fake_engine(bundle, data, cc="9.0", trt="10.8.0.43", precision="fp32") -> EngineEntry``: write
    ``data`` as an engine file and record it in the manifest (profile 1-8-32, concurrency 2), as
    ``textcam build-engine`` would record a real one."""
    def add(bundle: Path, data: bytes, cc="9.0", trt="10.8.0.43", precision="fp32") -> EngineEntry:
        name = engine_file_name(precision, cc, trt)
        (bundle / "engines").mkdir(exist_ok=True)
        (bundle / "engines" / name).write_bytes(data)
        entry = EngineEntry(f"engines/{name}", precision, trt, cc, BatchProfile(1, 8, 32), 2, "Some GPU",
                            model_sha256=read_manifest(bundle).model.graph.sha256,
                            sha256=sha256_file(bundle / "engines" / name), size_bytes=len(data))
        record_engine(bundle, entry)
        return entry

    return add


@pytest.fixture(scope="module")
def gpu_bundle(make_bundle, tiny_bundle) -> Path:
    """A copy of ``tiny_bundle`` per test module, for the ``gpu`` tests to build engines into."""
    return make_bundle(tiny_bundle, copy=True)


@pytest.fixture(scope="module")
def fp32_engine(gpu_bundle):
    """An fp32 TensorRT engine (batch 1-4-8, two contexts) built into ``gpu_bundle`` (needs a GPU)."""
    from textcam.engines.build import build_engine

    return build_engine(gpu_bundle, "fp32", 1, 4, 8, concurrency=2)
