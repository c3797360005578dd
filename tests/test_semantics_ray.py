"""`textcam semantics --engine ray` and the sharded probe sources, held to the local engine.

The Ray builds run in tests/semantics_ray_child.py inside a private network namespace with only
loopback (``unshare -n``, as tests/test_ray_serve.py explains), in one Ray instance with 2 CPUs: the
folder, Parquet and tar sources, a build whose scan actor kills its own worker process once, a tar
with a corrupt member, then the CLI starting its own local Ray. Every build keeps its checkpoint files
(scan.npz: the selections; embed.npz; lda.npz: the float32 directions) through ``on_phase``, so the
selections are compared exactly and the arrays within float tolerance, against local builds made here.
The sources, refusals and the unreachable address need no Ray cluster and run here.

No fixed timeouts: the child's deadlines are units of this machine's measured speed, and it may run as
long as it makes progress (tests/child_watch.py); a failed or stalled child shows all it logged.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open_clip")

from child_watch import WatchedChild, deadline_s
from private_network import child_command, require_netns_prefix

from textcam.errors import TextcamError
from textcam.semantics_store import build_semantics, load_clip
from textcam.semantics_store.probe_source import open_probe
from textcam.shapes_world import ShapesWorld

TESTS = Path(__file__).resolve().parent
CHILD = TESTS / "semantics_ray_child.py"
# Deadlines in units (tests/child_watch.py: a fresh interpreter importing Ray; 0.9-1.5 s on the 2 shared
# cores this was tuned on). There the child took 80-90 units quietly; with both cores busy 224 (unit
# 3.6 s) and over 600 (unit 1.5 s: a phase ran 30x slower than quietly). Its progress: each phase and
# each result row of a build, the CLI's output; the longest silent step, a pool's actors starting, ~5
# units quietly. So the stall limit (which grows with the longest step, child_watch.STALL_GROWTH) fails
# a hung child within minutes; the total is only a backstop against a child that never stops logging.
CHILD_STALL_UNITS = 120
CHILD_TOTAL_UNITS = 2500
CLI_START_UNITS = 30  # `textcam semantics` up to its --address check (torch, open_clip, Ray imported): ~6 units
RAY_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+[A-Z]+ \S+:\d+ -- "  # Ray's Python logger
                          r"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z] \d+ \d+\] )")  # its C++ core
IMAGES = 120  # one unreadable image is then under 1%, two are over
M = 6
BATCH = 16
UNIT_IMAGES = 16  # 8 units, 2 per scan task: 4 tasks on 2 actors, merged within a task and at the driver
PHASE_FILES = ("scan", "embed", "lda")

try:
    import pyarrow  # noqa: F401
    import ray.data  # noqa: F401

    HAVE_RAY_DATA = True
except ImportError:
    HAVE_RAY_DATA = False
needs_ray = pytest.mark.skipif(not HAVE_RAY_DATA, reason="ray[data] is not installed (pip install 'textcam[ray]')")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def keep_phases(resume: Path, into: Path):
    """``on_phase``: copy each checkpoint file as its phase completes (the build removes them at the end)."""
    into.mkdir(parents=True, exist_ok=True)

    def on_phase(name: str) -> None:
        if name in PHASE_FILES:
            shutil.copy(resume / f"{name}.npz", into / f"{name}.npz")

    return on_phase


def phases(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    found = {}
    for name in PHASE_FILES:
        with np.load(folder / f"{name}.npz") as data:
            found[name] = {key: data[key] for key in data.files if key != "header"}
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The probe set as a folder, as 2 Parquet shards (row groups of 16) and as 2 tar shards (a .json
    beside every image, to be ignored), all in the folder's order; a tar with one corrupt member."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("ray-world")
    folder = root / "folder"
    paths = ShapesWorld(100, seed=3).write_pngs(folder, IMAGES)
    split = [paths[:70], paths[70:]]
    (root / "parquet").mkdir()
    (root / "tar").mkdir()
    for number, part in enumerate(split):
        table = pa.table({"key": [p.stem for p in part], "image": [p.read_bytes() for p in part]})
        pq.write_table(table, root / "parquet" / f"shard-{number:03d}.parquet", row_group_size=16)
        write_tar(root / "tar" / f"shard-{number:03d}.tar", [(p.name, p.read_bytes()) for p in part])
    corrupt = [(p.name, p.read_bytes()) for p in paths]
    corrupt[17] = (corrupt[17][0], b"\x89PNG\r\n\x1a\n not really")
    (root / "corrupt").mkdir()
    write_tar(root / "corrupt" / "shard-000.tar", corrupt)
    return {"root": root, "folder": folder, "parquet": f"parquet:{root / 'parquet'}/*.parquet",
            "tar": f"tar:{root / 'tar'}/*.tar", "corrupt": f"tar:{root / 'corrupt'}/*.tar", "paths": paths}


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            for member, content in ((name, data), (Path(name).stem + ".json", b'{"note": "ignored"}')):
                info = tarfile.TarInfo(member)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """The random tiny CLIP's weights in a file: the test, the child and the CLI load the same CLIP."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(load_clip("textcam-tiny-clip").model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clip(clip_checkpoint):
    return load_clip(None, str(clip_checkpoint), "textcam-tiny-clip")


