"""textcam.runtime.bundle: opening a bundle (missing, truncated, too new) and ``Bundle.with_graph``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from textcam.errors import TextcamError
from textcam.runtime.bundle import Bundle


def test_bundle_problems(make_bundle, small_bundle, tmp_path):
    broken = make_bundle(small_bundle, copy=tmp_path / "b.textcam")
    (broken / "model.onnx").unlink()
    with pytest.raises(TextcamError, match=r"model\.onnx: the graph named in the manifest is missing"):
        Bundle.open(broken)
    shutil.copy(Path(small_bundle) / "model.onnx", broken / "model.onnx")
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(TextcamError, match="truncated"):
        Bundle.open(broken)
    shutil.copy(Path(small_bundle) / "model.onnx", broken / "model.onnx")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["format_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TextcamError, match="newer than this textcam supports"):
        Bundle.open(broken)
    with pytest.raises(TextcamError, match=r"not a directory|missing"):
        Bundle.open(tmp_path / "nowhere")


def test_bundle_with_graph(small_bundle, tmp_path):
    from textcam.runtime.backends import OnnxRuntimeRunner

    bundle = Bundle.open(small_bundle)
    copy = tmp_path / "copy.onnx"
    shutil.copy(bundle.model_path, copy)
    other = bundle.with_graph(copy)
    assert other.model_path == copy and bundle.model_path == Path(small_bundle) / "model.onnx"
    assert other.classes == bundle.classes and other.path == bundle.path
    runner = OnnxRuntimeRunner(other)
    outputs = runner.run(np.zeros((1, 3, 64, 64), np.float32), np.array([-1]))
    assert outputs["cam"].shape == (1, 64, 64)
    assert bundle.with_graph(bundle.info.model.graph).model_path == bundle.model_path  # a FileRef: checked
    with pytest.raises(TextcamError, match=r"graph='.*missing\.onnx': not a file"):
        bundle.with_graph(tmp_path / "missing.onnx")
    with pytest.raises(TextcamError, match="no fused ranking graph"):
        bundle.with_fused_graph()
