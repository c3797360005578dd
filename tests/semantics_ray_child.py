"""The Ray side of tests/test_semantics_ray.py, run inside a private network namespace (loopback only).

Ray binds to the machine's real address even when told 127.0.0.1, so the test starts this script as
``unshare -n sh -c 'ip link set lo up && exec python semantics_ray_child.py SPEC_JSON'`` (as
tests/ray_serve_child.py). SPEC_JSON names the bundles to build into and the probe sources; this
script runs every ``--engine ray`` build of the test in one Ray instance (2 CPUs), then the CLI, which
starts its own local Ray, and prints one JSON object on its last stdout line. The test compares the
bundles with its own local-engine builds. A ``progress:`` line after every step (Ray started, each
build's phases and every result row its driver receives, the CLI's output growing) lets the test wait
as long as the child makes progress (tests/child_watch.py); the CLI's output is kept in full.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child_watch import child_deadline_s, child_log_dir, child_started, progress, wait_for
from ray_serve_child import loopback_up, report_and_exit

CLI_UNITS = 800
"""The CLI's backstop, in units of the test's measure (tests/child_watch.py): it starts its own Ray and
builds from 120 images in ~25 units here quietly, 47-200 with both cores busy; its output (log lines,
progress bars) grows meanwhile, and the test's stall limit applies to that."""


def main() -> None:
    child_started()
    loopback_up()
    spec = json.loads(Path(sys.argv[1]).read_text())
    import ray

    from textcam.semantics_store import build_semantics, load_clip, probe_source
    from textcam.semantics_store.ray_engine import RayEngine, ScanActor

    probe_source.UNIT_IMAGES = spec["unit_images"]  # several units (tasks) from a small probe set
    clip = load_clip(None, spec["clip_checkpoint"], "textcam-tiny-clip")  # the test's own CLIP weights
    progress("imports and CLIP")
    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # as RayEngine does for a Ray it starts: Ray Data's progress every 10 s stays in its log files
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    out: dict = {"ray_start_s": round(time.monotonic() - started, 2), "builds": {}}
    progress("ray.init")

    marker = Path(spec["kill_marker"])

    class KilledOnce(ScanActor):
        """Dies (the whole worker process) at its first unit, once across every actor: the marker file
        says it has happened."""

        def __call__(self, batch):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return super().__call__(batch)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)

    for name, build in spec["builds"].items():
        engine = reporting(RayEngine, name)(workers=2)
        engine.task_images = spec["task_images"]  # several units per task, several tasks per actor
        if build.get("kill"):
            engine.scan_actor = KilledOnce
        start = time.monotonic()
        kept, resume = Path(build["kept"]), Path(build["resume"])
        kept.mkdir(parents=True, exist_ok=True)

        def keep(phase, resume=resume, kept=kept, name=name):
            if phase in ("scan", "embed", "lda"):  # the checkpoint files: selections, embeddings, directions
                shutil.copy(resume / f"{phase}.npz", kept / f"{phase}.npz")
            progress(f"{name}: {phase}")

        try:
            report = build_semantics(build["bundle"], build["probe"], clip, vocab=["builtin:classes"], m=spec["m"],
                                     fuse=False, show_progress=False, batch_size=spec["batch"], engine=engine,
                                     log=lambda _m: None, resume_dir=resume, on_phase=keep)
        except Exception as exc:  # the test checks the refusal's line
            out["builds"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            progress(f"{name}: failed")
            continue
        out["builds"][name] = {"seconds": report.seconds, "failed": [[str(p), m] for p, m in report.failed],
                               "notes": report.notes, "m": report.m, "probe_images": report.probe_images,
                               "embedded_images": report.embedded_images, "wall_s": round(time.monotonic() - start, 2)}
        progress(f"{name}: built")
    out["killed_pid"] = marker.read_text() if marker.exists() else None
    out["worker_pid"] = os.getpid()
    ray.shutdown()
    progress("ray.shutdown")
    out["cli"] = run_cli(spec)
    progress("cli")
    report_and_exit(out)


def reporting(engine_class, name: str):
    """``engine_class`` whose phases report every result row the driver receives as a step: with both
    cores busy, a phase took 30x longer than quietly (its actors starting, then each unit)."""

    class Reporting(engine_class):
        def scan(self, bundle, probe, scan_m, batch_size, bar):
            return super().scan(bundle, probe, scan_m, batch_size, ReportingBar.of(bar, name))

        def embed(self, clip, probe, used, cache_dir, batch_size, bar):
            return super().embed(clip, probe, used, cache_dir, batch_size, ReportingBar.of(bar, name))

        def directions(self, embeddings, positives, negatives, lda, bar):
            return super().directions(embeddings, positives, negatives, lda, ReportingBar.of(bar, name))

    return Reporting


class ReportingBar:
    """The builder's progress bar, with a progress line per update."""

    def __init__(self, inner, label: str, total: int):
        self.inner, self.label, self.total, self.done = inner, label, total, 0

    @classmethod
    def of(cls, bar, name: str):
        return lambda total, desc, *args: cls(bar(total, desc, *args), f"{name}: {desc}", total)

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def update(self, count: int) -> None:
        self.inner.update(count)
        self.done += count
        progress(f"{self.label} {self.done}/{self.total}")


def run_cli(spec: dict) -> dict:
    """``textcam semantics --engine ray`` (its own local Ray), within :data:`CLI_UNITS`; its output in full,
    from files in the child's folder (there for the test's report too if this child is killed)."""
    cli = spec["cli"]
    command = [sys.executable, "-m", "textcam", "semantics", cli["bundle"], "--probe", cli["probe"],
               "--clip-checkpoint", spec["clip_checkpoint"], "--clip-model", "textcam-tiny-clip",
               "--vocab", "builtin:classes", "-m", str(spec["m"]), "--no-fuse",
               "--batch-size", str(spec["batch"]), "--engine", "ray", "--workers", "2"]
    started = time.monotonic()
    stdout_path, stderr_path = child_log_dir() / "cli.stdout", child_log_dir() / "cli.stderr"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
    if wait_for(process, [stdout_path, stderr_path], "cli", CLI_UNITS):
        returncode = process.returncode
    else:
        process.kill()
        process.wait()
        returncode = f"killed: not done within {child_deadline_s(CLI_UNITS):.0f} s"
    return {"returncode": returncode, "stdout": stdout_path.read_text(), "stderr": stderr_path.read_text(),
            "seconds": round(time.monotonic() - started, 2)}


if __name__ == "__main__":
    main()
