"""The HTTP face of the inspection service: a Starlette application around a ``Batcher``.

Endpoints: ``POST /score`` (one or several images: multipart form files, or the raw bytes of one image with an
image content type) -> JSON per image; ``GET /maps/<id>.png`` (overlays, only from the service's own store);
``GET /health``; ``GET /metrics`` (Prometheus text); ``GET /`` (the live page) and ``GET /events`` (its
server-sent events: a ``hello`` with the recent results, then one ``result`` per scored image). Every error is
a one-line JSON object ``{"error": ..., "kind": ...}`` with a 4xx/5xx status; with a token every endpoint needs
``Authorization: Bearer <token>`` (GET requests may pass ``?token=`` instead, for the page's images and events).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import time
from dataclasses import dataclass
from importlib import resources

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jzad.serve.batcher import Batcher, Busy
from jzad.serve.engine import Decoded, InputError, Inspector, decode_upload

RAW_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/x-ms-bmp", "image/tiff", "image/gif", "image/webp",
             "image/x-portable-pixmap", "image/x-portable-graymap", "image/x-portable-anymap",
             "application/octet-stream")
"""Content types ``POST /score`` takes as the raw bytes of one image (the format is told by the content)."""
RECENT = 24
"""Results the live page gets when it connects."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ServiceSettings:
    """What the HTTP layer enforces: the largest image in bytes, images per request, the token (None: open),
    the Prometheus and page labels (method, backbone)."""

    max_bytes: int = 20 * 1024 * 1024
    max_images: int = 64
    token: str | None = None
    method: str = ""
    backbone: str = ""


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (several services can live in one process)."""

    def __init__(self, batcher_depth):
        self.registry = CollectorRegistry()
        self.scored = Counter("jzad_images_scored", "Images scored", registry=self.registry)
        self.anomalous = Counter("jzad_images_anomalous", "Images judged anomalous", registry=self.registry)
        self.errors = Counter("jzad_errors", "Refused or failed requests by kind", ["kind"], registry=self.registry)
        self.latency = Histogram("jzad_latency_seconds", "Arrival to score, per image", buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram("jzad_batch_size", "Images per device batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.batch_seconds = Histogram("jzad_batch_seconds", "Device time per batch (decode excluded)",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("jzad_queue_depth", "Images waiting for the device", registry=self.registry)
        self.queue.set_function(batcher_depth)
        self.checkpoints = Counter("jzad_checkpoints", "State checkpoints written", registry=self.registry)


def error_response(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    """The one-line JSON error every failure answers with."""
    return JSONResponse({"error": " ".join(str(message).split()), "kind": kind}, status_code=status,
                        headers=headers)


class Service:
    """The inspector, its batcher, metrics, the live page's subscribers and the recent results."""

    def __init__(self, inspector: Inspector, batcher_options: dict, settings: ServiceSettings):
        self.inspector = inspector
        self.settings = settings
        self.batcher_options = batcher_options
        self.batcher: Batcher | None = None
        self.metrics = Metrics(lambda: self.batcher.depth if self.batcher else 0)
        self.recent: collections.deque = collections.deque(maxlen=RECENT)
        self.subscribers: set[asyncio.Queue] = set()
        self.closing = False
        self.counts = {"scored": inspector.done, "anomalous": 0, "normal": 0, "warming": 0}
        self.started = time.time()

    def count_error(self, kind: str) -> None:
        self.metrics.errors.labels(kind).inc()

    def on_batch(self, results, seconds: float) -> None:
        m = self.metrics
        m.batch_size.observe(len(results))
        m.batch_seconds.observe(seconds)
        for result in results:
            m.scored.inc()
            m.latency.observe(result.latency_ms / 1e3)
            self.counts["scored"] = result.index + 1
            payload = result.as_json()
            self.counts[payload["verdict"]] = self.counts.get(payload["verdict"], 0) + 1
            if result.anomalous:
                m.anomalous.inc()
            self.recent.append(payload)
            self.publish("result", payload)

    def publish(self, event: str, payload: dict) -> None:
        """Send an event to every live page; a page too slow to keep up loses its oldest events."""
        message = (event, payload)
        for queue in self.subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    def hello(self) -> dict:
        """What a newly connected page needs: the set-up, the counts and the recent results."""
        return {"method": self.settings.method, "backbone": self.settings.backbone,
                "threshold": self.inspector.threshold.value, "threshold_rule": self.inspector.threshold.describe(),
                "counts": dict(self.counts),
                "queue": self.batcher.depth if self.batcher else 0, "recent": list(self.recent)}

    def health(self) -> dict:
        batcher = self.batcher
        status = "draining" if (batcher and batcher.closing) or self.closing else "ok"
        return {"status": status, "method": self.settings.method, "backbone": self.settings.backbone,
                "scored": self.inspector.done, "resumed_from": self.inspector.resumed,
                "queue": batcher.depth if batcher else 0, "max_batch": batcher.max_batch if batcher else None,
                "threshold": self.inspector.threshold.to_json(), "uptime_s": round(time.time() - self.started, 3)}


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(f"{what}: {declared} bytes is over the service's limit of {limit} bytes", "too_large", 413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise InputError(f"{what}: over the service's limit of {limit} bytes", "too_large", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, settings: ServiceSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request, in order; malformed requests raise ``InputError``."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        declared = request.headers.get("content-length")
        total_limit = settings.max_bytes * settings.max_images + 65536
        if declared is not None and declared.isdigit() and int(declared) > total_limit:
            raise InputError(f"request body of {declared} bytes is over the limit of {total_limit} bytes "
                             f"({settings.max_images} images of at most {settings.max_bytes} bytes)", "too_large", 413)
        try:
            form = await request.form(max_files=settings.max_images, max_fields=settings.max_images,
                                      max_part_size=settings.max_bytes)
        except HTTPException as err:
            kind = "too_large" if "exceed" in str(err.detail).lower() else "bad_multipart"
            raise InputError(f"multipart form: {err.detail}", kind, 413 if kind == "too_large" else 400) from err
        uploads = []
        try:
            for key, value in form.multi_items():
                if isinstance(value, str):
                    raise InputError(f"form field {key!r} is not a file (send images as file parts)", "bad_multipart")
                data = await value.read()
                if len(data) > settings.max_bytes:
                    raise InputError(f"{value.filename or key}: {len(data)} bytes is over the service's limit "
                                     f"of {settings.max_bytes} bytes a file", "too_large", 413)
                uploads.append((value.filename or key, data))
        finally:
            await form.close()
        if not uploads:
            raise InputError("multipart form has no image file parts", "no_image")
        return uploads
    if media not in RAW_TYPES:
        shown = media or "none"
        raise InputError(f"content type {shown} is not accepted: send multipart/form-data with image files, or "
                         f"the raw bytes of one image as image/* or application/octet-stream", "content_type", 415)
    name = request.query_params.get("name") or request.headers.get("x-image-name") or "upload"
    return [(name, await _read_body(request, settings.max_bytes, name))]


def _events_endpoint(service: Service):
    """The GET /events handler: server-sent events to the live page (a hello with the current state, then every
    batch's results as they are scored, keep-alives each second; a slow page's queue is bounded)."""

    async def events(request: Request) -> Response:
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        service.subscribers.add(queue)

        async def stream():
            try:
                yield f"event: hello\ndata: {json.dumps(service.hello())}\n\n"
                while not service.closing:
                    try:
                        event, payload = await asyncio.wait_for(queue.get(), 1.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: {event}\ndata: {json.dumps(payload)}\n\n"
            finally:
                service.subscribers.discard(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return events


def build_app(service: Service) -> Starlette:
    """The Starlette application of ``service`` (its lifespan starts the batcher, warms the device program up,
    and on shutdown drains the queue and checkpoints)."""
    settings = service.settings
    inspector = service.inspector
    scorer = inspector.streamer.scorer
    scratch = inspector.maps.folder.parent / "incoming"
    page = resources.files("jzad.serve").joinpath("page.html").read_text(encoding="utf-8")

    async def score(request: Request) -> Response:
        arrived = time.perf_counter()
        try:
            uploads = await _uploads(request, settings)
            if len(uploads) > settings.max_images:
                raise InputError(f"{len(uploads)} images in one request; at most {settings.max_images}", "too_many",
                                 413)
            size = scorer.backbone.image_size
            decoded: list[Decoded] = []
            for name, data in uploads:
                decoded.append(await run_in_threadpool(decode_upload, data, name, scorer.prep, size, scratch))
            results = await service.batcher.submit(decoded, arrived)
        except InputError as err:
            service.count_error(err.kind)
            return error_response(err.status, str(err), err.kind)
        except Busy as err:
            service.count_error("busy")
            return error_response(503, str(err), "busy", {"Retry-After": str(err.retry_after)})
        except ClientDisconnect:
            service.count_error("disconnected")
            return error_response(400, "the client disconnected before sending the whole request", "disconnected")
        except ValueError as err:
            service.count_error("scoring")
            return error_response(500, f"scoring failed: {err}", "scoring")
        return JSONResponse({"images": [r.as_json() for r in results]})

    async def maps(request: Request) -> Response:
        path = inspector.maps.path(request.path_params["map_id"])
        if path is None:
            service.count_error("not_found")
            return error_response(404, f"no map {request.path_params['map_id']!r} in the service store "
                                  "(maps are named by 32 hex digits; old ones are removed)", "not_found")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "max-age=86400, immutable"})

    async def health(request: Request) -> Response:
        return JSONResponse(service.health())

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    events = _events_endpoint(service)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        service.count_error(kind)
        detail = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(exc.status_code, detail, kind, getattr(exc, "headers", None))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(inspector.warm_up)
        service.batcher = Batcher(inspector, on_batch=service.on_batch,
                                  on_checkpoint=lambda path: service.metrics.checkpoints.inc(),
                                  **service.batcher_options)
        service.batcher.start()
        try:
            yield
        finally:
            service.closing = True
            await service.batcher.close()

    routes = [
        Route("/score", score, methods=["POST"]),
        Route("/maps/{map_id}.png", maps, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/", index, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.state.service = service
    if settings.token is None:
        return app
    return TokenGuard(app, settings.token, service)


class TokenGuard:
    """ASGI middleware: every HTTP request needs the bearer token (``?token=`` is accepted on GET requests)."""

    def __init__(self, app, token: str, service: Service):
        self.app = app
        self.token = token.encode()
        self.service = service
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else None
        if given is None and request.method == "GET":
            given = request.query_params.get("token")
        if given is None or not hmac.compare_digest(given.encode(), self.token):
            self.service.count_error("unauthorized")
            what = "missing" if given is None else "wrong"
            response = error_response(401, f"{what} bearer token (send Authorization: Bearer <token>)",
                                      "unauthorized", {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

