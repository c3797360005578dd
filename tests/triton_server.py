"""A real Triton Inference Server for the tests (:mod:`textcam.serving.triton_local`: the PyTriton wheel's
``tritonserver``, Python backend only, loopback, free ports).

The repositories the tests serve therefore use ``--graph-backend python`` (ONNX Runtime in the Python
backend, the test stand-in for Triton's onnxruntime backend). The server runs from its own virtual
environment (PyTriton pins numpy<2), named by ``TEXTCAM_TRITON_PYTHON`` (scripts/test.sh makes it);
without one the server tests skip, unless ``TEXTCAM_REQUIRE_TRITON=1`` says it must be there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from textcam.serving.triton_local import LocalTritonServer


def triton_python() -> Path | None:
    """The Triton environment's interpreter, or None (the tests then skip, or fail when required)."""
    named = os.environ.get("TEXTCAM_TRITON_PYTHON")
    candidate = Path(named) if named else Path(__file__).resolve().parents[1] / ".venv-triton/bin/python"
    if candidate.is_file():
        return candidate
    if os.environ.get("TEXTCAM_REQUIRE_TRITON") == "1":
        pytest.fail(f"TEXTCAM_REQUIRE_TRITON=1 but no Triton environment at {candidate}")
    return None


def start_server(repository: Path, workdir: Path) -> LocalTritonServer:
    python = triton_python()
    if python is None:
        pytest.skip("no Triton environment (scripts/test.sh makes .venv-triton; or set TEXTCAM_TRITON_PYTHON)")
    if sys.platform != "linux":
        pytest.skip("the PyTriton wheel's tritonserver runs on Linux only")
    return LocalTritonServer(python, repository, workdir)
