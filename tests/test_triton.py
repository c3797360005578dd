"""``textcam triton``: the model repository (configs against Triton's schema, post-processing against
``Explainer``, refusals), then a real ``tritonserver`` serving it (answers equal to ``Explainer``'s,
the bundle's self-test, concurrent clients with dynamic batching, malformed requests).

The server is the PyTriton wheel's (Python backend only), so the graph model is the Python-backend
stand-in for Triton's onnxruntime backend; see tests/triton_server.py.
"""

from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from triton_server import start_server

from textcam.cli import main
from textcam.errors import TextcamError
from textcam.runtime import Explainer
from textcam.runtime.backends import create_runner
from textcam.runtime.bundle import Bundle
from textcam.runtime.images import decode, preprocess
from textcam.serving import triton_python
from textcam.serving.triton_config import validate
from textcam.serving.triton_python import PostProcessor
from textcam.serving.triton_repo import MARKER, RepositoryOptions, write_repository
from textcam.shapes_world.artifacts import DEFAULT_BUNDLE
from textcam.shapes_world.generator import ShapesWorld

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="Triton's schema ships in tritonclient")
FRESH_SEED = 20261130


def _config(repo: Path, model: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _scenes(count: int, seed: int = FRESH_SEED) -> np.ndarray:
    """Preprocessed shapes-world scenes (real-looking inputs, unseen by the bundle's build)."""
    spec = Bundle.open(DEFAULT_BUNDLE).input
    world = ShapesWorld(64, seed=seed)
    return np.stack([preprocess(decode(world.scene(i).image), spec)[0] for i in range(count)])


# ---- the repository, no server -----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_configs_parse_as_triton_model_configs_and_match_the_graph(tmp_path, backend):
    import onnx

    repo = write_repository(DEFAULT_BUNDLE, tmp_path / "repo", RepositoryOptions(graph_backend=backend, threads=2)).path
    graph = onnx.load(repo / "textcam_graph" / "1" / "model.onnx", load_external_data=False)
    config = _config(repo, "textcam_graph")
    model_io = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:]
                for v in [*graph.graph.input, *graph.graph.output]}
    for tensor in [*config.input, *config.output]:
        # Triton's view is the graph's shape without the batch; a [batch] tensor is [1] reshaped to []
        expected = model_io[tensor.name] or [1]
        assert list(tensor.dims) == expected, tensor.name
        assert tensor.HasField("reshape") == (backend == "onnxruntime" and not model_io[tensor.name])
    assert config.platform == ("onnxruntime_onnx" if backend == "onnxruntime" else "")
    assert config.backend == backend
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    ensemble = _config(repo, "textcam")
    assert ensemble.platform == "ensemble"
    produced = {value for step in ensemble.ensemble_scheduling.step for value in step.output_map.values()}
    assert {o.name for o in ensemble.output} <= produced
    post = _config(repo, "textcam_post")
    post_inputs = {i.name for i in post.input}
    graph_step, post_step = ensemble.ensemble_scheduling.step
    assert set(post_step.input_map) == post_inputs
    assert set(graph_step.output_map) <= {o.name for o in config.output}
    marker = json.loads((repo / MARKER).read_text())
    assert marker["model_sha256"] == Bundle.open(DEFAULT_BUNDLE).model_sha256


def test_validate_refuses_what_triton_would(tmp_path):
    repo = write_repository(DEFAULT_BUNDLE, tmp_path / "repo").path
    text = (repo / "textcam_graph" / "config.pbtxt").read_text()
    validate(text, "ok")
    for broken in (text.replace("data_type", "datatype", 1), text.replace("TYPE_FP32", "TYPE_FLOAT32", 1),
                   text.replace("max_batch_size: 16", "max_batch_size: sixteen")):
        with pytest.raises(TextcamError, match="not a valid Triton model configuration"):
            validate(broken, "textcam_graph/config.pbtxt")


