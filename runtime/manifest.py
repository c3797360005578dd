"""The bundle's ``manifest.json``, typed: one dataclass per section, validated on the way in.

This module owns the bundle format. Every reader goes through :meth:`Manifest.from_dict` (types,
ranges, finite numbers, known names, non-empty unique class names, file names that stay inside
the bundle) and every writer through :meth:`Manifest.to_dict`; nothing else builds manifest
dicts by hand. The same rules, for hosts in other languages, are in ``manifest.schema.json``
beside this file (:func:`schema_path`); a test keeps the two in step.

Files named by the manifest (``model.file``, ``model.external_data.file``, ``semantics.file``,
``fused_graph.file``, ``engines[].file``, ``engines[].onnx``, ``selftest.file``) are
:class:`FileRef`: a relative path inside the bundle, its size and its sha256.
:class:`textcam.runtime.bundle.Bundle` resolves and checks them; nobody else joins paths from
manifest strings.

Format history: version 1 nested ``fused_graph`` inside ``semantics`` and did not record the size
of the semantics files; :meth:`Manifest.from_dict` reads it (sizes then unknown, checked against
the per-kind caps and the mandatory sha256) and writes version 2.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from textcam.errors import TextcamError

FORMAT_NAME = "textcam-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "cam")
"""Every CAM method a graph may carry (the export's method table; a test keeps them equal)."""
CHANNEL_WEIGHT_METHODS = ("gradcam", "gradcam++", "xgradcam", "cam")
"""Methods whose map is sum_j w_j A_j (so the map splits into channel groups): the export's
``CamMethod.channel_weights`` flag, restated here because the runtime does not import the export
(a test keeps them equal). :mod:`textcam.runtime.concepts` reads it from here."""
LAYOUT_KINDS = ("nchw", "nhwc", "tokens")
RESIZE_POLICIES = ("stretch", "center_crop")
BETA_MODES = ("contribution", "weights")
REQUIRED_INPUTS = ("image", "target_class")
REQUIRED_OUTPUTS = ("logits", "class_index", "cam", "channel_weights", "channel_activation")

MAX_SIDE = 16384
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 1 << 20
MAX_NAME_CHARS = 1000
MAX_DEPTH = 16
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

FILE_CAPS = {
    "model": 1 << 36,  # 64 GiB: the graph, or the weights of a graph past 2 GB (model.external_data)
    "semantics": 1 << 30,
    "fused_graph": 1 << 36,
    "engine": 1 << 36,
    "engine_onnx": 1 << 36,
    "selftest": 1 << 28,
}
"""The largest file of each kind a bundle may name (bytes): nothing bigger is ever read."""


def schema_path():
    """The JSON Schema of the manifest, shipped with the package (a ``Traversable``)."""
    return resources.files("textcam.runtime").joinpath("manifest.schema.json")


class _Checker:
    """Reads one JSON object with one-line errors that name the manifest and the key."""

    def __init__(self, data: Any, where: str, section: str = ""):
        self.where, self.section = where, section
        if not isinstance(data, dict):
            raise self.error(f"{section or 'manifest'} must be an object", "")
        self.data = data

    def error(self, problem: str, key: str | None = None) -> TextcamError:
        name = ".".join(p for p in (self.section, key if key is not None else "") if p)
        prefix = f"'{name}' " if name else ""
        return TextcamError(f"{self.where}: {prefix}{problem}; re-run the textcam stage that wrote it")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = ...) -> Any:
        if self.data.get(key) is None:
            if default is ...:
                raise self.error("is missing", key)
            return default
        return self.data[key]

    def text(self, key: str, default: Any = ..., choices: tuple[str, ...] | None = None, limit: int = 4096):
        value = self.get(key, default)
        if value is default and default is not ...:
            return value
        if not isinstance(value, str) or not value or len(value) > limit:
            raise self.error(f"must be a non-empty string of at most {limit} characters", key)
        if choices and value not in choices:
            raise self.error(f"is {value!r}; expected one of {', '.join(choices)}", key)
        return value

    def integer(self, key: str, low: int, high: int, default: Any = ...) -> int:
        return _integer(self.get(key, default), low, high, lambda p: self.error(p, key))

    def number(self, key: str, default: Any = ..., positive: bool = False) -> float:
        return _number(self.get(key, default), positive, lambda p: self.error(p, key))

    def flag(self, key: str, default: Any = ...) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error("must be true or false", key)
        return value

    def triple(self, key: str, positive: bool = False) -> tuple[float, float, float]:
        value = self.get(key)
        if not isinstance(value, list) or len(value) != 3:
            raise self.error("must be a list of three numbers (R, G, B)", key)
        return tuple(_number(v, positive, lambda p: self.error(p, key)) for v in value)

    def sha256(self, key: str = "sha256") -> str:
        value = self.get(key)
        if not isinstance(value, str) or not _SHA256.match(value):
            raise self.error("must be 64 lowercase hexadecimal digits", key)
        return value

    def child(self, key: str) -> _Checker:
        return _Checker(self.get(key), self.where, ".".join(p for p in (self.section, key) if p))

    def extras(self, known: set[str]) -> dict[str, Any]:
        """Keys this version does not interpret, kept as they are (scalars and shallow JSON only)."""
        rest = {k: v for k, v in self.data.items() if k not in known}
        for key, value in rest.items():
            _check_plain_json(value, lambda p, key=key: self.error(p, key))
        return rest


