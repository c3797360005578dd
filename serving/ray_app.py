"""A bundle served over HTTP by Ray Serve: one ``Explainer`` per replica, requests batched.

Three ways in (details and the API: docs/serving.md):

- the command line: ``textcam serve default --replicas 2``;
- Python: :func:`serve_bundle` starts a local Ray instance (or joins ``address``) and deploys;
- an existing Ray cluster: ``serve run textcam.serving.ray_app:app bundle=/shared/resnet50.textcam
  replicas=4`` (``app`` is the application builder; every key of
  :class:`~textcam.serving.ray_settings.ServeSettings` may be given).

The API: ``POST /explain`` (image bytes; ``?class_index=N``, ``?heatmap=png|array``),
``GET /health``, ``GET /info``, ``GET /selftest``. Refusals are 4xx with ``{"error": "<one line>"}``.

Example::

    from textcam.serving.ray_app import serve_bundle
    url = serve_bundle("default", replicas=2)     # 'http://127.0.0.1:8000'
    # curl -H 'Content-Type: image/png' --data-binary @scene.png http://127.0.0.1:8000/explain
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from textcam.errors import TextcamError, first_line
from textcam.serving.ray_http import (
    HttpError,
    check_content_type,
    check_length,
    error_body,
    explanation_payload,
    open_image,
    parse_query,
    too_large,
)
from textcam.serving.ray_settings import ServeSettings

APP_NAME = "textcam"
DEPLOYMENT_NAME = "TextcamExplainer"
ROUTES = ("POST /explain", "GET /health", "GET /info", "GET /selftest")


@serve.deployment(name=DEPLOYMENT_NAME)
class TextcamExplainer:
    """One replica: a bundle loaded once into an ``Explainer``; ``explain`` requests are gathered by
    ``@serve.batch`` into one ``Explainer.explain_batch`` call, run off the event loop so that the
    next batch keeps filling meanwhile."""

    def __init__(self, settings: dict[str, Any]):
        from textcam.runtime import Explainer

        self.settings = ServeSettings(**settings)
        self.explainer = Explainer(self.settings.resolved_bundle(), **self.settings.explainer_options())
        self.classes = len(self.explainer.classes)
        self.batches = self.batched_images = 0  # /info reports the mean batch: is batching happening?
        self._explain_batch.set_max_batch_size(self.settings.max_batch_size)
        self._explain_batch.set_batch_wait_timeout_s(self.settings.batch_wait_ms / 1000.0)
        self.selftest: dict[str, Any] | None = None
        if self.settings.selftest:
            self.selftest = self._run_selftest()
            if self.selftest["passed"] is False:
                # a host that gives other answers than the bundle expects must not serve it
                raise TextcamError(f"{self.settings.bundle}: the bundle's self-test failed on this replica's host "
                                   f"({self.selftest['summary']}); run `textcam selftest` there")

    def _run_selftest(self) -> dict[str, Any]:
        """``passed``: True or False, or None for a bundle from before self-tests (nothing to hold the host to)."""
        if self.explainer.bundle.info.selftest is None:
            return {"passed": None, "summary": "the bundle carries no self-test; re-export it to get one",
                    "seconds": 0.0}
        start = time.perf_counter()
        try:
            report = self.explainer.selftest()
        except TextcamError as exc:  # a self-test that cannot be read counts as failed
            return {"passed": False, "summary": first_line(exc), "seconds": 0.0}
        return {"passed": bool(report.passed), "summary": report.summary("self-test"), "backend": report.backend,
                "seconds": round(time.perf_counter() - start, 4)}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _explain_batch(self, items: list[tuple[Any, int]]):
        images = [image for image, _ in items]
        classes = [index for _, index in items]
        self.batches += 1
        self.batched_images += len(items)
        return await asyncio.to_thread(self.explainer.explain_batch, images, classes)

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):  # a route prefix other than "/"
            path = path[len(root):] or "/"
        path = path.rstrip("/") or "/"
        try:
            if path == "/explain":
                self._method(request, "POST")
                return JSONResponse(await self._explain(request), headers=self._replica_header())
            if path == "/health":
                self._method(request, "GET")
                return JSONResponse({"status": "ok"})
            if path == "/info":
                self._method(request, "GET")
                return JSONResponse(self._info(), headers=self._replica_header())
            if path == "/selftest":
                self._method(request, "GET")
                found = await asyncio.to_thread(self._run_selftest)
                return JSONResponse({**found, "replica": _replica_id()},
                                    status_code=500 if found["passed"] is False else 200)
            raise HttpError(404, f"{request.method} {path}: no such endpoint; the endpoints: {', '.join(ROUTES)}")
        except HttpError as exc:
            return JSONResponse(error_body(exc.message), status_code=exc.status)
        except TextcamError as exc:  # the image passed the checks but the runtime refused it: still the client's
            return JSONResponse(error_body(str(exc)), status_code=400)
        except Exception as exc:  # a bug or a broken host: one line for the client, the traceback in Ray's log
            import logging

            logging.getLogger("ray.serve").exception("textcam: request failed")
            return JSONResponse(error_body(f"internal error ({type(exc).__name__}: {first_line(exc)})"),
                                status_code=500)

    @staticmethod
    def _method(request: Request, expected: str) -> None:
        if request.method != expected:
            raise HttpError(405, f"{request.method} {request.url.path}: use {expected}")

    async def _explain(self, request: Request) -> dict[str, Any]:
        class_index, heatmap = parse_query(request.query_params, self.classes)
        check_content_type(request.headers.get("content-type"))
        limit = self.settings.max_body_bytes
        check_length(request.headers.get("content-length"), limit)
        body = await _read_body(request, limit)
        image = await asyncio.to_thread(open_image, body, self.explainer.max_pixels)
        result = await self._explain_batch((image, -1 if class_index is None else class_index))
        return await asyncio.to_thread(explanation_payload, result, heatmap)

    def _info(self) -> dict[str, Any]:
        bundle = self.explainer.bundle
        spec = bundle.input
        return {
            "bundle": str(Path(bundle.path).name),
            "classes": list(bundle.classes),
            "layer": bundle.layer,
            "method": bundle.method,
            "input_size": [spec.height, spec.width],
            "backend": self.explainer.backend,
            "native": self.explainer.native,
            "semantics": self.explainer.semantics is not None,
            "model_sha256": bundle.model_sha256,
            "replicas": self.settings.replicas,
            "replica": _replica_id(),
            "max_batch_size": self.settings.max_batch_size,
            "batch_wait_ms": self.settings.batch_wait_ms,
            "max_body_bytes": self.settings.max_body_bytes,
            "batches": {"calls": self.batches, "images": self.batched_images},
            "selftest": self.selftest,
        }

    @staticmethod
    def _replica_header() -> dict[str, str]:
        return {"X-Textcam-Replica": _replica_id()}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read in chunks and refused (413) as soon as it passes ``limit`` (a missing or false
    Content-Length cannot make the replica hold more)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica, or a Ray that names it otherwise
        return ""


def build_app(settings: ServeSettings):
    """The Serve application for ``settings``: the deployment with its replicas, CPUs and queue.

    ``max_ongoing_requests`` is two batches, so that one batch can fill while the other runs;
    Serve's default (5) would keep batches from ever reaching ``max_batch_size`` above 5.
    """
    deployment = TextcamExplainer.options(
        num_replicas=settings.replicas,
        max_ongoing_requests=2 * settings.max_batch_size,
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
    )
    return deployment.bind(asdict(settings))


def app(args: dict[str, object]):
    """The application builder for ``serve run`` and Serve config files::

        serve run textcam.serving.ray_app:app bundle=/shared/resnet50.textcam replicas=2 max_batch_size=16

    ``args``: the :class:`~textcam.serving.ray_settings.ServeSettings` fields as key=value pairs.
    """
    return build_app(ServeSettings.from_args(dict(args)))


def serve_bundle(
    bundle: str | Path,
    replicas: int = 1,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    name: str = APP_NAME,
    route_prefix: str = "/",
    ray_init: dict[str, Any] | None = None,
    **settings: Any,
) -> str:
    """Deploy ``bundle`` with Ray Serve and return its base URL once every replica is ready.

    ``address`` None starts a local Ray instance (one machine); otherwise this process joins the
    cluster there (``"auto"``, ``"ray://head:10001"``). ``settings``: the other
    :class:`~textcam.serving.ray_settings.ServeSettings` fields (``backend``, ``threads``,
    ``max_batch_size``, ``batch_wait_ms``, ``max_body_bytes``, ``num_cpus``, ...). ``ray_init``:
    extra ``ray.init`` arguments. Stop with :func:`stop`::

        url = serve_bundle("default", replicas=2, max_batch_size=16)
    """
    import ray

    config = ServeSettings(bundle=str(bundle), replicas=replicas, **settings)
    path = config.resolved_bundle()
    if address is None or path.exists():
        _check_bundle(config, path)  # here, in one line, rather than as a replica's failure to start
    started = not ray.is_initialized()
    if started:
        options = dict(ray_init or {})
        if address is None:
            options.setdefault("include_dashboard", False)
        ray.init(address=address, **options)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(config), name=name, route_prefix=route_prefix)
    except Exception as exc:
        if started:  # leave no half-started Ray behind the one-line error
            stop(None if address is None else name)
        raise TextcamError(f"{config.bundle}: Ray Serve could not start the application ({first_line(exc)})") \
            from None
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def _check_bundle(config: ServeSettings, path: Path) -> None:
    from textcam.runtime.bundle import Bundle

    Bundle.open(path)
    config.explainer_options()  # backend and option errors, in the flag's words


def stop(name: str | None = None) -> None:
    """Undo :func:`serve_bundle`: delete application ``name`` (on a shared cluster, where other
    applications keep running) and leave the cluster, or, with None, end the local Ray instance
    and with it Serve and every replica."""
    import ray

    if name is not None:
        serve.delete(name)
    # no serve.shutdown() for a local instance: ray.shutdown() ends its actors anyway, and the
    # controller's graceful shutdown, racing it, prints a retry warning on stdout
    if ray.is_initialized():
        ray.shutdown()
