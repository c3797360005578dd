"""``textcam serve``: a bundle behind an HTTP JSON API, hosted by Ray Serve (the ``[serve]`` extra)."""

from __future__ import annotations

import time

import click

from textcam.cli.backend_options import FiniteFloatRange, backend_option
from textcam.cli.bundle_arg import BUNDLE_HELP
from textcam.cli.safe_text import safe_text
from textcam.errors import TextcamError

MISSING_EXTRA = "the serve extra is not installed; pip install 'textcam[serve]'"
RAY_LOGS = "/tmp/ray/session_latest/logs/serve"


@click.command("serve", epilog=BUNDLE_HELP)
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--replicas", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Replicas of the deployment, each with its own Explainer (and backend threads).")
@click.option("--address", default=None, metavar="RAY",
              help="Join this Ray cluster (auto, HOST:6379, ray://HOST:10001) instead of starting a local Ray.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the HTTP proxy listens on (0.0.0.0: every interface; think before exposing it).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@backend_option
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Backend intra-op threads per replica (default: the backend decides).")
@click.option("--max-batch-size", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Requests a replica explains in one graph call.")
@click.option("--batch-wait-ms", type=FiniteFloatRange(0, 60_000), default=5.0, show_default=True,
              help="How long a replica waits for a batch to fill after its first request.")
@click.option("--num-cpus", type=FiniteFloatRange(0, 1024), default=0.5, show_default=True,
              help="Ray CPUs reserved per replica (leave some for Serve's controller and proxy).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=32 * 1024 * 1024, show_default=True,
              help="Largest request body; larger ones get HTTP 413.")
@click.option("--duration", type=FiniteFloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop by itself after SECONDS (default: run until Ctrl-C).")
def serve_command(bundle, replicas, address, host, port, backend, threads, max_batch_size, batch_wait_ms, num_cpus,
                  max_body_bytes, duration):
    """Serve a bundle over HTTP with Ray Serve: POST an image, get its label, score, phrases and heatmap.

    Without --address a local Ray instance is started on this machine; with it, the application
    joins that cluster (the bundle path must exist on every node). Prints the base URL, then runs
    until Ctrl-C or --duration; Ray's logs: /tmp/ray/session_latest/logs/serve.

    \b
    Endpoints (errors: HTTP 4xx with {"error": "<one line>"}):
      POST /explain   body = image bytes (PNG/JPEG); ?class_index=N  ?heatmap=png|array
      GET  /health    {"status": "ok"}
      GET  /info      classes, layer, method, input size, backend, replicas, self-test
      GET  /selftest  the bundle's self-test on the replica that answers
    \b
    Examples:
      textcam serve default --replicas 2
      curl -H 'Content-Type: image/png' --data-binary @cat.png http://127.0.0.1:8000/explain
      curl -H 'Content-Type: image/jpeg' --data-binary @cat.jpg \\
           'http://127.0.0.1:8000/explain?class_index=3&heatmap=png'
      curl http://127.0.0.1:8000/info
      textcam serve resnet50.textcam --address auto --replicas 4 --max-batch-size 16
    \b
    On a cluster that runs Serve already: serve run textcam.serving.ray_app:app bundle=PATH replicas=2
    (docs/serving.md).
    """
    from textcam.serving.ray_settings import ServeSettings

    settings = ServeSettings(bundle=bundle, replicas=replicas, backend=backend, threads=threads,
                             max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, num_cpus=num_cpus,
                             max_body_bytes=max_body_bytes)
    settings.resolved_bundle()  # `default` resolves (or fails) before Ray starts
    ray_app = _import_ray_app()
    import logging

    # replica access logs stay in Ray's log files: one line per request would drown the terminal;
    # Serve's start-up notes too (one says http_options "will not be applied": they were, by serve.start)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    url = ray_app.serve_bundle(bundle, replicas, address, host, port,
                               ray_init={"logging_level": logging.WARNING, "log_to_driver": False},
                               **_settings_fields(settings))
    click.echo(url)
    click.echo(safe_text(f"serving {bundle} at {url} with {replicas} replica(s); "
                         + (f"stopping after {duration:g} s" if duration else "Ctrl-C stops")), err=True)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a server is stopped: not an error
    finally:
        ray_app.stop(None if address is None else ray_app.APP_NAME)
    click.echo("stopped", err=True)


def _import_ray_app():
    import importlib

    try:
        # import_module, not `from textcam.serving import ray_app`: the latter would accept a stale
        # attribute of the package without importing ray
        ray_app = importlib.import_module("textcam.serving.ray_app")
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in ("ray", "starlette", "fastapi", "uvicorn", "") or "ray" in str(exc):
            raise TextcamError(MISSING_EXTRA) from None
        raise
    return ray_app


def _settings_fields(settings) -> dict:
    from dataclasses import asdict

    fields = asdict(settings)
    for given in ("bundle", "replicas"):
        fields.pop(given)
    return fields
