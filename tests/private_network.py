"""Running a test's Ray child in a private network namespace (loopback only).

Ray binds to the machine's own network address even when told 127.0.0.1, so the Ray tests run
their child process under ``unshare -n`` (as root), where only loopback exists. With ``ip``
missing the child brings loopback up itself (an ioctl, ``ray_serve_child.loopback_up``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LOOPBACK_UP = "ip link set lo up && " if shutil.which("ip") else ""


def netns_prefix() -> list[str] | None:
    """The command prefix that runs a shell in a private network namespace, or None where there is none.

    A PID namespace too where it can be had: every Ray process then dies with the child, even one
    killed at a timeout; and with ``--kill-child`` the child dies with ``unshare``, the process the test
    holds and kills (tests/child_watch.py)."""
    if shutil.which("unshare") is None:
        return None
    for extra in (["-p", "-f", "--kill-child", "--mount-proc"], ["-p", "-f", "--mount-proc"], []):
        probe = subprocess.run(["unshare", "-n", *extra, "sh", "-c", f"{LOOPBACK_UP}true"], capture_output=True,
                               check=False)
        if probe.returncode == 0:
            return ["unshare", "-n", *extra, "sh", "-c"]
    return None


def require_netns_prefix() -> list[str]:
    """:func:`netns_prefix`, or skip the test where no private network namespace can be made."""
    prefix = netns_prefix()
    if prefix is None:
        pytest.skip("needs `unshare -n` (root or CAP_SYS_ADMIN): Ray must run where it cannot bind the machine's "
                    "address")
    return prefix


def child_command(prefix: list[str], script: Path, *args: str) -> list[str]:
    """``python script args...`` in the namespace ``prefix`` opens, loopback up first."""
    quoted = " ".join(f"'{a}'" for a in (sys.executable, str(script), *args))
    return [*prefix, f"{LOOPBACK_UP}exec {quoted}"]