def _integer(value: Any, low: int, high: int, error) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"must be an integer between {low} and {high}")
    if not low <= value <= high:
        raise error(f"is {value}; expected an integer between {low} and {high}")
    return value


def _number(value: Any, positive: bool, error) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error("must be a finite number")
    if positive and value <= 0:
        raise error(f"is {value}; expected a positive number")
    return float(value)


def _check_plain_json(value: Any, error, depth: int = 0) -> None:
    """Finite numbers, strings, booleans, null, and lists/objects of them, nested at most MAX_DEPTH deep."""
    if depth > MAX_DEPTH:
        raise error(f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise error("holds a non-finite number")
    if isinstance(value, dict):
        for item in value.values():
            _check_plain_json(item, error, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_plain_json(item, error, depth + 1)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise error("holds a value that is not JSON")


def check_relative_name(name: Any, error) -> str:
    """A file name the manifest may use: relative, inside the bundle, no ``..``, plain characters."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise error("must be a file name inside the bundle")
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts) or len(parts) > 2
            or not all(re.fullmatch(r"[A-Za-z0-9._+-]+", p) for p in parts) or name == "manifest.json"):
        raise error(f"is {name!r}; expected a plain relative file name inside the bundle (no '..', no absolute path)")
    return name


@dataclass(frozen=True)
class FileRef:
    """A file inside the bundle: its relative name, size in bytes and sha256 (both checked on open)."""

    file: str
    sha256: str
    size_bytes: int | None  # None only for sections read from a format-1 manifest

    @classmethod
    def read(cls, check: _Checker, kind: str, name_key: str = "file", sha_key: str = "sha256",
             size_key: str = "size_bytes", legacy: bool = False) -> FileRef:
        name = check_relative_name(check.get(name_key), lambda p: check.error(p, name_key))
        size = None if legacy and not check.has(size_key) else check.integer(size_key, 0, FILE_CAPS[kind])
        return cls(name, check.sha256(sha_key), size)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "size_bytes": self.size_bytes}


@dataclass(frozen=True)
class ModelSection:
    source: str
    graph: FileRef
    num_classes: int
    details: dict[str, Any] = field(default_factory=dict)
    """What the exporter knew of the model's origin (weights file, task, ...), kept as given."""
    external_data: FileRef | None = None
    """The graph's weights, for a model too large for one ONNX file (protobuf's 2 GB): ONNX
    external data, which the graph names by this file name, next to it in the bundle."""

    @classmethod
    def from_dict(cls, check: _Checker) -> ModelSection:
        data = FileRef.read(check.child("external_data"), "model") if check.has("external_data") else None
        return cls(check.text("source", limit=MAX_NAME_CHARS), FileRef.read(check, "model"),
                   check.integer("num_classes", 1, MAX_CLASSES),
                   check.extras({"source", "file", "sha256", "size_bytes", "num_classes", "external_data"}), data)

    def to_dict(self) -> dict[str, Any]:
        data = {"external_data": self.external_data.to_dict()} if self.external_data else {}
        return {"source": self.source, **self.details, **self.graph.to_dict(), **data,
                "num_classes": self.num_classes}


@dataclass(frozen=True)
class InputSection:
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "stretch"
    scale: float = 1 / 255
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "RGB"
    preprocessing: dict[str, Any] | None = None
    """The exact recipe (colour conversion, resize filter and rounding, normalization) that hosts in
    other languages implement; see :mod:`textcam.runtime.preprocessing_spec`."""

    @classmethod
    def from_dict(cls, check: _Checker) -> InputSection:
        preprocessing = check.get("preprocessing", None)
        if preprocessing is not None:
            if not isinstance(preprocessing, dict):
                raise check.error("must be an object", "preprocessing")
            _check_plain_json(preprocessing, lambda p: check.error(p, "preprocessing"))
        return cls(
            height=check.integer("height", 1, MAX_SIDE), width=check.integer("width", 1, MAX_SIDE),
            mean=check.triple("mean"), std=check.triple("std", positive=True),
            resize=check.text("resize", "stretch", RESIZE_POLICIES),
            scale=check.number("scale", 1 / 255, positive=True),
            layout=check.text("layout", "NCHW", ("NCHW",)), dtype=check.text("dtype", "float32", ("float32",)),
            color=check.text("color", "RGB", ("RGB",)), preprocessing=preprocessing,
        )

    def to_dict(self) -> dict[str, Any]:
        data = {"height": self.height, "width": self.width, "layout": self.layout, "dtype": self.dtype,
                "color": self.color, "scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize}
        if self.preprocessing is not None:
            data["preprocessing"] = self.preprocessing
        return data


@dataclass(frozen=True)
class TargetLayerSection:
    name: str
    kind: str
    channels: int
    grid: tuple[int, int]
    prefix_tokens: int = 0

    @classmethod
    def from_dict(cls, check: _Checker) -> TargetLayerSection:
        grid = check.get("grid")
        if not isinstance(grid, list) or len(grid) != 2:
            raise check.error("must be [height, width]", "grid")
        return cls(check.text("name", limit=MAX_NAME_CHARS), check.text("kind", choices=LAYOUT_KINDS),
                   check.integer("channels", 1, MAX_CHANNELS),
                   tuple(_integer(g, 1, MAX_SIDE, lambda p: check.error(p, "grid")) for g in grid),
                   check.integer("prefix_tokens", 0, MAX_SIDE, 0))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "channels": self.channels, "grid": list(self.grid),
                "prefix_tokens": self.prefix_tokens}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, check: _Checker) -> TensorSpec:
        shape = check.get("shape")
        if not isinstance(shape, list) or len(shape) > 8:
            raise check.error("must be a list of at most 8 dimensions", "shape")
        for dim in shape:
            if not (isinstance(dim, str) and 0 < len(dim) <= 64) and (
                    isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= 1 << 31):
                raise check.error("dimensions must be sizes or names", "shape")
        return cls(check.text("name", limit=256), check.text("dtype", limit=32), tuple(shape))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSection:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    has_activations: bool = False

    @classmethod
    def from_dict(cls, check: _Checker) -> GraphSection:
        specs = {}
        for key in ("inputs", "outputs"):
            items = check.get(key)
            if not isinstance(items, list) or len(items) > 64:
                raise check.error("must be a list of tensors", key)
            specs[key] = tuple(TensorSpec.from_dict(_Checker(item, check.where, f"{check.section}.{key}"))
                               for item in items)
        inputs = [s.name for s in specs["inputs"]]
        outputs = [s.name for s in specs["outputs"]]
        if inputs != list(REQUIRED_INPUTS):
            raise check.error(f"are {inputs}; expected {list(REQUIRED_INPUTS)}", "inputs")
        missing = [n for n in REQUIRED_OUTPUTS if n not in outputs]
        if missing or len(set(outputs)) != len(outputs):
            raise check.error(f"lack {', '.join(missing) or 'unique names'}", "outputs")
        has_activations = check.flag("has_activations", False)
        if has_activations != ("activations" in outputs):
            raise check.error("disagrees with the outputs listed", "has_activations")
        return cls(specs["inputs"], specs["outputs"], has_activations)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs],
                "has_activations": self.has_activations}


