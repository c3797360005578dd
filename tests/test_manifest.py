"""The typed manifest: every broken manifest is one TextcamError line, the good one round-trips,
and the shipped JSON Schema agrees with the Python checks."""

from __future__ import annotations

import copy
import json

import pytest

from textcam.errors import TextcamError
from textcam.runtime.manifest import FORMAT_VERSION, Manifest, schema_path

SHA = "ab" * 32


def valid() -> dict:
    """A complete format-2 manifest written out by hand (not by the code under test)."""
    tensor = lambda name, dtype, shape: {"name": name, "dtype": dtype, "shape": shape}  # noqa: E731
    return {
        "format": "textcam-bundle",
        "format_version": 2,
        "created": "2026-11-30T10:00:00+00:00",
        "producer": {"textcam": "0.1.0", "opset": 18},
        "model": {"source": "torchvision:resnet18", "weights": None, "file": "model.onnx", "sha256": SHA,
                  "size_bytes": 1000, "num_classes": 3},
        "input": {"height": 64, "width": 48, "layout": "NCHW", "dtype": "float32", "color": "RGB",
                  "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize": "stretch",
                  "preprocessing": {"version": 1}},
        "classes": ["cat", "dog", "bird"],
        "target_layer": {"name": "layer4", "kind": "nchw", "channels": 8, "grid": [2, 2], "prefix_tokens": 0},
        "method": "gradcam",
        "graph": {
            "inputs": [tensor("image", "float32", ["batch", 3, 64, 48]), tensor("target_class", "int64", ["batch"])],
            "outputs": [tensor("logits", "float32", ["batch", 3]), tensor("class_index", "int64", ["batch"]),
                        tensor("cam", "float32", ["batch", 64, 48]), tensor("channel_weights", "float32", ["batch", 8]),
                        tensor("channel_activation", "float32", ["batch", 8])],
            "has_activations": False,
        },
        "verification": {"batch_sizes": [1, 3], "logits_max_rel_err": 1e-7, "passed": True},
        "tensorrt": {"compatible": True, "problems": []},
        "timings": {"trace_s": 1.0},
        "semantics": {"file": "semantics-0123456789ab.safetensors", "sha256": SHA, "size_bytes": 500, "channels": 8,
                      "dim": 16, "vocabulary_size": 10, "clip_model": "ViT-B-32", "lda": "shrinkage", "m": 50,
                      "defaults": {"top_k": 5}},
        "fused_graph": {"file": "model.semantics-0123456789ab.onnx", "sha256": SHA, "size_bytes": 2000,
                        "candidates": 10, "beta": "contribution"},
        "engines": [{"file": "engines/fp16-sm90-trt10.plan", "precision": "fp16", "tensorrt": "10.8",
                     "compute_capability": "9.0", "profile": {"min": 1, "opt": 8, "max": 32}, "sha256": SHA,
                     "size_bytes": 10, "onnx": "engines/model.fp16-0123456789ab.onnx", "onnx_sha256": SHA}],
        "selftest": {"file": "selftest.safetensors", "sha256": SHA, "size_bytes": 100, "images": 4,
                     "tolerances": {"logits": 1e-4}, "concepts": True},
    }


def deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


DROP = object()
BAD_NAMES = ["/etc/passwd", "../x.onnx", "a/../../b", "", ".", "..", "manifest.json", "a\\b", "x\x00y", "a/b/c.onnx",
             "./model.onnx", "sub/", "/", 5, None, ["model.onnx"], "x" * 300, "mödel.onnx", "a b.onnx", "~/x.onnx"]