def test_tensorrt_repository_takes_the_engine_for_the_gpu(tmp_path, make_bundle, tiny_bundle, add_fake_engine):
    bundle = make_bundle(tiny_bundle, copy=True)
    entry = add_fake_engine(bundle, b"plan-sm90", cc="9.0")
    add_fake_engine(bundle, b"plan-sm86", cc="8.6")
    repo = write_repository(bundle, tmp_path / "repo", RepositoryOptions(graph_backend="tensorrt", gpu="sm90")).path
    assert (repo / "textcam_graph" / "1" / "model.plan").read_bytes() == b"plan-sm90"
    config = _config(repo, "textcam_graph")
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    with pytest.raises(TextcamError, match=r"no engine for --gpu 7\.5"):
        write_repository(bundle, tmp_path / "other", RepositoryOptions(graph_backend="tensorrt", gpu="7.5"))
    with pytest.raises(TextcamError, match=f"takes at most {entry.profile.max} images"):
        write_repository(bundle, tmp_path / "other", RepositoryOptions(graph_backend="tensorrt", gpu="9.0",
                                                                       max_batch_size=64))
    assert not (tmp_path / "other").exists()


def test_post_processing_equals_explainer_on_fresh_inputs(tmp_path):
    repo = write_repository(DEFAULT_BUNDLE, tmp_path / "repo").path
    post = PostProcessor(repo / "textcam_post" / "1")
    bundle = Bundle.open(DEFAULT_BUNDLE)
    batch = np.concatenate([_scenes(6), np.random.default_rng(FRESH_SEED).normal(size=(2, 3, 64, 64))]
                           ).astype(np.float32)
    classes = np.array([-1, 3, -1, 0, 7, -1, -1, 2])
    with Explainer(bundle, use_fused=False) as explainer:
        expected = explainer.explain_batch(batch, classes)
    for fused in (True, False):
        graph = bundle.with_fused_graph() if fused else bundle
        outputs = create_runner("onnxruntime", graph).run(batch, classes)
        inputs = {**outputs, "class_index": outputs["class_index"][:, None], "target_class": classes[:, None]}
        if fused:
            inputs["candidate_ids"] = inputs.pop("concept_ids")
        answer = post(inputs)
        for row, explanation in enumerate(expected):
            assert answer["label"][row, 0].decode() == explanation.label
            assert answer["score"][row, 0] == pytest.approx(explanation.score, rel=1e-6)
            assert [p.decode() for p in answer["concept_phrases"][row]] == [c.phrase for c in explanation.concepts]
            np.testing.assert_allclose(answer["concept_weights"][row], [c.weight for c in explanation.concepts],
                                       rtol=1e-6, atol=1e-7)


def test_post_processing_refuses_bad_values(tmp_path):
    repo = write_repository(DEFAULT_BUNDLE, tmp_path / "repo").path
    post = PostProcessor(repo / "textcam_post" / "1")
    outputs = create_runner("onnxruntime", Bundle.open(DEFAULT_BUNDLE)).run(_scenes(2), np.array([-1, -1]))
    good = {**outputs, "class_index": outputs["class_index"][:, None]}
    for target, message in ((-5, "target_class -5 out of range"), (8, "target_class 8 out of range")):
        with pytest.raises(TextcamError, match=message):
            post({**good, "target_class": np.array([[-1], [target]])})
    with pytest.raises(TextcamError, match="NaN or Inf logits"):
        post({**good, "logits": np.full_like(good["logits"], np.nan)})


def test_bundle_without_semantics_serves_label_and_score(tmp_path, tiny_bundle):
    repo = write_repository(tiny_bundle, tmp_path / "repo").path
    names = {o.name for o in _config(repo, "textcam").output}
    assert "label" in names and not any(n.startswith("concept_") for n in names)
    post = PostProcessor(repo / "textcam_post" / "1")
    answer = post({"logits": np.array([[0.0, 2.0, 1.0, -1.0]], np.float32), "class_index": np.array([[1]])})
    assert answer["label"][0, 0] == b"b" and set(answer) == {"label", "score"}


class _FakeBackend(types.ModuleType):
    """Just enough of ``triton_python_backend_utils`` to drive a model's ``execute`` outside Triton."""

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class TritonError:
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.outputs = {t.name: t.array for t in output_tensors or []}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return _FakeBackend.Tensor(name, request[name]) if name in request else None