@dataclass(frozen=True)
class VerificationSection:
    passed: bool
    batch_sizes: tuple[int, ...] = ()
    errors: dict[str, Any] = field(default_factory=dict)
    """Worst errors against the reference (``logits_max_rel_err``, ...), seed and reference name."""

    @classmethod
    def from_dict(cls, check: _Checker) -> VerificationSection:
        sizes = check.get("batch_sizes", [])
        if not isinstance(sizes, list):
            raise check.error("must be a list", "batch_sizes")
        return cls(check.flag("passed"),
                   tuple(_integer(s, 1, 1 << 20, lambda p: check.error(p, "batch_sizes")) for s in sizes),
                   check.extras({"passed", "batch_sizes"}))

    def to_dict(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes), **self.errors, "passed": self.passed}


@dataclass(frozen=True)
class SemanticsSection:
    store: FileRef
    channels: int
    dim: int
    vocabulary_size: int
    clip_model: str
    lda: str
    m: int
    defaults: dict[str, Any] = field(default_factory=dict)
    """Concept-selection settings (beta, top_k, candidates, l1, l2, steps, ...); checked when used."""

    @classmethod
    def from_dict(cls, check: _Checker, legacy: bool = False) -> SemanticsSection:
        defaults = check.get("defaults", {})
        if not isinstance(defaults, dict):
            raise check.error("must be an object", "defaults")
        _check_plain_json(defaults, lambda p: check.error(p, "defaults"))
        return cls(FileRef.read(check, "semantics", legacy=legacy), check.integer("channels", 1, MAX_CHANNELS),
                   check.integer("dim", 1, 1 << 16), check.integer("vocabulary_size", 1, 1 << 24),
                   check.text("clip_model", limit=MAX_NAME_CHARS), check.text("lda", limit=64),
                   check.integer("m", 1, 1 << 24), defaults)

    def to_dict(self) -> dict[str, Any]:
        return {**self.store.to_dict(), "channels": self.channels, "dim": self.dim,
                "vocabulary_size": self.vocabulary_size, "clip_model": self.clip_model, "lda": self.lda,
                "m": self.m, "defaults": dict(self.defaults)}