CASES = [
    # (path in the manifest, bad value, a word the message must contain)
    (("format",), "other", "not a textcam manifest"),
    (("format",), DROP, "not a textcam manifest"),
    (("format_version",), 0, "format_version"),
    (("format_version",), -1, "format_version"),
    (("format_version",), 3, "newer"),
    (("format_version",), "2", "format_version"),
    (("format_version",), 2.0, "format_version"),
    (("format_version",), True, "format_version"),
    (("format_version",), DROP, "format_version"),
    (("model",), DROP, "'model'"),
    (("model",), [], "model"),
    (("model", "source"), DROP, "model.source"),
    (("model", "source"), "", "model.source"),
    (("model", "source"), 7, "model.source"),
    (("model", "source"), "x" * 2000, "model.source"),
    *[(("model", "file"), name, "model.file") for name in BAD_NAMES if name is not None],
    (("model", "file"), None, "model.file"),
    (("model", "sha256"), DROP, "model.sha256"),
    (("model", "sha256"), "abc", "model.sha256"),
    (("model", "sha256"), "AB" * 32, "model.sha256"),
    (("model", "sha256"), 12, "model.sha256"),
    (("model", "size_bytes"), -1, "model.size_bytes"),
    (("model", "size_bytes"), "10", "model.size_bytes"),
    (("model", "size_bytes"), 1.5, "model.size_bytes"),
    (("model", "size_bytes"), True, "model.size_bytes"),
    (("model", "size_bytes"), 1 << 40, "model.size_bytes"),
    (("model", "size_bytes"), DROP, "model.size_bytes"),
    (("model", "num_classes"), 0, "model.num_classes"),
    (("model", "num_classes"), -3, "model.num_classes"),
    (("model", "num_classes"), "3", "model.num_classes"),
    (("model", "num_classes"), 3.0, "model.num_classes"),
    (("model", "num_classes"), 10**7, "model.num_classes"),
    (("model", "num_classes"), 4, "classes"),
    (("model", "weights"), float("nan"), "model.weights"),
    (("model", "weights"), deep(30), "model.weights"),
    (("input",), DROP, "'input'"),
    (("input",), "64x64", "input"),
    *[(("input", side), value, f"input.{side}") for side in ("height", "width")
      for value in (0, -1, "64", 64.5, True, 10**6, None, DROP)],
    *[(("input", "mean"), value, "input.mean") for value in
      ([float("nan")] * 3, [float("inf"), 0, 0], [0.5, 0.5], [0.5] * 4, ["a", "b", "c"], None, 0.5, [True, 0, 0])],
    *[(("input", "std"), value, "input.std") for value in
      ([0, 0.2, 0.2], [-0.2, 0.2, 0.2], [float("inf")] * 3, [float("nan")] * 3, [0.2, 0.2], "0.2", None)],
    *[(("input", "scale"), value, "input.scale") for value in (0, -1, float("nan"), float("inf"), "x", [1])],
    (("input", "resize"), "squash", "input.resize"),
    (("input", "resize"), 5, "input.resize"),
    (("input", "resize"), "", "input.resize"),
    (("input", "layout"), "NHWC", "input.layout"),
    (("input", "dtype"), "uint8", "input.dtype"),
    (("input", "color"), "BGR", "input.color"),
    (("input", "preprocessing"), [1, 2], "input.preprocessing"),
    (("input", "preprocessing"), {"filter": float("nan")}, "input.preprocessing"),
    (("input", "preprocessing"), {"x": deep(40)}, "input.preprocessing"),
    (("classes",), DROP, "'classes'"),
    (("classes",), [], "classes"),
    (("classes",), ["cat", "dog"], "classes"),
    (("classes",), ["cat", "dog", "cat"], "more than once"),
    (("classes",), ["cat", "", "bird"], "classes"),
    (("classes",), ["cat", 1, "bird"], "classes"),
    (("classes",), ["cat", None, "bird"], "classes"),
    (("classes",), ["cat", ["dog"], "bird"], "classes"),
    (("classes",), ["cat", "d" * 5000, "bird"], "classes"),
    (("classes",), {"0": "cat"}, "classes"),
    (("classes",), "cat,dog,bird", "classes"),
    (("target_layer",), DROP, "'target_layer'"),
    (("target_layer", "name"), "", "target_layer.name"),
    (("target_layer", "name"), DROP, "target_layer.name"),
    (("target_layer", "kind"), "bogus", "target_layer.kind"),
    *[(("target_layer", "channels"), value, "target_layer.channels") for value in (0, -1, "8", True, 1 << 30)],
    (("target_layer", "channels"), 9, "semantics.channels"),
    *[(("target_layer", "grid"), value, "target_layer.grid") for value in
      ([16], [16, 16, 16], [0, 16], ["a", 16], "16x16", None, [1.5, 2])],
    (("target_layer", "prefix_tokens"), -1, "target_layer.prefix_tokens"),
    *[(("method",), value, "method") for value in ("gradcamx", "", None, 3, "GRADCAM", ["gradcam"])],
    (("graph",), DROP, "'graph'"),
    (("graph", "inputs"), DROP, "graph.inputs"),
    (("graph", "inputs"), "image", "graph.inputs"),
    (("graph", "inputs"), [], "graph.inputs"),
    (("graph", "inputs"), [{"name": "target_class", "dtype": "int64", "shape": ["batch"]},
                           {"name": "image", "dtype": "float32", "shape": ["batch", 3, 64, 48]}], "graph.inputs"),
    (("graph", "outputs"), [], "graph.outputs"),
    (("graph", "outputs"), [{"name": "logits", "dtype": "float32", "shape": [1]}] * 5, "graph.outputs"),
    (("graph", "outputs", 0), {"name": "scores", "dtype": "float32", "shape": [1]}, "graph.outputs"),
    (("graph", "outputs", 2), {"name": "heatmap", "dtype": "float32", "shape": [1]}, "graph.outputs"),
    (("graph", "outputs", 0, "shape"), "batch,3", "shape"),
    (("graph", "outputs", 0, "shape"), [1] * 9, "shape"),
    (("graph", "outputs", 0, "shape"), [-1, 3], "shape"),
    (("graph", "outputs", 0, "shape"), [True, 3], "shape"),
    (("graph", "outputs", 0, "shape"), [1.5, 3], "shape"),
    (("graph", "outputs", 0, "dtype"), "", "dtype"),
    (("graph", "outputs", 0, "name"), 5, "name"),
    (("graph", "outputs", 0), "logits", "graph.outputs"),
    (("graph", "has_activations"), True, "graph.has_activations"),
    (("graph", "has_activations"), "no", "graph.has_activations"),
    (("verification",), [], "verification"),
    (("verification", "passed"), DROP, "verification.passed"),
    (("verification", "passed"), "yes", "verification.passed"),
    (("verification", "batch_sizes"), "1,3", "verification.batch_sizes"),
    (("verification", "batch_sizes"), [0], "verification.batch_sizes"),
    (("verification", "logits_max_rel_err"), float("nan"), "verification.logits_max_rel_err"),
    (("semantics",), [], "semantics"),
    *[(("semantics", "file"), name, "semantics.file") for name in ("/etc/passwd", "../semantics.safetensors",
                                                                   "x/../../y", "", 3)],
    (("semantics", "sha256"), DROP, "semantics.sha256"),
    (("semantics", "size_bytes"), DROP, "semantics.size_bytes"),
    (("semantics", "size_bytes"), 1 << 40, "semantics.size_bytes"),
    (("semantics", "dim"), 0, "semantics.dim"),
    (("semantics", "vocabulary_size"), 0, "semantics.vocabulary_size"),
    (("semantics", "clip_model"), "", "semantics.clip_model"),
    (("semantics", "m"), 0, "semantics.m"),
    (("semantics", "defaults"), [], "semantics.defaults"),
    (("semantics", "defaults"), {"l1": float("nan")}, "semantics.defaults"),
    (("semantics",), DROP, "fused_graph"),
    (("fused_graph", "candidates"), 0, "fused_graph.candidates"),
    (("fused_graph", "beta"), "both", "fused_graph.beta"),
    (("fused_graph", "file"), "../model.onnx", "fused_graph.file"),
    (("fused_graph", "sha256"), None, "fused_graph.sha256"),
    (("selftest", "images"), 0, "selftest.images"),
    (("selftest", "images"), 300, "selftest.images"),
    (("selftest", "tolerances"), {"logits": float("nan")}, "selftest.tolerances"),
    (("selftest", "tolerances"), {"logits": "1e-4"}, "selftest.tolerances"),
    (("selftest", "tolerances"), [1e-4], "selftest.tolerances"),
    (("selftest", "file"), "/tmp/selftest.safetensors", "selftest.file"),
    (("selftest", "concepts"), "yes", "selftest.concepts"),
    (("engines",), "none", "engines"),
    (("engines",), [5], "engines"),
    (("engines",), [{}] * 257, "engines"),
    (("engines", 0, "file"), "/abs.plan", "engines[].file"),
    (("engines", 0, "file"), "../../x.plan", "engines[].file"),
    (("engines", 0, "sha256"), DROP, "engines[].sha256"),
    (("engines", 0, "size_bytes"), DROP, "engines[].size_bytes"),
    (("engines", 0, "onnx"), "../x.onnx", "engines[].onnx"),
    (("engines", 0, "profile"), DROP, "profile"),
    *[((section,), value, section) for section in ("producer", "timings", "tensorrt")
      for value in ([], {"x": float("inf")}, {"x": deep(30)}, "text")],
    (("created",), 5, "created"),
    (("created",), "x" * 100, "created"),
]