@pytest.fixture(scope="module")
def bundles(make_bundle, small_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-bundles")
    return lambda name: make_bundle(small_bundle, copy=root / f"{name}.textcam")


def local_build(bundle, probe, clip, work: Path, **options):
    resume = work / "resume"
    report = build_semantics(bundle, probe, clip, vocab=["builtin:classes"], m=M, fuse=False, show_progress=False,
                             batch_size=BATCH, log=lambda _m: None, resume_dir=resume,
                             on_phase=keep_phases(resume, work / "kept"), **options)
    return report, phases(work / "kept")


@pytest.fixture(scope="module")
def local(world, clip, bundles, tmp_path_factory):
    """The local engine's builds: the reference."""
    root = tmp_path_factory.mktemp("local-builds")
    return {name: local_build(bundles(f"local-{name}"), world[name], clip, root / name)
            for name in ("folder", "corrupt")}


@pytest.fixture(scope="module")
def ray_child(world, clip_checkpoint, bundles, tmp_path_factory, request):
    if not HAVE_RAY_DATA:
        pytest.skip("ray[data] is not installed")
    prefix = require_netns_prefix()
    work = tmp_path_factory.mktemp("ray-builds")
    builds = {name: {"bundle": str(bundles(f"ray-{name}")), "probe": str(world[source]),
                     "resume": str(work / name / "resume"), "kept": str(work / name / "kept"), "kill": name == "killed"}
              for name, source in (("folder", "folder"), ("parquet", "parquet"), ("tar", "tar"),
                                   ("killed", "folder"), ("corrupt", "corrupt"))}
    cli_bundle = bundles("ray-cli")
    spec = {"builds": builds, "m": M, "batch": BATCH, "unit_images": UNIT_IMAGES, "task_images": 2 * UNIT_IMAGES,
            "clip_checkpoint": str(clip_checkpoint), "kill_marker": str(work / "killed.marker"),
            "cli": {"bundle": str(cli_bundle), "probe": world["parquet"]}}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    failed_before = request.session.testsfailed
    child = WatchedChild("semantics", child_command(prefix, CHILD, str(spec_path)), env, CHILD_STALL_UNITS,
                         CHILD_TOTAL_UNITS)
    try:
        found = child.result()
    except BaseException:
        child.close(keep=True)  # the failure names the folder with Ray's logs
        raise
    found.update(spec=spec, work=work, cli_bundle=cli_bundle)
    yield found
    child.close(keep=request.session.testsfailed > failed_before)


def assert_same_build(ray_phases, local_phases):
    for key in ("positives", "negatives"):  # the selections: exactly
        np.testing.assert_array_equal(ray_phases["scan"][key], local_phases["scan"][key])
    assert int(ray_phases["scan"]["kept"]) == int(local_phases["scan"]["kept"])
    np.testing.assert_array_equal(ray_phases["embed"]["used"], local_phases["embed"]["used"])
    np.testing.assert_allclose(ray_phases["embed"]["embeddings"], local_phases["embed"]["embeddings"], atol=1e-5)
    # CLIP's float32 results depend on the batch an image is in (local: 16 selected images at a time; Ray: a
    # unit's), by ~1e-7; LDA over M=6 images amplifies that to ~1e-4, under the store's fp16 resolution
    np.testing.assert_allclose(ray_phases["lda"]["directions"], local_phases["lda"]["directions"], atol=1e-3)


@needs_ray
@pytest.mark.parametrize("source", ["folder", "parquet", "tar"])
def test_ray_engine_equals_the_local_engine(ray_child, local, source):
    build = ray_child["builds"][source]
    assert "error" not in build, build
    assert build["probe_images"] == IMAGES and build["failed"] == []
    assert set(build["seconds"]) == {"scan", "select", "embed", "lda", "text", "write"}
    assert_same_build(phases(Path(ray_child["spec"]["builds"][source]["kept"])), local["folder"][1])


@needs_ray
def test_a_worker_killed_mid_scan_is_retried_and_the_result_is_unchanged(ray_child, local):
    build = ray_child["builds"]["killed"]
    assert "error" not in build, build
    assert ray_child["killed_pid"] and int(ray_child["killed_pid"]) != ray_child["worker_pid"]  # an actor died
    assert build["probe_images"] == IMAGES
    assert_same_build(phases(Path(ray_child["spec"]["builds"]["killed"]["kept"])), local["folder"][1])


@needs_ray
def test_a_corrupt_shard_member_is_skipped_and_listed_as_locally(ray_child, local, world):
    build = ray_child["builds"]["corrupt"]
    report, local_phases = local["corrupt"]
    label = f"{world['root'] / 'corrupt' / 'shard-000.tar'}#{world['paths'][17].name}"
    assert [p for p, _ in build["failed"]] == [label] == [str(p) for p, _ in report.failed]
    assert build["probe_images"] == IMAGES - 1 == report.probe_images
    assert any(label in note for note in build["notes"])
    assert_same_build(phases(Path(ray_child["spec"]["builds"]["corrupt"]["kept"])), local_phases)


@needs_ray
def test_cli_with_the_ray_engine_starts_its_own_ray(ray_child, local):
    from textcam.runtime.bundle import Bundle
    from textcam.runtime.semantics_file import read_store

    cli = ray_child["cli"]
    assert cli["returncode"] == 0, cli["stderr"]
    assert f"M={M} over {IMAGES} probe images" in cli["stdout"] and "time per phase: scan" in cli["stdout"]
    found = read_store(Bundle.open(ray_child["cli_bundle"]).semantics_path).channel_semantics
    np.testing.assert_allclose(found, local["folder"][1]["lda"]["directions"], atol=1e-3)  # fp16 storage


def test_local_engine_reads_shards_in_place_with_the_folders_result(world, clip, bundles, local, tmp_path):
    for source in ("parquet", "tar"):
        report, found = local_build(bundles(f"local-{source}"), world[source], clip, tmp_path / source)
        assert report.probe_images == IMAGES and not report.failed
        for key in ("positives", "negatives"):
            np.testing.assert_array_equal(found["scan"][key], local["folder"][1]["scan"][key])
        np.testing.assert_array_equal(found["embed"]["embeddings"], local["folder"][1]["embed"]["embeddings"])
        np.testing.assert_array_equal(found["lda"]["directions"], local["folder"][1]["lda"]["directions"])


def test_shard_listing_order_and_ignored_members(world):
    folder = open_probe(world["folder"])
    for source in ("parquet", "tar"):
        probe = open_probe(world[source])
        assert probe.count == IMAGES == folder.count
        members = list(probe.iter_images())
        assert [index for index, *_ in members] == list(range(IMAGES))
        # the same bytes in the same order: shard by shard, row by row
        assert [data for _, _, data, _ in members] == [p.read_bytes() for p in world["paths"]]
        assert list(probe.iter_images([3, 70, 119])) == [members[3], members[70], members[119]]


def test_unreadable_shards_and_members_past_one_percent_are_refused(world, clip, bundles, tmp_path):
    paths = world["paths"]
    two_bad = [(p.name, p.read_bytes()) for p in paths]
    two_bad[5] = two_bad[9] = ("x.png", b"garbage")  # names repeat in a tar: still two members
    (tmp_path / "bad").mkdir()
    write_tar(tmp_path / "bad" / "shard-000.tar", two_bad)
    with pytest.raises(TextcamError) as caught:
        build_semantics(bundles("refused"), f"tar:{tmp_path / 'bad'}/*.tar", clip, vocab=["builtin:classes"], m=M,
                        fuse=False, show_progress=False, log=lambda _m: None)
    message = str(caught.value)
    assert "\n" not in message and f"2 of {IMAGES} images could not be read (more than 1%)" in message

    (tmp_path / "shards").mkdir()
    shutil.copy(world["root"] / "parquet" / "shard-000.parquet", tmp_path / "shards" / "a.parquet")
    (tmp_path / "shards" / "b.parquet").write_bytes(b"PAR1 not a parquet file PAR1")
    with pytest.raises(TextcamError) as caught:
        open_probe(f"parquet:{tmp_path / 'shards'}/*.parquet")
    message = str(caught.value)
    assert "\n" not in message and "1 of 2 shards could not be read" in message and "b.parquet" in message
    with pytest.raises(TextcamError, match=r"no column 'pixels'.*--probe-column"):
        open_probe(world["parquet"], column="pixels")
    with pytest.raises(TextcamError, match="no tar shards found"):
        open_probe(f"tar:{tmp_path}/nothing-*.tar")


def test_a_checkpoint_of_other_shards_is_refused(world, clip, bundles, tmp_path):
    resume = tmp_path / "resume"
    bundle = bundles("shards-checkpoint")

    class Stop(Exception):
        pass

    def stop(name):
        if name == "scan":
            raise Stop

    with pytest.raises(Stop):
        build_semantics(bundle, world["parquet"], clip, vocab=["builtin:classes"], m=M, fuse=False,
                        show_progress=False, log=lambda _m: None, resume_dir=resume, on_phase=stop)
    saved = (resume / "scan.npz").read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(world["root"] / "parquet" / "shard-000.parquet", other / "shard-000.parquet")
    for probe, difference in ((f"parquet:{other}/*.parquet", "probe.images 120 (this build: 70)"),
                              (world["tar"], "probe.sha256")):
        with pytest.raises(TextcamError) as caught:
            build_semantics(bundle, probe, clip, vocab=["builtin:classes"], m=M, fuse=False, show_progress=False,
                            log=lambda _m: None, resume_dir=resume)
        assert "\n" not in str(caught.value) and "is for another build" in str(caught.value)
        assert difference in str(caught.value)
    assert (resume / "scan.npz").read_bytes() == saved


@needs_ray
def test_an_unreachable_address_is_one_line_and_fast(small_bundle, world, tmp_path):
    import ray

    from textcam.semantics_store.ray_engine import RayEngine

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    timeout = deadline_s(10)
    start = time.monotonic()
    with pytest.raises(TextcamError) as caught:
        RayEngine(address=f"127.0.0.1:{port}", connect_timeout_s=timeout)
    assert time.monotonic() - start < timeout  # refused at once, not after the timeout
    assert str(caught.value).startswith(f"--address 127.0.0.1:{port}: no Ray cluster reachable")
    with pytest.raises(TextcamError, match="expected HOST:PORT"):
        RayEngine(address="nowhere")

    # a port that accepts connections but never answers: refused after the timeout, before ray.init, so no
    # Ray is left starting (nor a thread retrying ray.init, logging after the line)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    assert not ray.is_initialized()
    threads = threading.active_count()
    with pytest.raises(TextcamError, match=rf"^--address {address}: Ray did not answer within 1 s$"):
        RayEngine(address=address, connect_timeout_s=1)
    assert not ray.is_initialized() and threading.active_count() == threads

    # the CLI says so after --connect-timeout, in one line
    bundle = tmp_path / "b.textcam"
    shutil.copytree(small_bundle, bundle)
    command = [sys.executable, "-m", "textcam", "semantics", str(bundle), "--probe", str(world["folder"]),
               "--clip", "textcam-tiny-clip", "--vocab", "builtin:classes", "--engine", "ray", "--address", address,
               "--connect-timeout", "3"]
    limit = 3 + deadline_s(CLI_START_UNITS)
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`textcam semantics` did not give up within {limit:.0f} s\nstdout:\n{exc.stdout}\n"
                    f"stderr:\n{exc.stderr}", pytrace=False)
    finally:
        silent.close()
    assert time.monotonic() - start >= 3  # it waited --connect-timeout for an answer
    assert done.returncode == 1, done.stderr
    assert cli_lines(done.stderr) == [f"error: --address {address}: Ray did not answer within 3 s"], done.stderr


def cli_lines(stderr: str) -> list[str]:
    """The CLI's own lines: without Ray's log lines (:data:`RAY_LOG_LINE`, its Python logger's format and its
    C++ core's). What Ray logs, and whether, is Ray's: it differs between versions and machines (one machine's
    Ray warned "SIGTERM handler is not set" where the one line was expected), so it is not held to."""
    return [line for line in stderr.splitlines() if line.strip() and not RAY_LOG_LINE.match(line)]


def test_the_local_engine_needs_no_ray(small_bundle, world):
    # a fresh interpreter: this one may have imported Ray for other tests
    code = ("import sys; from click.testing import CliRunner; from textcam.cli import main; "
            "import textcam.semantics_store.builder; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    with pytest.raises(TextcamError, match=r"^--address is for --engine ray$"):
        build_semantics(small_bundle, world["folder"], None, address="127.0.0.1:6379")
