"""Ray Serve hosting (textcam.serving.ray_app, ``textcam serve``), held to an in-process Explainer.

The Ray side runs in tests/ray_serve_child.py inside a private network namespace with only
loopback (``unshare -n``; Ray binds to the machine's real address even when told 127.0.0.1), and
so do its HTTP clients. One child serves the default bundle on 2 replicas for every server test
(Ray starts once); a second runs ``textcam serve --duration`` in its own namespace, at the same time.
Both are started together by the ``children`` fixture and read when a test first needs them. No fixed
timeouts: their deadlines are units of this machine's measured speed, and they may run as long as they
make progress (tests/child_watch.py); a failed or stalled child shows all it logged.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from child_watch import WatchedChild, slowdown
from click.testing import CliRunner
from PIL import Image
from private_network import child_command, require_netns_prefix

from textcam.cli import main
from textcam.errors import TextcamError
from textcam.runtime import Explainer
from textcam.shapes_world.artifacts import DEFAULT_BUNDLE
from textcam.shapes_world.generator import ShapesWorld

TESTS = Path(__file__).resolve().parent
CHILD = TESTS / "ray_serve_child.py"
# Deadlines in units (tests/child_watch.py: a fresh interpreter importing Ray; 0.9-1.5 s on the 2 shared
# cores this was tuned on). There each child took 25-55 units quietly, up to 145 with both cores busy;
# the longest silent steps: `textcam serve` printing its URL, 13-16 units quietly, 60 busy (ray_serve_child's
# CLI_READY_UNITS = 180 limits it), and Serve replacing the killed replica, 3-30 (RECOVERY_UNITS = 90). So
# a stalled child fails within 200 units (or child_watch.STALL_GROWTH x its longest step); the total is a
# backstop.
CHILD_STALL_UNITS = 200
CHILD_TOTAL_UNITS = 1000
# Ray's own fixed timeouts, in seconds, scaled by 3 x child_watch.slowdown(): with both cores busy here, a
# child ran ~10x slower than quietly (its unit ~4x), Serve's 5 s proxy readiness check failed 3 times, and
# Serve killed the proxy before the application could start ("The actor died unexpectedly")
RAY_TIMEOUTS_S = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": 5, "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": 10,
                  "RAY_worker_register_timeout_seconds": 60}
RAY_TIMEOUT_MARGIN = 3
# (width, height, format): squares and not, smaller and larger than the 64x64 input, PNG and JPEG
IMAGES = ((64, 64, "png"), (120, 80, "jpeg"), (48, 96, "png"), (200, 150, "jpeg"), (33, 47, "png"),
          (300, 200, "png"))

try:
    import ray  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False

# importing Ray Serve warns about its own pydantic usage: not ours to act on
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray[serve] is not installed (pip install 'textcam[serve]')")


def write_images(folder: Path) -> list[Path]:
    """Shapes-world scenes (so the labels mean something) resized to each size in ``IMAGES``."""
    world = ShapesWorld(64, seed=7)
    paths = []
    for number, (width, height, kind) in enumerate(IMAGES):
        image = Image.fromarray(world.scene(number).image).resize((width, height), Image.Resampling.BILINEAR)
        path = folder / f"{number:02d}_{width}x{height}.{'png' if kind == 'png' else 'jpg'}"
        image.save(path, format=kind.upper(), **({"quality": 90} if kind == "jpeg" else {}))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("serve-images"))


@pytest.fixture(scope="module")
def children(images, request):
    if not HAVE_RAY:
        pytest.skip("ray[serve] is not installed")
    prefix = require_netns_prefix()
    env = {**os.environ, "TEXTCAM_TEST_IMAGE": str(images[0]), "RAY_USAGE_STATS_ENABLED": "0"}
    scale = RAY_TIMEOUT_MARGIN * slowdown()
    env.update({name: str(round(default * scale)) for name, default in RAY_TIMEOUTS_S.items()})
    env.pop("TEXTCAM_NATIVE", None)  # the replicas run as deployed: the C++ core when installed
    failed_before = request.session.testsfailed
    started = {name: WatchedChild(f"serve-{name}", child_command(prefix, CHILD, *args), env, CHILD_STALL_UNITS,
                                  CHILD_TOTAL_UNITS)
               for name, args in (("server", ("server", str(images[0].parent), "8123")), ("cli", ("cli", "8124")))}
    yield started
    for child in started.values():  # a failed test keeps both folders: Ray's logs are in them
        child.close(keep=request.session.testsfailed > failed_before)


@pytest.fixture(scope="module")
def served(children) -> dict:
    return children["server"].result()


@pytest.fixture(scope="module")
def reference() -> Explainer:
    """The in-process answers the server must give (numpy path, as every test here)."""
    return Explainer(DEFAULT_BUNDLE, native=False)


def explained(reference: Explainer, path: Path, class_index: int | None = None):
    return reference.explain(path, class_index=class_index)


def assert_same(answer: dict, expected, heatmap: bool = False) -> None:
    assert answer["label"] == expected.label
    assert answer["class_index"] == expected.class_index
    assert abs(answer["score"] - expected.score) <= 1e-6
    phrases = answer["phrases"] if "phrases" in answer else [c["phrase"] for c in answer["concepts"]]
    assert phrases == [c.phrase for c in expected.concepts]
    if heatmap:
        found = np.asarray(answer["heatmap"], dtype=np.float64)
        assert found.shape == expected.heatmap.shape
        assert np.abs(found - expected.heatmap).max() <= 1e-6


@needs_ray
def test_every_answer_equals_the_in_process_explainer(served, images, reference):
    answers = served["answers"]
    assert len(answers) == len(images) + 1
    by_name = {path.name: path for path in images}
    for key, (status, answer) in answers.items():
        assert status == 200, (key, answer)
        name, _, query = key.partition("?")
        params = dict(part.split("=") for part in query.split("&"))
        expected = explained(reference, by_name[name], int(params["class_index"]) if "class_index" in params else None)
        if "class_index" in params:
            assert answer["class_index"] == int(params["class_index"])
        if params["heatmap"] == "array":
            assert_same(answer, expected, heatmap=True)
            assert answer["heatmap_shape"] == list(expected.heatmap.shape)
        else:  # the 8-bit PNG of the same map
            assert_same(answer, expected)
            levels = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["heatmap"]))), dtype=np.float64)
            assert levels.shape == expected.heatmap.shape
            assert np.abs(levels - np.rint(expected.heatmap * 255)).max() <= 1
    assert any(answer["concepts"] for _, answer in answers.values())  # the bundle's phrases came through


@needs_ray
def test_concurrent_clients_on_two_replicas_all_correct(served, images, reference):
    load = served["load"]
    assert load["threads"] == 8 and load["lost"] == 0, load["errors"]
    assert load["count"] >= 8, load
    assert len(load["replicas"]) == 2, load["replicas"]  # both replicas answered
    calls = sum(found["calls"] for found in load["batches"].values())
    images_in_batches = sum(found["images"] for found in load["batches"].values())
    assert images_in_batches / calls > 1.1, load["batches"]  # concurrent requests shared graph calls
    by_name = {path.name: path for path in images}
    for name, found in load["distinct"].items():
        expected = explained(reference, by_name[name])
        assert found
        for answer in found:
            assert_same(answer, expected)


@needs_ray
def test_killed_replica_loses_no_request_and_service_recovers(served, images, reference):
    fault = served["fault"]
    killed = fault["action"]["killed"]
    assert killed in fault["action"]["before"] and len(fault["action"]["before"]) == 2
    assert fault["lost"] == 0, fault["errors"]
    assert fault["count"] > 0
    assert fault["running_after"] == 2 and len(fault["after"]) == 2, fault
    assert killed not in fault["after"]  # a new replica took its place
    by_name = {path.name: path for path in images}
    for name, found in fault["distinct"].items():
        for answer in found:
            assert_same(answer, explained(reference, by_name[name]))
    assert fault["valid_after"][0] == 200


@needs_ray
@pytest.mark.parametrize(("case", "status"), [
    ("text/plain", 415), ("not an image", 400), ("empty", 400), ("truncated", 400), ("too large", 413),
    ("class_index=abc", 400), ("class_index=99", 400), ("class_index=-2", 400), ("heatmap=jpeg", 400),
    ("unknown path", 404), ("GET /explain", 405),
])
def test_malformed_request_gets_its_status_and_one_line(served, case, status):
    found, body = served["refusals"][case]
    assert found == status, body
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    assert served["refusals"]["valid after"][0] == 200


@needs_ray
def test_health_and_info(served):
    assert served["health"] == [200, {"status": "ok"}]
    status, info = served["info"]
    assert status == 200
    bundle = Explainer(DEFAULT_BUNDLE, native=False).bundle
    assert info["classes"] == list(bundle.classes)
    assert info["layer"] == bundle.layer and info["method"] == bundle.method
    assert info["input_size"] == [bundle.input.height, bundle.input.width]
    assert info["backend"] == "onnxruntime" and info["replicas"] == 2
    assert info["model_sha256"] == bundle.model_sha256


@needs_ray
def test_every_replica_passes_the_bundles_selftest(served):
    for replicas in (served["info_selftests"], served["fault"]["info_selftests_after"]):
        assert replicas and all(found and found["passed"] for found in replicas.values()), replicas
    assert len(served["info_selftests"]) == 2  # both replicas reported (12 calls)
    for status, body in served["selftest"]:
        assert status == 200 and body["passed"], body


@needs_ray
def test_cli_serves_and_stops_by_itself(children, reference, images):
    found = children["cli"].result()
    assert found["returncode"] == 0, found["stderr"]
    assert found["health"] == [200, {"status": "ok"}]
    status, answer = found["explained"]
    assert status == 200
    assert_same(answer, explained(reference, images[0]))
    assert found["stdout"].strip() == "http://127.0.0.1:8124"
    assert "stopped" in found["stderr"] and "Traceback" not in found["stderr"], found["stderr"]


def test_cli_without_ray_says_which_extra(monkeypatch):
    import textcam.serving

    for name in [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "textcam.serving.ray_app"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(textcam.serving, "ray_app", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(main, ["serve", "default", "--duration", "1"])
    assert result.exit_code == 1
    expected = "error: the serve extra is not installed; pip install 'textcam[serve]'"
    assert result.output.strip().splitlines() == [expected]


def test_cli_help_teaches_with_curl():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "curl" in result.output and "/explain" in result.output and "--replicas" in result.output


def test_settings_refuse_bad_values_in_one_line():
    from textcam.serving.ray_settings import ServeSettings

    assert ServeSettings.from_args({"bundle": "default", "replicas": "2", "threads": "none"}).replicas == 2
    for args in ({"replicas": "2"}, {"bundle": "x", "replicas": "0"}, {"bundle": "x", "replicas": "two"},
                 {"bundle": "x", "colour": "red"}, {"bundle": "x", "batch_wait_ms": "nan"},
                 {"bundle": "x", "selftest": "maybe"}):
        with pytest.raises(TextcamError) as caught:
            ServeSettings.from_args(args)
        assert "\n" not in str(caught.value)


def test_query_and_body_checks():
    from textcam.serving.ray_http import HttpError, check_content_type, open_image, parse_query

    assert parse_query({"class_index": "-1", "heatmap": "none"}, 8) == (None, None)
    assert parse_query({"class_index": "7", "heatmap": "PNG"}, 8) == (7, "png")
    for params in ({"class_index": "8"}, {"class_index": "1.5"}, {"heatmap": "gif"}, {"top_k": "3"}):
        with pytest.raises(HttpError) as caught:
            parse_query(params, 8)
        assert caught.value.status == 400
    check_content_type(None)
    check_content_type("image/jpeg; q=1")
    with pytest.raises(HttpError) as caught:
        check_content_type("application/json")
    assert caught.value.status == 415
    with pytest.raises(HttpError) as caught:
        open_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 20, 1000)
    assert caught.value.status == 400


@needs_ray
def test_replica_refuses_to_serve_when_the_selftest_fails(monkeypatch):
    from dataclasses import asdict

    from textcam.serving.ray_app import TextcamExplainer
    from textcam.serving.ray_settings import ServeSettings

    class Failed:
        passed = False
        backend = "onnxruntime"

        def summary(self, label: str) -> str:
            return f"{label} failed: cam max abs 5.0e-01 > 1.0e-03"

    replica = TextcamExplainer.func_or_class  # the class itself, built here without Ray
    settings = asdict(ServeSettings(bundle="default", threads=1))
    assert replica(settings).selftest["passed"] is True
    monkeypatch.setattr(Explainer, "selftest", lambda self: Failed())
    with pytest.raises(TextcamError, match="self-test failed on this replica's host") as caught:
        replica(settings)
    assert "\n" not in str(caught.value)