CASE_IDS = [f"{'.'.join(map(str, p))}={v!r:.30}" for p, v, _ in CASES]


def mutated(path, value) -> dict:
    data = valid()
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = copy.deepcopy(value)
    return data


def test_the_valid_manifest_round_trips():
    data = valid()
    manifest = Manifest.from_dict(data)
    written = manifest.to_dict()
    engines, given = written.pop("engines"), data.pop("engines")
    assert written == data
    assert engines[0].items() >= given[0].items()  # the engine entry adds its defaults (concurrency, ...)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert set(manifest.files()) == {"model.onnx", "semantics-0123456789ab.safetensors",
                                     "model.semantics-0123456789ab.onnx", "engines/fp16-sm90-trt10.plan",
                                     "engines/model.fp16-0123456789ab.onnx", "selftest.safetensors"}


@pytest.mark.parametrize(("path", "value", "word"), CASES, ids=CASE_IDS)
def test_a_broken_manifest_is_one_line(path, value, word):
    with pytest.raises(TextcamError) as caught:
        Manifest.from_dict(mutated(path, value), "b/manifest.json")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("b/manifest.json: ")
    assert word in message


@pytest.mark.parametrize("data", [None, [], "manifest", 5, 1.5, True], ids=repr)
def test_a_manifest_that_is_not_an_object(data):
    with pytest.raises(TextcamError, match="must be an object"):
        Manifest.from_dict(data, "m.json")


