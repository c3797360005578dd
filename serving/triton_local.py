"""Run the ``tritonserver`` binary that the PyTriton wheel ships, on loopback: for trials, tests and benchmarks.

NVIDIA's containers are the production way to run Triton. Where they are out of reach, the
``nvidia-pytriton`` wheel carries a real ``tritonserver`` (with the Python backend only), so a
repository written with ``textcam triton --graph-backend python`` can be served from a virtual
environment. That environment needs ``nvidia-pytriton`` (which pins numpy<2, hence its own
environment) and textcam; pass its interpreter::

    python -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton 'numpy<2' textcam
    server = LocalTritonServer(Path(".venv-triton/bin/python"), Path("models"), Path("/tmp/triton"))
    server.url            # '127.0.0.1:PORT' (HTTP)
    server.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from textcam.errors import TextcamError

READY_TIMEOUT_S = 120.0
START_ATTEMPTS = 3
"""Starts with fresh ports when the server found one of its ports taken (see :func:`_free_ports`)."""


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now. The probes are held open together, so the
    kernel cannot hand out one port twice; another process may still take one before tritonserver binds
    it (the server takes no port 0), which :class:`LocalTritonServer` answers by starting again."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _paths(python: Path) -> dict[str, str]:
    """Where the wheel keeps the server, its libraries and the Python stub for this interpreter."""
    script = ("import pathlib, sys, sysconfig, pytriton; root = pathlib.Path(pytriton.__file__).parent; "
              "print(root / 'tritonserver'); print(root.parent / 'nvidia_pytriton.libs'); "
              "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sysconfig.get_config_var('LIBDIR'))")
    try:
        found = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise TextcamError(f"{python}: cannot run it ({exc.strerror or exc})") from None
    lines = found.stdout.split()
    if found.returncode != 0 or len(lines) != 4:
        raise TextcamError(f"{python}: no PyTriton there (pip install nvidia-pytriton in that environment)")
    return dict(zip(("server", "libs", "version", "libdir"), lines, strict=True))


class LocalTritonServer:
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
        env = dict(os.environ)
        # the stub links libpython: the environment's own, found through its lib folder; its
        # site-packages through PATH (the interpreter locates its prefix from the python on PATH)
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (paths["libdir"], paths["libs"], env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = f"{python.parent}:{env['PATH']}"
        self.log = workdir / "tritonserver.log"
        for attempt in range(1, START_ATTEMPTS + 1):
            self.http_port, grpc_port = _free_ports(2)
            self.url = f"127.0.0.1:{self.http_port}"
            command = [str(home / "bin" / "tritonserver"), "--model-repository", str(repository),
                       "--backend-directory", str(home / "backends"), "--cache-directory", str(home / "caches"),
                       "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                       "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
                       "--allow-metrics", "false", "--exit-timeout-secs", "5"]
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
            try:
                self._wait_ready()
                return
            except TextcamError:
                # "failed to start HTTP/GRPC service: ... Socket '127.0.0.1:PORT' already in use": taken meanwhile
                if attempt == START_ATTEMPTS or self.process.poll() is None or "already in use" not in self.log_tail():
                    raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TextcamError(f"tritonserver exited ({self.process.returncode}); its log: {self.log}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TextcamError(f"tritonserver not ready after {READY_TIMEOUT_S:.0f} s; its log: {self.log}")

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
