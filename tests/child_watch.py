"""Deadlines for the Ray tests' child processes, from this machine's measured speed, and their logs on failure.

A fixed timeout tuned on one machine fails on one 3-5x slower or busier (the semantics child's 240 s
did). So every deadline here is a number of *units*, and the unit is measured on this machine, at its
first use (:func:`unit_s`): the seconds a fresh interpreter takes to import Ray and Ray Data. That is
the children's own first step, and the same mix of process start, Python imports and CPU as much of the
rest of their work (every Ray worker is such an interpreter). A child prints ``progress: TIME STEP``
on stdout after each step (:func:`progress`); the test fails it once no step has finished for
``stall_units`` units (or :data:`STALL_GROWTH` times its longest step so far, where that is longer) or
the whole run passes ``total_units``, so a machine that is slower throughout still passes while a hung
child still fails in bounded time. A CLI a child runs counts as making progress while its output grows
(:func:`wait_for`); the children's other waits (an HTTP request, Serve replacing a replica) are
:func:`child_deadline_s`, in the same unit, each below the stall limit. The total limit is only a
backstop, for a child that never stops making "progress": the unit is measured once, and load that
arrives later, or that slows Ray's pipelines more than one import, is missed by it (with both cores busy
here, one child ran 7x more units than quietly).

Each child gets its own folder under /tmp (Ray's socket paths must stay short), which is also its
``RAY_TMPDIR``: its stdout and stderr, Ray's session logs and any log the child writes there
(:func:`child_log_dir`). A failure shows the child's stdout and stderr and its own logs in full, the
tail of every Ray log file, and keeps the folder; :meth:`WatchedChild.close` removes it otherwise.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROGRESS = "progress:"
UNIT_ENV = "TEXTCAM_TEST_UNIT_S"
LOG_DIR_ENV = "TEXTCAM_TEST_LOG_DIR"
KEEP_ENV = "TEXTCAM_TEST_KEEP_CHILD_LOGS"  # set: every child's folder stays, to read its steps' timings
CALIBRATION = "import ray, ray.data"
CALIBRATION_RUNS = 3
MIN_UNIT_S = 0.5  # below this, process start-up noise, not the machine's speed, would set the deadlines
TUNED_UNIT_S = 1.0  # the unit on the 2 shared cores the deadlines were tuned on (0.9-1.5 s)
POLL_S = 0.5
RAY_LOG_TAIL_LINES = 60
RAY_LOG_TOTAL_CHARS = 100_000  # Serve writes dozens of log files: their tails, not a report nobody reads
STALL_GROWTH = 3.0
"""The stall limit grows to this many times the child's longest step so far: the unit, one import, can
miss how much slower Ray's pipelines get (with both cores busy here, 1.5x the unit, 30x a phase)."""


@functools.cache
def unit_s() -> float:
    """The unit of every deadline: the median seconds of :data:`CALIBRATION` in a fresh interpreter, measured
    once per test process. Ray missing: nothing here will start a Ray child, so any unit will do."""
    times = []
    for _ in range(CALIBRATION_RUNS):
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", CALIBRATION], capture_output=True, check=False, timeout=600)
        if done.returncode != 0:
            return 1.0
        times.append(time.monotonic() - start)
    return max(MIN_UNIT_S, statistics.median(times))


def slowdown() -> float:
    """How much slower than the machine these deadlines were tuned on (unit :data:`TUNED_UNIT_S`) this one
    is now, at least 1: for scaling timeouts of Ray's own that a child cannot express in units."""
    return max(1.0, unit_s() / TUNED_UNIT_S)


def deadline_s(units: float) -> float:
    """``units`` of this machine's unit, in seconds (in the test process)."""
    return units * unit_s()


def child_deadline_s(units: float) -> float:
    """``units`` of the unit the test measured and handed to this child (in a child process)."""
    return units * float(os.environ.get(UNIT_ENV, "1"))


def child_log_dir() -> Path:
    """The child's folder: a log written there is shown in full when the child fails."""
    return Path(os.environ.get(LOG_DIR_ENV) or tempfile.gettempdir())


def child_started() -> None:
    """A child's first call: SIGUSR1 dumps its threads' stacks on stderr (what the test sends a stalled
    child before killing it), then the first step."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    progress("started")


def progress(step: str) -> None:
    """One finished step, for the test's watch: a line on stdout, with the wall-clock time it finished."""
    print(f"{PROGRESS} {time.time():.3f} {step}", flush=True)


def wait_for(process: subprocess.Popen, outputs: list[Path], step: str, limit_units: float,
             until=lambda: False) -> bool:
    """In a child: wait for ``process`` to exit (or ``until()`` to hold), with a progress line whenever its
    ``outputs`` grew, so the test's stall limit applies to the process's own output (a CLI's log and
    progress bars); False when ``limit_units`` passed first, the backstop for output that never ends."""
    give_up = time.monotonic() + child_deadline_s(limit_units)

    def sizes_now() -> list[int]:
        return [path.stat().st_size if path.exists() else 0 for path in outputs]

    sizes = sizes_now()
    while process.poll() is None and not until():
        grown = sizes_now()
        if grown != sizes:
            sizes = grown
            progress(f"{step}: output")
        if time.monotonic() > give_up:
            return False
        time.sleep(POLL_S)
    return True


