"""Bundles of models past protobuf's 2 GB keep the weights in ``model.onnx.data`` (ONNX external
data), named and checksummed in the manifest. Exercised on a small model by lowering the size at
which the exporter switches, and held to a single-file export of the same model."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from textcam.errors import TextcamError  # noqa: E402
from textcam.export import export_bundle  # noqa: E402
from textcam.runtime.bundle import Bundle  # noqa: E402
from textcam.runtime.bundle_files import WEIGHTS_FILE  # noqa: E402
from textcam.runtime.explainer import Explainer  # noqa: E402
from textcam.runtime.native import native_module  # noqa: E402


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The same model exported twice: weights inside model.onnx, and as external data."""
    import textcam.export.tracing as tracing

    root = tmp_path_factory.mktemp("external")
    single = export_bundle(_model(), "2", root / "single.textcam", input_size=32).path
    limit = tracing._SINGLE_FILE_LIMIT
    tracing._SINGLE_FILE_LIMIT = 0
    try:
        external = export_bundle(_model(), "2", root / "external.textcam", input_size=32).path
    finally:
        tracing._SINGLE_FILE_LIMIT = limit
    return single, external


def test_weights_are_written_beside_the_graph_and_named_in_the_manifest(bundles):
    single, external = bundles
    assert not (single / WEIGHTS_FILE).exists()
    manifest = json.loads((external / "manifest.json").read_text())
    ref = manifest["model"]["external_data"]
    assert ref["file"] == WEIGHTS_FILE
    assert ref["size_bytes"] == (external / WEIGHTS_FILE).stat().st_size
    weights = sum(p.numel() for p in _model().parameters()) * 4
    assert ref["size_bytes"] >= weights  # every weight is in the data file
    assert (external / "model.onnx").stat().st_size < (single / "model.onnx").stat().st_size
    assert "external_data" not in json.loads((single / "manifest.json").read_text())["model"]


def test_the_external_bundle_explains_as_the_single_file_one(bundles):
    single, external = bundles
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, size=(40 + 7 * i, 30 + 5 * i, 3), dtype=np.uint8) for i in range(3)]
    with Explainer(single, native=False) as one, Explainer(external, native=False) as other:
        for image in images:
            want, got = one.explain(image), other.explain(image)
            assert got.class_index == want.class_index
            np.testing.assert_allclose(got.heatmap, want.heatmap, atol=1e-6)
            np.testing.assert_allclose(got.logits, want.logits, rtol=1e-6, atol=1e-6)


def test_the_external_bundle_passes_its_selftest(bundles):
    _, external = bundles
    report = Bundle.open(external).selftest()
    assert report.passed, report.table()


def test_the_external_bundle_passes_its_selftest_in_the_native_core(bundles):
    if native_module(force=True) is None:
        if os.environ.get("TEXTCAM_REQUIRE_NATIVE") == "1":
            raise RuntimeError("textcam_native is not installed but TEXTCAM_REQUIRE_NATIVE=1")
        pytest.skip("textcam_native is not installed")
    _, external = bundles
    with Explainer(external, native=True) as core:
        report = core.selftest()
    assert report.passed, report.table()


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_changed_or_missing_weights_are_refused(bundles, tmp_path, native):
    if native and native_module(force=True) is None:
        pytest.skip("textcam_native is not installed")
    _, external = bundles
    changed = shutil.copytree(external, tmp_path / "changed.textcam")
    data = bytearray((changed / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x40
    (changed / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(TextcamError, match=r"model\.onnx\.data: checksum differs from the manifest"):
        Explainer(changed, native=native).explain(np.zeros((32, 32, 3), np.uint8))
    missing = shutil.copytree(external, tmp_path / "missing.textcam")
    (missing / WEIGHTS_FILE).unlink()
    with pytest.raises(TextcamError, match=r"model\.onnx\.data: the .* named in the manifest is missing"):
        Explainer(missing, native=native).explain(np.zeros((32, 32, 3), np.uint8))


def test_info_names_the_weights_file(bundles):
    from click.testing import CliRunner

    from textcam.cli import main

    _, external = bundles
    result = CliRunner().invoke(main, ["info", str(external)])
    assert result.exit_code == 0, result.output
    assert "(weights in model.onnx.data," in result.output



def test_semantics_fused_into_an_external_data_graph_share_its_weights(bundles, tmp_path):
    """The fused ranking graph keeps referring to model.onnx.data (no copy of the weights) and
    explains as the same semantics on the single-file bundle do."""
    from semantics_helpers import add_semantics, make_store

    single, external = bundles
    copies = [shutil.copytree(b, tmp_path / b.name) for b in (single, external)]
    for bundle in copies:
        add_semantics(bundle, make_store(channels=16, dim=8, vocabulary=30, seed=2,
                                         model_sha256=json.loads((bundle / "manifest.json").read_text())
                                         ["model"]["sha256"]))
    fused = json.loads((copies[1] / "manifest.json").read_text())["fused_graph"]
    import onnx

    def external(path):
        graph = onnx.load(str(path), load_external_data=False).graph
        return {t.name: {e.key: e.value for e in t.external_data}["location"]
                for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}

    weights = external(copies[1] / "model.onnx")
    assert weights and set(weights.values()) == {WEIGHTS_FILE}
    assert external(copies[1] / fused["file"]) == weights  # references, not copies
    image = np.random.default_rng(4).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    with Explainer(copies[0], native=False) as one, Explainer(copies[1], native=False) as other:
        want, got = one.explain(image), other.explain(image)
    assert [c.phrase for c in got.concepts] == [c.phrase for c in want.concepts] and got.concepts
    np.testing.assert_allclose(got.heatmap, want.heatmap, atol=1e-6)


def test_triton_repository_keeps_the_weights_beside_the_graph(bundles, tmp_path):
    """The graph model's folder gets model.onnx.data under its recorded name (the graph refers to it by
    that relative path), and the Python-backend graph model runs it to the single-file bundle's answers."""
    from textcam.serving import triton_python
    from textcam.serving.triton_repo import RepositoryOptions, write_repository

    single, external = bundles
    repo = write_repository(external, tmp_path / "repo", RepositoryOptions(graph_backend="python")).path
    version = repo / "textcam_graph" / "1"
    assert (version / WEIGHTS_FILE).read_bytes() == (external / WEIGHTS_FILE).read_bytes()
    model = triton_python.GraphStandIn()  # its numpy side: setup and compute need no Triton
    model.output_names = ["logits", "class_index", "cam"]
    model.setup(version, {"graph_file": "model.onnx", "intra_op_threads": "1"})
    image = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = model.compute({"image": image, "target_class": np.array([[-1], [2]])})
    with Explainer(single) as explainer:
        expected = explainer.explain_batch(image, [-1, 2])
    for row, explanation in enumerate(expected):
        np.testing.assert_allclose(got["logits"][row], explanation.logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["cam"][row], explanation.heatmap, atol=1e-5)
        assert got["class_index"][row, 0] == explanation.class_index