def test_python_models_answer_each_batched_request_alone_when_one_is_bad(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeBackend("triton_python_backend_utils"))
    repo = write_repository(DEFAULT_BUNDLE, tmp_path / "repo", RepositoryOptions(graph_backend="python")).path
    models = {}
    for name, cls in (("textcam_graph", triton_python.GraphStandIn), ("textcam_post", triton_python.PostModel)):
        config = _config(repo, name)
        from google.protobuf import json_format

        models[name] = cls()
        models[name].initialize({"model_config": json.dumps(json_format.MessageToDict(
            config, preserving_proto_field_name=True)), "model_repository": str(repo / name), "model_version": "1"})
    batch = _scenes(6)
    requests = [{"image": batch[:2], "target_class": np.array([[-1], [4]])},
                {"image": batch[2:3], "target_class": np.array([[-1]])},
                {"image": batch[3:], "target_class": np.array([[1], [-1], [2]])}]
    graph = models["textcam_graph"].execute(requests)
    assert all(r.error is None for r in graph)
    post_requests = [{**{k: v for k, v in r.outputs.items() if k != "concept_ids"},
                      "candidate_ids": r.outputs["concept_ids"], "target_class": q["target_class"]}
                     for r, q in zip(graph, requests, strict=True)]
    post_requests[1]["target_class"] = np.array([[-9]])
    answers = models["textcam_post"].execute(post_requests)
    assert answers[1].error is not None and "target_class -9 out of range" in answers[1].error.message
    assert answers[1].error.code == _FakeBackend.TritonError.INVALID_ARG
    with Explainer(DEFAULT_BUNDLE) as explainer:
        expected = explainer.explain_batch(batch, [-1, 4, -1, 1, -1, 2])
    got = [*answers[0].outputs["label"][:, 0], *answers[2].outputs["label"][:, 0]]
    assert [g.decode() for g in got] == [e.label for i, e in enumerate(expected) if i != 2]
    assert len(answers[0].outputs["concept_ids"]) == 2 and len(answers[2].outputs["concept_ids"]) == 3


