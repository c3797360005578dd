"""What one served bundle is configured with: :class:`ServeSettings`, checked in one line per mistake.

Kept apart from :mod:`textcam.serving.ray_app` so that the CLI can check its flags (and say so in
one line) before Ray is imported or started::

    from textcam.serving.ray_settings import ServeSettings
    settings = ServeSettings.from_args({"bundle": "default", "replicas": "2"})   # `serve run` key=value pairs
    settings.replicas   # 2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from textcam.errors import TextcamError
from textcam.serving.ray_http import DEFAULT_MAX_BODY_BYTES

DEFAULT_NUM_CPUS = 0.5
"""Ray CPUs reserved per replica: 2 replicas fit a 2-core machine with room left, because Ray
Serve (like Ray Data) stalls when actors hold every CPU its controller and proxy need."""
MAX_BATCH_SIZE = 256


@dataclass
class ServeSettings:
    """One bundle served by Ray Serve; every field has the CLI flag of the same name.

    ``threads``: the backend's intra-op threads per replica (None: the backend decides).
    ``batch_wait_ms``: how long a replica waits for a batch to fill after its first request.
    ``max_body_bytes``: the largest request body (413 beyond). ``selftest``: each replica runs
    the bundle's self-test before it takes requests and refuses to start if it fails.
    """

    bundle: str
    replicas: int = 1
    backend: str = "onnxruntime"
    threads: int | None = None
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    num_cpus: float = DEFAULT_NUM_CPUS
    num_gpus: float = 0.0
    selftest: bool = True
    backend_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bundle = str(self.bundle)
        _whole("replicas", self.replicas, 1, 1024)
        _whole("max_batch_size", self.max_batch_size, 1, MAX_BATCH_SIZE)
        _whole("max_body_bytes", self.max_body_bytes, 1, 1 << 40)
        if self.threads is not None:
            _whole("threads", self.threads, 1, 1024)
        _number("batch_wait_ms", self.batch_wait_ms, 0.0, 60_000.0)
        _number("num_cpus", self.num_cpus, 0.0, 1024.0)
        _number("num_gpus", self.num_gpus, 0.0, 64.0)
        if not isinstance(self.selftest, bool):
            raise TextcamError(f"selftest={self.selftest!r}: expected true or false")
        if not isinstance(self.backend_options, dict):
            raise TextcamError(f"backend_options={self.backend_options!r}: expected a dict")

    @classmethod
    def from_args(cls, args: dict[str, object]) -> ServeSettings:
        """Settings from ``serve run ... key=value`` pairs (strings) or a config file's ``args`` (typed);
        an unknown key or a value of the wrong kind fails in one line."""
        known = {f.name: f for f in fields(cls)}
        if "bundle" not in args:
            raise TextcamError("bundle: missing; pass bundle=PATH (or bundle=default for the built-in bundle)")
        values: dict[str, object] = {}
        for name, raw in args.items():
            if name not in known:
                raise TextcamError(f"{name}={raw!r}: unknown setting; the settings: {', '.join(known)}")
            values[name] = _convert(name, raw, known[name].type)
        return cls(**values)

    def resolved_bundle(self) -> Path:
        """The bundle directory (``default``: the built-in shapes-world bundle)."""
        from textcam.cli.bundle_arg import resolve_bundle

        return resolve_bundle(self.bundle)

    def explainer_options(self) -> dict:
        """``Explainer`` keyword arguments for one replica: backend, its options and the batch size."""
        from textcam.cli.backend_options import backend_settings
        from textcam.runtime.backends import ONNXRUNTIME_BACKENDS

        chosen = backend_settings(self.backend, None, self.threads)
        options = {**chosen["backend_options"], **self.backend_options}
        if self.backend in ONNXRUNTIME_BACKENDS:
            # idle ORT threads would busy-wait and starve the replica's event loop and its neighbours
            options.setdefault("allow_spinning", False)
        return {"backend": self.backend, "backend_options": options, "batch_size": self.max_batch_size}


def _whole(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TextcamError(f"{name}={value!r}: expected a whole number from {low} to {high:,}")


def _number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise TextcamError(f"{name}={value!r}: expected a number from {low:g} to {high:g}")


def _convert(name: str, raw: object, kind: str) -> object:
    """A ``serve run`` string as the field's type (typed values from a config file pass through)."""
    if not isinstance(raw, str) or "str" in kind.split(" | ")[0]:
        return raw
    text = raw.strip()
    if "None" in kind and text.lower() in ("", "none"):
        return None
    try:
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise TextcamError(f"{name}={raw!r}: expected a number") from None
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise TextcamError(f"{name}={raw!r}: expected true or false")
    if kind == "dict":
        import json

        try:
            return json.loads(text)
        except ValueError:
            raise TextcamError(f"{name}={raw!r}: expected a JSON object such as {{\"intra_op_threads\": 2}}") from None
    return raw