class WatchedChild:
    """A child started at once with its own folder; :meth:`result` watches its progress and returns its
    JSON line (the last stdout line starting with ``{``), or fails with everything it logged."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], stall_units: float,
                 total_units: float):
        self.name, self.command = name, command
        self.stall_s, self.total_s = deadline_s(stall_units), deadline_s(total_units)
        self.folder = Path(tempfile.mkdtemp(prefix=f"tc-{name}-", dir="/tmp"))
        self.stdout_path, self.stderr_path = self.folder / "child.stdout", self.folder / "child.stderr"
        env = {**env, "RAY_TMPDIR": str(self.folder), LOG_DIR_ENV: str(self.folder), UNIT_ENV: f"{unit_s():.3f}"}
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            # files, not pipes: nothing blocks on a full pipe, and every line is there when it fails
            self.process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        self.started = time.time()
        self._result: dict | None = None

    def result(self) -> dict:
        if self._result is None:
            self._wait()
            lines = [line for line in self._read(self.stdout_path).splitlines() if line.startswith("{")]
            if self.process.returncode != 0 or not lines:
                self._fail(f"exited with {self.process.returncode}" + ("" if lines else " without its JSON line"))
            self._result = json.loads(lines[-1])
            self._result.update(child_s=round(time.time() - self.started, 1), unit_s=round(unit_s(), 3))
        return self._result

    def steps(self) -> list[tuple[float, str]]:
        """(when, what) of each of the child's progress lines, its start first."""
        found = [(self.started, "(started by the test)")]
        for line in self._read(self.stdout_path).splitlines():
            _, when, step = [*line.split(" ", 2), "", ""][:3]
            # a line still half written is read again at the next poll
            if line.startswith(PROGRESS) and when.replace(".", "", 1).isdigit() and float(when) >= found[-1][0]:
                found.append((float(when), step))
        return found

    def stall_limit_s(self, steps: list[tuple[float, str]]) -> float:
        """:attr:`stall_s`, or :data:`STALL_GROWTH` times the longest step so far where that is longer."""
        longest = max((after[0] - before[0] for before, after in itertools.pairwise(steps)), default=0.0)
        return max(self.stall_s, STALL_GROWTH * longest)

    def _wait(self) -> None:
        while self.process.poll() is None:
            now = time.time()
            steps = self.steps()
            (when, step), stall = steps[-1], self.stall_limit_s(steps)
            if now - when > stall:
                self._stop(f"made no progress for {stall:.0f} s (last step: {step!r})")
            if now - self.started > self.total_s:
                self._stop(f"did not finish within {self.total_s:.0f} s (last step: {step!r})")
            time.sleep(POLL_S)

    def _stop(self, why: str) -> None:
        """Its stacks on stderr (SIGUSR1: :func:`child_started`), then kill it and fail."""
        python = self._python_pid()
        if python is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(python, signal.SIGUSR1)
            time.sleep(1.0)
        self.process.kill()  # unshare --kill-child: the namespace's processes go with it
        self.process.wait()
        if python is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(python, signal.SIGKILL)  # where no PID namespace holds Ray's processes
        self._fail(why)

    def _python_pid(self) -> int | None:
        """The child's Python: unshare's own child when unshare forked (the PID namespace), else itself."""
        pid = self.process.pid
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "unshare":
                return pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def _fail(self, why: str) -> None:
        import pytest  # here: the children import this module too, and need no pytest

        pytest.fail(f"the {self.name} Ray child {why}\n{self.report()}", pytrace=False)

    def report(self) -> str:
        """The command, the deadlines, the child's stdout and stderr and its own logs in full, the tail of
        every Ray log file."""
        parts = [f"command: {' '.join(self.command)}",
                 f"unit {unit_s():.2f} s ({CALIBRATION!r} here); stall limit {self.stall_s:.0f} s or "
                 f"{STALL_GROWTH:g}x the longest step, total limit {self.total_s:.0f} s; ran "
                 f"{time.time() - self.started:.0f} s; logs kept in {self.folder}"]
        for path in sorted(p for p in self.folder.iterdir() if p.is_file()):
            parts.append(f"----- {path.name} -----\n{self._read(path)}")
        budget = RAY_LOG_TOTAL_CHARS
        for path in sorted(self.folder.glob("ray/session_2*/logs/**/*")):
            if path.is_file() and path.stat().st_size and budget > 0:
                tail = "\n".join(self._read(path).splitlines()[-RAY_LOG_TAIL_LINES:])[-budget:]
                budget -= len(tail)
                parts.append(f"----- {path.relative_to(self.folder)} (last {RAY_LOG_TAIL_LINES} lines) -----\n{tail}")
        return "\n".join(parts)

    def close(self, keep: bool) -> None:
        """Kill it if still running; remove its folder unless ``keep`` (a test failed: the logs stay) or
        :data:`KEEP_ENV` is set."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if not keep and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError as exc:
            return f"(unreadable: {exc})"