def test_cli_writes_and_refuses(tmp_path):
    runner = CliRunner()
    out = tmp_path / "models"
    result = runner.invoke(main, ["triton", "default", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "checked against Triton's schema" in result.output
    assert (out / "textcam_graph" / "1" / "model.onnx").is_file() and (out / "README.md").is_file()
    cases = [
        (["triton", "default", "-o", str(out)], "already there; pass --force"),
        (["triton", "default", "-o", str(tmp_path)], "not a textcam Triton repository"),
        (["triton", "default", "-o", str(out / "README.md")], "exists and is not a directory"),
        (["triton", "default", "-o", str(tmp_path / "x"), "--max-batch-size", "0"], "--max-batch-size 0"),
        (["triton", "default", "-o", str(tmp_path / "x"), "--graph-backend", "tensorrt"], "needs --gpu"),
        (["triton", "default", "-o", str(tmp_path / "x"), "--gpu", "9.0"], "use them with --graph-backend tensorrt"),
        (["triton", str(tmp_path / "missing"), "-o", str(tmp_path / "x")], "not a directory"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
    result = runner.invoke(main, ["triton", "default", "-o", str(out), "--force", "--graph-backend", "python"])
    assert result.exit_code == 0 and (out / "textcam_graph" / "1" / "model.py").is_file()


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import shutil as shutil_module

    calls = []

    def failing_copy(source, target):
        calls.append(target)
        raise OSError(28, "No space left on device")

    out = tmp_path / "models"
    monkeypatch.setattr(shutil_module, "copyfile", failing_copy)
    with pytest.raises(TextcamError, match=r"writing failed .*nothing was written"):
        write_repository(DEFAULT_BUNDLE, out)
    assert calls and not out.exists() and list(tmp_path.iterdir()) == []


# ---- a real server -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("triton")
    repo = write_repository(DEFAULT_BUNDLE, work / "models",
                            RepositoryOptions(graph_backend="python", max_batch_size=8, threads=1,
                                              max_queue_delay_us=5000)).path
    running = start_server(repo, work)
    yield running
    running.stop()


def test_server_answers_equal_explainer(server):
    from textcam.serving.triton_client import TritonClient

    batch = np.concatenate([_scenes(10, seed=FRESH_SEED + 1),
                            np.random.default_rng(FRESH_SEED).normal(size=(3, 3, 64, 64))]).astype(np.float32)
    classes = np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7, -1, -1, 2, -1])
    client = TritonClient(server.url)
    answer = client.infer(batch, classes)  # 13 images: two requests of at most 8
    with Explainer(DEFAULT_BUNDLE) as explainer:
        expected = explainer.explain_batch(batch, classes)
    for row, explanation in enumerate(expected):
        assert answer["class_index"][row] == explanation.class_index
        assert answer["label"][row, 0].decode() == explanation.label
        assert answer["score"][row, 0] == pytest.approx(explanation.score, rel=1e-6)
        np.testing.assert_allclose(answer["cam"][row], explanation.heatmap, atol=1e-6)
        np.testing.assert_allclose(answer["logits"][row], explanation.logits, rtol=1e-6, atol=1e-6)
        assert [p.decode() for p in answer["concept_phrases"][row]] == [c.phrase for c in explanation.concepts]


def test_server_passes_the_bundles_selftest(server):
    result = CliRunner().invoke(main, ["selftest", "default", "--triton", server.url, "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["passed"], result.output
    stages = {row["stage"] for row in report["rows"]}
    assert stages == {"preprocess", "graph", "end-to-end"} and report["backend"].startswith("triton")


REQUESTS_PER_CLIENT = 6  # 8 clients: 48 requests, each of the 16 pool images 3 times


def test_concurrent_clients_get_explainers_answers_and_are_batched(server):
    import tritonclient.http as http

    pool = _scenes(16, seed=FRESH_SEED + 2)
    with Explainer(DEFAULT_BUNDLE) as explainer:
        expected = [(e.label, [c.phrase for c in e.concepts]) for e in explainer.explain_batch(pool)]
    stats_before = _graph_stats(server.url)
    wrong, errors, done = [], [], []

    def client(worker: int):
        # a fixed number of requests, not a time window: a slow machine sends as many (and batches more)
        connection = http.InferenceServerClient(server.url, network_timeout=60)
        index = worker
        for _ in range(REQUESTS_PER_CLIENT):
            inputs = [http.InferInput("image", [1, 3, 64, 64], "FP32"),
                      http.InferInput("target_class", [1, 1], "INT64")]
            inputs[0].set_data_from_numpy(pool[index % len(pool)][None])
            inputs[1].set_data_from_numpy(np.array([[-1]], dtype=np.int64))
            try:
                result = connection.infer("textcam", inputs)
            except Exception as exc:  # every failure is recorded and fails the test
                errors.append(str(exc))
                break
            got = (result.as_numpy("label")[0, 0].decode(), [p.decode() for p in result.as_numpy("concept_phrases")[0]])
            if got != expected[index % len(pool)]:
                wrong.append((index, got))
            done.append(index)
            index += 8
        connection.close()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # each request is bounded by network_timeout
    assert not errors and not wrong and len(done) == 8 * REQUESTS_PER_CLIENT, (errors[:3], wrong[:3], len(done))
    inferences, executions = (a - b for a, b in zip(_graph_stats(server.url), stats_before, strict=True))
    assert inferences == len(done)
    assert executions < inferences  # the dynamic batcher gathered requests into shared graph calls


def _graph_stats(url: str) -> tuple[int, int]:
    import tritonclient.http as http

    client = http.InferenceServerClient(url)
    stats = client.get_inference_statistics("textcam_graph")["model_stats"][0]
    client.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_malformed_requests_get_400_and_the_server_keeps_serving(server):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.url)

    def call(image: np.ndarray, target: np.ndarray, image_type="FP32"):
        inputs = [http.InferInput("image", list(image.shape), image_type),
                  http.InferInput("target_class", list(target.shape), "INT64")]
        inputs[0].set_data_from_numpy(image)
        inputs[1].set_data_from_numpy(target)
        return client.infer("textcam", inputs)

    good = _scenes(1)
    cases = {
        "wrong size": (np.zeros((1, 3, 32, 32), np.float32), np.array([[-1]])),
        "wrong type": (np.zeros((1, 3, 64, 64), np.float64), np.array([[-1]])),
        "class out of range": (good, np.array([[99]])),
        "class below -1": (good, np.array([[-3]])),
        "batch over the maximum": (np.repeat(good, 9, axis=0), np.full((9, 1), -1)),
        "NaN image": (np.full((1, 3, 64, 64), np.nan, np.float32), np.array([[-1]])),
    }
    for name, (image, target) in cases.items():
        with pytest.raises(InferenceServerException) as caught:
            call(image, target.astype(np.int64), "FP64" if image.dtype == np.float64 else "FP32")
        assert str(caught.value.status()) == "400", (name, caught.value)
        assert "\n" not in caught.value.message().strip(), name
    assert call(good, np.array([[-1]], dtype=np.int64)).as_numpy("label")[0, 0]
    client.close()
