"""A real Triton Inference Server for the tests: the ``tritonserver`` binary of the PyTriton wheel.

That build has only the Python backend, so the repositories the tests serve use
``--graph-backend python`` (ONNX Runtime in the Python backend, the test stand-in for Triton's
onnxruntime backend). The server runs from its own virtual environment (PyTriton pins numpy<2),
named by ``TEXTCAM_TRITON_PYTHON`` (scripts/test.sh makes it); without one the server tests skip,
unless ``TEXTCAM_REQUIRE_TRITON=1`` says it must be there. It listens on loopback only, on free
ports, and is stopped at the end of the test session.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

READY_TIMEOUT_S = 120.0


def triton_python() -> Path | None:
    """The Triton environment's interpreter, or None (the tests then skip, or fail when required)."""
    named = os.environ.get("TEXTCAM_TRITON_PYTHON")
    candidates = [Path(named)] if named else [Path(__file__).resolve().parents[1] / ".venv-triton/bin/python"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None and os.environ.get("TEXTCAM_REQUIRE_TRITON") == "1":
        pytest.fail(f"TEXTCAM_REQUIRE_TRITON=1 but no Triton environment at {candidates[0]}")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _paths(python: Path) -> dict[str, str]:
    """Where the wheel keeps the server, its libraries and the Python stub for this interpreter."""
    script = ("import pathlib, sys, sysconfig, pytriton; root = pathlib.Path(pytriton.__file__).parent; "
              "print(root / 'tritonserver'); print(root.parent / 'nvidia_pytriton.libs'); "
              "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sysconfig.get_config_var('LIBDIR'))")
    lines = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True).stdout.split()
    return dict(zip(("server", "libs", "version", "libdir"), lines, strict=True))


class TritonServer:
    """``tritonserver --model-repository REPO`` on 127.0.0.1; :attr:`url` is its HTTP address."""

    def __init__(self, python: Path, repository: Path, workdir: Path):
        paths = _paths(python)
        home = workdir / "tritonserver"
        if not home.exists():
            source = Path(paths["server"])
            for part in ("bin", "backends", "caches"):
                shutil.copytree(source / part, home / part)
            # the Python backend runs models in a stub built for one Python version
            shutil.copy(source / "python_backend_stubs" / paths["version"] / "triton_python_backend_stub",
                        home / "backends" / "python" / "triton_python_backend_stub")
        self.http_port, grpc_port = _free_port(), _free_port()
        self.url = f"127.0.0.1:{self.http_port}"
        env = dict(os.environ)
        # the stub links libpython: the environment's own, found through its lib folder; its
        # site-packages through PATH (the interpreter locates its prefix from the python on PATH)
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (paths["libdir"], paths["libs"], env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = f"{python.parent}:{env['PATH']}"
        self.log = workdir / "tritonserver.log"
        command = [str(home / "bin" / "tritonserver"), "--model-repository", str(repository),
                   "--backend-directory", str(home / "backends"), "--cache-directory", str(home / "caches"),
                   "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
                   "--allow-metrics", "false", "--exit-timeout-secs", "5"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(repository: Path, workdir: Path) -> TritonServer:
    python = triton_python()
    if python is None:
        pytest.skip("no Triton environment (scripts/test.sh makes .venv-triton; or set TEXTCAM_TRITON_PYTHON)")
    if sys.platform != "linux":
        pytest.skip("the PyTriton wheel's tritonserver runs on Linux only")
    return TritonServer(python, repository, workdir)