def test_format_1_is_read_and_migrated():
    data = valid()
    data["format_version"] = 1
    fused = data.pop("fused_graph")
    del fused["size_bytes"]
    data["semantics"]["fused_graph"] = fused
    del data["semantics"]["size_bytes"]
    manifest = Manifest.from_dict(data)
    assert manifest.format_version == 1 and manifest.fused_graph.candidates == 10
    assert manifest.semantics.store.size_bytes is None and manifest.fused_graph.graph.size_bytes is None
    assert manifest.to_dict()["format_version"] == FORMAT_VERSION


# --- the JSON Schema shipped for hosts in other languages ------------------------------------------------------------

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads(schema_path().read_text("utf-8"))
# what JSON Schema cannot say (cross-field rules, finite numbers from Python's float('nan'), depth): listed in its
# description; every other broken case must be refused by the schema as well
CROSS_FIELD = {"model.num_classes=4", "target_layer.channels=9", "graph.has_activations=True", "semantics=",
               "format_version=3", "classes=['cat', 'dog']",
               "format_version=2.0", "model.num_classes=3.0"}  # 2.0 is an integer to JSON Schema, not to textcam


def test_the_schema_is_valid_and_accepts_the_good_manifest():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(valid(), SCHEMA)


def schema_can_say(path, value) -> bool:
    """False for the rules listed in the schema's description (cross-field, non-finite, depth, free-form)."""
    key = f"{'.'.join(map(str, path))}={'' if value is DROP else value!r}"
    text = json.dumps(mutated(path, value))
    inexpressible = "NaN" in text or "Infinity" in text or "[" * 16 in text
    free_form = path[0] in ("producer", "timings", "tensorrt", "verification") or path[-1] in ("weights", "defaults")
    return not (any(key.startswith(c) for c in CROSS_FIELD) or inexpressible or free_form)


SCHEMA_CASES = [(p, v) for p, v, _ in CASES if schema_can_say(p, v)]


def test_most_cases_are_the_schemas_too():
    assert len(SCHEMA_CASES) >= 0.75 * len(CASES)


@pytest.mark.parametrize(("path", "value"), SCHEMA_CASES, ids=[f"{'.'.join(map(str, p))}={v!r:.30}"
                                                               for p, v in SCHEMA_CASES])
def test_the_schema_refuses_what_python_refuses(path, value):
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(mutated(path, value))
