"""Opening a bundle for reading: the manifest, checked against the files beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textcam.errors import TextcamError
from textcam.runtime.bundle_files import MODEL_FILE, read_manifest, sha256_file

REQUIRED_KEYS = ("model", "input", "classes", "target_layer", "method", "graph")


@dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str  # "stretch" | "center_crop"
    scale: float = 1 / 255


@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory. ``Bundle.open(path)`` is the only way to make one."""

    path: Path
    manifest: dict[str, Any]
    input: InputSpec
    classes: tuple[str, ...]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def layer(self) -> str:
        return self.manifest["target_layer"]["name"]

    @property
    def channels(self) -> int:
        return int(self.manifest["target_layer"]["channels"])

    @classmethod
    def open(cls, path: str | Path, verify_checksum: bool = True) -> Bundle:
        path = Path(path)
        manifest = read_manifest(path)
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise TextcamError(f"{path / 'manifest.json'}: missing {', '.join(missing)}; re-export the bundle")
        model = path / MODEL_FILE
        if not model.is_file():
            raise TextcamError(f"{model}: missing; the bundle is incomplete, re-run `textcam export`")
        expected_size = manifest["model"].get("size_bytes")
        if expected_size is not None and model.stat().st_size != expected_size:
            raise TextcamError(
                f"{model}: {model.stat().st_size} bytes, the manifest says {expected_size} "
                "(truncated or replaced); re-run `textcam export`"
            )
        if verify_checksum and manifest["model"].get("sha256") not in (None, sha256_file(model)):
            raise TextcamError(f"{model}: checksum differs from the manifest (file changed); re-run `textcam export`")
        spec = manifest["input"]
        try:
            input_spec = InputSpec(
                height=int(spec["height"]),
                width=int(spec["width"]),
                mean=tuple(float(v) for v in spec["mean"]),
                std=tuple(float(v) for v in spec["std"]),
                resize=str(spec.get("resize", "stretch")),
                scale=float(spec.get("scale", 1 / 255)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TextcamError(f"{path / 'manifest.json'}: bad input spec ({exc}); re-export the bundle") from None
        classes = tuple(str(c) for c in manifest["classes"])
        if len(classes) != int(manifest["model"].get("num_classes", len(classes))):
            raise TextcamError(f"{path / 'manifest.json'}: class list and num_classes disagree; re-export")
        return cls(path, manifest, input_spec, classes)
