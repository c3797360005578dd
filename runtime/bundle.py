"""Opening a bundle for reading: the typed manifest, and every file it names, checked.

A :class:`Bundle` is the only way the runtime (and every backend) reaches a bundle's files: it
resolves each name the manifest gives through :meth:`Bundle.file`, which accepts only a plain
relative name inside the bundle (no absolute path, no ``..``, no symlink that leaves the
directory), a regular file (no FIFO, device or directory), of the size the manifest records
(never more than the cap for its kind) and with the recorded sha256. Nothing else joins paths
from manifest strings.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textcam.errors import TextcamError
from textcam.runtime.bundle_files import MANIFEST_FILE, read_manifest_text, sha256_file
from textcam.runtime.manifest import FILE_CAPS, FileRef, InputSection, Manifest

InputSpec = InputSection
"""The graph input as preprocessing needs it (height, width, mean, std, resize policy, scale)."""

_HINTS = {
    "model": "re-run `textcam export`",
    "semantics": "re-run `textcam semantics`",
    "fused_graph": "re-run `textcam semantics`",
    "selftest": "re-run `textcam export` (or `textcam semantics`)",
    "engine": "rebuild it with `textcam build-engine`",
    "engine_onnx": "rebuild it with `textcam build-engine`",
}
_WHAT = {
    "model": "graph", "semantics": "semantics store", "fused_graph": "fused ranking graph",
    "selftest": "self-test data", "engine": "TensorRT engine", "engine_onnx": "engine's reduced graph",
}


@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory: ``Bundle.open(path)``; its files through :meth:`file`.

    Runners load :attr:`model_path`. To run another graph of the bundle (the fused ranking graph)
    or one of the caller's own (a pruned copy), pass ``bundle.with_graph(...)``::

        fused = bundle.with_graph(bundle.info.fused_graph.graph)   # a FileRef: checked like model.onnx
        runner = OnnxRuntimeRunner(fused)
    """

    path: Path
    info: Manifest
    _checked: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)
    graph_file: Path | None = None
    """The graph runners load instead of ``model.onnx`` (set by :meth:`with_graph`); None: the model's."""

    @classmethod
    def open(cls, path: str | Path, verify_checksum: bool = True) -> Bundle:
        if path is None or not isinstance(path, (str, os.PathLike)):
            raise TextcamError(f"bundle {path!r}: expected the path of a bundle directory (name.textcam)")
        path = Path(path)
        manifest_path = path / MANIFEST_FILE
        bundle = cls(path, Manifest.from_dict(read_manifest_text(manifest_path), str(manifest_path)))
        if verify_checksum:
            bundle.model_path  # noqa: B018 - resolves and checks model.onnx now, not at the first image
        return bundle

    @classmethod
    def from_manifest(cls, path: str | Path, manifest: Manifest) -> Bundle:
        """A bundle seen through a manifest that is not (yet) on disk, e.g. while an update is staged."""
        return cls(Path(path), manifest)

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as a plain dict (format version 2 layout), for display and JSON output."""
        return self.info.to_dict()

    # ---- files -------------------------------------------------------------------------------

    def file(self, ref: FileRef, kind: str, hint: str | None = None) -> Path:
        """The checked path of a file the manifest names (see the module docstring); cached once checked.

        ``hint`` replaces the generic advice in errors (e.g. the exact ``textcam build-engine`` command).
        """
        cached = self._checked.get(ref.file)
        if cached is not None:
            return cached
        what, hint = _WHAT[kind], hint or _HINTS[kind]
        path = self.path / ref.file
        root = os.path.realpath(self.path)
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root or real == root:
            raise TextcamError(f"{path}: the {what} named in the manifest lies outside the bundle; {hint}")
        try:
            info = os.stat(real)
        except FileNotFoundError:
            raise TextcamError(f"{path}: the {what} named in the manifest is missing; {hint}") from None
        except OSError as exc:
            raise TextcamError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
        if not stat.S_ISREG(info.st_mode):
            raise TextcamError(f"{path}: the {what} is not a regular file; {hint}")
        cap = FILE_CAPS[kind]
        expected = ref.size_bytes
        if info.st_size > cap or (expected is not None and info.st_size != expected):
            said = f"the manifest says {expected:,}" if expected is not None else f"the limit is {cap:,}"
            raise TextcamError(f"{path}: {info.st_size:,} bytes, {said} (truncated or replaced); {hint}")
        if sha256_file(Path(real), limit=info.st_size) != ref.sha256:
            raise TextcamError(f"{path}: checksum differs from the manifest (file changed); {hint}")
        self._checked[ref.file] = path
        return path

    @property
    def model_path(self) -> Path:
        """The graph a runner loads: ``model.onnx`` (checked), or the one :meth:`with_graph` set."""
        if self.graph_file is not None:
            return self.graph_file
        self._check_external_data()
        return self.file(self.info.model.graph, "model")

    def _check_external_data(self) -> None:
        """The graph's weights file, if it has one: runners read it from beside the graph (the
        fused ranking graph refers to the same file)."""
        if self.info.model.external_data:
            self.file(self.info.model.external_data, "model")

    def with_graph(self, graph: FileRef | str | os.PathLike) -> Bundle:
        """This bundle (same manifest, same checked files) with ``graph`` as the graph runners load.

        ``graph``: a :class:`~textcam.runtime.manifest.FileRef` of this bundle's manifest (e.g.
        ``info.fused_graph.graph``), checked as :meth:`file` checks every file; or the path of a
        graph of the caller's own (e.g. a pruned copy in a temporary folder), which must be a
        regular file. The graph must take the bundle's inputs; its outputs may add to the model's.
        """
        if isinstance(graph, FileRef):
            kind = "fused_graph" if self.info.fused_graph and graph == self.info.fused_graph.graph else "model"
            self._check_external_data()
            path = self.file(graph, kind)
        elif isinstance(graph, (str, os.PathLike)):
            path = Path(graph)
            if not path.is_file():
                raise TextcamError(f"graph={str(path)!r}: not a file; pass an ONNX graph's path or a FileRef")
        else:
            raise TextcamError(f"graph={graph!r}: expected a FileRef of the manifest or an ONNX graph's path")
        return Bundle(self.path, self.info, self._checked, path)

    @property
    def semantics_path(self) -> Path | None:
        return self.file(self.info.semantics.store, "semantics") if self.info.semantics else None

    @property
    def fused_graph_path(self) -> Path | None:
        return self.file(self.info.fused_graph.graph, "fused_graph") if self.info.fused_graph else None

    def with_fused_graph(self) -> Bundle:
        """:meth:`with_graph` for the fused ranking graph (``textcam semantics``); TextcamError without one."""
        if not self.info.fused_graph:
            raise TextcamError(f"{self.path}: no fused ranking graph; run `textcam semantics` on the bundle")
        return self.with_graph(self.info.fused_graph.graph)

    @property
    def selftest_path(self) -> Path | None:
        return self.file(self.info.selftest.data, "selftest") if self.info.selftest else None

    def engine_path(self, entry, hint: str | None = None) -> Path:
        """The checked ``.plan`` of one of ``info.engines``."""
        return self.file(FileRef(entry.file, entry.sha256, entry.size_bytes), "engine", hint)

    def engine_onnx_path(self, entry) -> Path:
        """The graph an engine was built from (``model.onnx`` or its reduced-precision copy)."""
        if entry.onnx == self.info.model.graph.file or entry.onnx_sha256 is None:
            return self.model_path
        return self.file(FileRef(entry.onnx, entry.onnx_sha256, None), "engine_onnx")

    def selftest(self, backend: str = "onnxruntime", backend_options: dict | None = None):
        """Run the bundle's conformance self-test on ``backend``; returns a report (``.passed``, ``.table()``)."""
        from textcam.runtime.selftest import run_selftest

        return run_selftest(self, backend, backend_options)

    # ---- the manifest's facts ----------------------------------------------------------------

    @property
    def input(self) -> InputSection:
        return self.info.input

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def method(self) -> str:
        return self.info.method

    @property
    def layer(self) -> str:
        return self.info.target_layer.name

    @property
    def channels(self) -> int:
        return self.info.target_layer.channels

    @property
    def model_sha256(self) -> str:
        return self.info.model.graph.sha256
