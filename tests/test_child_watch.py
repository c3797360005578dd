"""tests/child_watch.py, the Ray tests' child watch, with plain Python children and a unit of 0.2 s.

A child that keeps making progress may run past the stall limit, and take a step up to STALL_GROWTH
times its longest one before; one that stalls or runs past the total limit is killed within them, its
stacks, stdout and stderr in the failure; a child that fails shows its output in full; a child's wait on
a CLI counts the CLI's growing output as progress.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import child_watch
import pytest
from child_watch import WatchedChild, wait_for

TESTS = Path(__file__).resolve().parent
UNIT_S = 0.2


@pytest.fixture(autouse=True)
def _small_unit(monkeypatch):
    monkeypatch.setattr(child_watch, "unit_s", lambda: UNIT_S)


def watched(code: str, stall_units: float, total_units: float) -> WatchedChild:
    script = f"from child_watch import child_started, progress\nimport sys, time\nchild_started()\n{code}\n"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return WatchedChild("test", [sys.executable, "-c", script], env, stall_units, total_units)


def test_a_child_making_progress_may_run_past_the_stall_limit():
    child = watched("for step in range(8):\n    time.sleep(0.2)\n    progress(f'step {step}')\n"
                    "print('{\"done\": true}')", stall_units=4, total_units=50)
    assert child.result()["done"] is True
    assert child.result()["child_s"] > 4 * UNIT_S  # it ran longer than the stall limit
    child.close(keep=False)
    assert not child.folder.exists()


def test_a_step_up_to_stall_growth_times_the_longest_before_is_no_stall():
    # the stall limit: 6 units (1.2 s), then 3 x 1.0 s once a step took 1.0 s
    child = watched("progress('a')\ntime.sleep(1.0)\nprogress('b')\ntime.sleep(2.4)\nprogress('c')\n"
                    "print('{}')", stall_units=6, total_units=100)
    assert child.result()["child_s"] > 3.4
    assert child.stall_limit_s(child.steps()) > 3 * 2.3  # grown again by the last step
    child.close(keep=False)


def test_a_stalled_child_fails_in_bounded_time_with_its_stacks_and_output():
    child = watched("print('before the stall', flush=True)\nprint('on stderr', file=sys.stderr, flush=True)\n"
                    "progress('setup')\ntime.sleep(600)", stall_units=5, total_units=50)
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as caught:
        child.result()
    assert time.monotonic() - start < 5 * UNIT_S + 10  # the stall limit, the stack dump's wait, the start
    message = str(caught.value)
    assert "made no progress for 1 s (last step: 'setup')" in message
    assert "before the stall" in message and "on stderr" in message
    assert "most recent call first" in message  # faulthandler's stacks (SIGUSR1)
    assert child.process.poll() is not None and child.folder.exists()  # killed; its logs kept
    child.close(keep=False)


def test_a_child_past_the_total_limit_fails():
    child = watched("while True:\n    progress('tick')\n    time.sleep(0.1)", stall_units=5, total_units=10)
    with pytest.raises(pytest.fail.Exception, match=r"did not finish within 2 s \(last step: 'tick'\)"):
        child.result()
    child.close(keep=False)


def test_a_failed_child_shows_its_output_in_full():
    lines = "\n".join(f"line {n}" for n in range(2000))
    child = watched(f"print({lines!r}, file=sys.stderr)\nsys.exit(3)", stall_units=50, total_units=100)
    with pytest.raises(pytest.fail.Exception) as caught:
        child.result()
    assert "exited with 3 without its JSON line" in str(caught.value)
    assert "line 0\n" in str(caught.value) and "line 1999" in str(caught.value)
    child.close(keep=False)


def test_wait_for_counts_growing_output_as_progress_and_gives_up_at_its_limit(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(child_watch.UNIT_ENV, str(UNIT_S))
    output = tmp_path / "cli.stdout"
    with open(output, "w") as stdout:
        writer = subprocess.Popen([sys.executable, "-c", "import time\nfor n in range(4):\n    print(n, flush=True)\n"
                                   "    time.sleep(0.6)"], stdout=stdout)
    assert wait_for(writer, [output], "cli", limit_units=100)
    assert capsys.readouterr().out.count("cli: output") >= 3
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = time.monotonic()
    assert not wait_for(silent, [output], "silent", limit_units=5)
    assert time.monotonic() - start < 5 * UNIT_S + 2
    assert "silent: output" not in capsys.readouterr().out
    silent.kill()
    silent.wait()