@dataclass(frozen=True)
class FusedGraphSection:
    graph: FileRef
    candidates: int
    beta: str

    @classmethod
    def from_dict(cls, check: _Checker, legacy: bool = False) -> FusedGraphSection:
        return cls(FileRef.read(check, "fused_graph", legacy=legacy), check.integer("candidates", 1, 1 << 24),
                   check.text("beta", choices=BETA_MODES))

    def to_dict(self) -> dict[str, Any]:
        return {**self.graph.to_dict(), "candidates": self.candidates, "beta": self.beta}


@dataclass(frozen=True)
class SelftestSection:
    data: FileRef
    images: int
    tolerances: dict[str, float]
    """Per output, the largest difference a host may show (see :mod:`textcam.runtime.selftest`)."""
    concepts: bool = False

    @classmethod
    def from_dict(cls, check: _Checker) -> SelftestSection:
        tolerances = check.child("tolerances")
        return cls(FileRef.read(check, "selftest"), check.integer("images", 1, 256),
                   {k: tolerances.number(k) for k in tolerances.data}, check.flag("concepts", False))

    def to_dict(self) -> dict[str, Any]:
        return {**self.data.to_dict(), "images": self.images, "tolerances": dict(self.tolerances),
                "concepts": self.concepts}


@dataclass(frozen=True)
class Manifest:
    """The whole manifest. ``Manifest.from_dict(json.load(f), where)`` validates; ``to_dict()`` writes."""

    model: ModelSection
    input: InputSection
    classes: tuple[str, ...]
    target_layer: TargetLayerSection
    method: str
    graph: GraphSection
    verification: VerificationSection | None = None
    semantics: SemanticsSection | None = None
    fused_graph: FusedGraphSection | None = None
    engines: tuple[Any, ...] = ()
    """:class:`textcam.engines.entries.EngineEntry` items, each with its files checked."""
    selftest: SelftestSection | None = None
    created: str = ""
    producer: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest.json") -> Manifest:
        top = _Checker(data, where)
        if data.get("format") != FORMAT_NAME:
            raise TextcamError(f"{where}: not a textcam manifest (format is not {FORMAT_NAME!r})")
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise top.error("must be a positive integer", "format_version")
        if version not in READABLE_VERSIONS:
            raise TextcamError(f"{where}: bundle format version {version} is newer than this textcam supports "
                               f"({FORMAT_VERSION}); upgrade textcam")
        legacy = version == 1
        model = ModelSection.from_dict(top.child("model"))
        classes = top.get("classes")
        if not isinstance(classes, list) or len(classes) != model.num_classes:
            raise top.error(f"must be a list of {model.num_classes} names (model.num_classes)", "classes")
        for name in classes:
            if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
                raise top.error(f"must be non-empty strings of at most {MAX_NAME_CHARS} characters", "classes")
        if len(set(classes)) != len(classes):
            duplicate = next(c for i, c in enumerate(classes) if c in classes[:i])
            raise top.error(f"name {duplicate!r} more than once; class names must be unique", "classes")
        target = TargetLayerSection.from_dict(top.child("target_layer"))
        graph = GraphSection.from_dict(top.child("graph"))
        semantics_data = data.get("semantics")
        fused_data = data.get("fused_graph")
        if legacy and isinstance(semantics_data, dict):
            fused_data = semantics_data.get("fused_graph")
            semantics_data = {k: v for k, v in semantics_data.items() if k != "fused_graph"}
        semantics = (SemanticsSection.from_dict(_Checker(semantics_data, where, "semantics"), legacy)
                     if semantics_data is not None else None)
        if semantics is not None and semantics.channels != target.channels:
            raise top.error(f"has {semantics.channels} channels, the layer {target.channels}", "semantics.channels")
        fused = (FusedGraphSection.from_dict(_Checker(fused_data, where, "fused_graph"), legacy)
                 if fused_data is not None else None)
        if fused is not None and semantics is None:
            raise top.error("is present without semantics", "fused_graph")
        return cls(
            model=model,
            input=InputSection.from_dict(top.child("input")),
            classes=tuple(classes),
            target_layer=target,
            method=top.text("method", choices=CAM_METHODS),
            graph=graph,
            verification=(VerificationSection.from_dict(top.child("verification"))
                          if top.has("verification") else None),
            semantics=semantics,
            fused_graph=fused,
            engines=_engines(top),
            selftest=SelftestSection.from_dict(top.child("selftest")) if top.has("selftest") else None,
            created=top.text("created", "", limit=64),
            producer=_plain(top, "producer"),
            tensorrt=_plain(top, "tensorrt"),
            timings=_plain(top, "timings"),
            format_version=version,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": self.created,
            "producer": dict(self.producer),
            "model": self.model.to_dict(),
            "input": self.input.to_dict(),
            "classes": list(self.classes),
            "target_layer": self.target_layer.to_dict(),
            "method": self.method,
            "graph": self.graph.to_dict(),
            "verification": self.verification.to_dict() if self.verification else None,
            "tensorrt": dict(self.tensorrt),
            "timings": dict(self.timings),
            "semantics": self.semantics.to_dict() if self.semantics else None,
            "fused_graph": self.fused_graph.to_dict() if self.fused_graph else None,
            "engines": [e.to_dict() for e in self.engines],
            "selftest": self.selftest.to_dict() if self.selftest else None,
        }

    def files(self) -> dict[str, tuple[str, FileRef]]:
        """Every file the manifest names: {relative name: (kind, FileRef)}."""
        found: dict[str, tuple[str, FileRef]] = {self.model.graph.file: ("model", self.model.graph)}
        if self.model.external_data:
            found[self.model.external_data.file] = ("model", self.model.external_data)
        if self.semantics:
            found[self.semantics.store.file] = ("semantics", self.semantics.store)
        if self.fused_graph:
            found[self.fused_graph.graph.file] = ("fused_graph", self.fused_graph.graph)
        if self.selftest:
            found[self.selftest.data.file] = ("selftest", self.selftest.data)
        for entry in self.engines:
            found[entry.file] = ("engine", FileRef(entry.file, entry.sha256, entry.size_bytes))
            if entry.onnx_sha256 is not None and entry.onnx != self.model.graph.file:
                found[entry.onnx] = ("engine_onnx", FileRef(entry.onnx, entry.onnx_sha256, None))
        return found

    def replace(self, **changes) -> Manifest:
        return replace(self, **changes)


def _plain(top: _Checker, key: str) -> dict[str, Any]:
    value = top.get(key, {})
    if not isinstance(value, dict):
        raise top.error("must be an object", key)
    _check_plain_json(value, lambda p: top.error(p, key))
    return dict(value)


def _engines(top: _Checker) -> tuple[Any, ...]:
    from textcam.engines.entries import EngineEntry

    raw = top.get("engines", [])
    if not isinstance(raw, list) or len(raw) > 256:
        raise top.error("must be a list of at most 256 engines", "engines")
    entries = []
    for item in raw:
        check = _Checker(item, top.where, "engines[]")
        FileRef.read(check, "engine")  # name confined, size and sha256 present
        if check.has("onnx"):
            check_relative_name(check.get("onnx"), lambda p, c=check: c.error(p, "onnx"))
        entries.append(EngineEntry.from_dict(item, top.where))
    return tuple(entries)

