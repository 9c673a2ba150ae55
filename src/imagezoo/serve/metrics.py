"""What the server did: one access-log line per request and Prometheus metrics at ``/metrics``.

The metrics live in a registry of the app's own (not prometheus-client's global one), so that
several apps in one process (tests, or a server per model) count apart:

* ``imagezoo_requests_total{route, method, status}`` and
  ``imagezoo_request_duration_seconds{route}`` (histogram), for every request, refused or not;
* ``imagezoo_batch_size{model}`` and ``imagezoo_forward_seconds{model}`` (histograms): the
  forward passes the dynamic batcher ran;
* ``imagezoo_queue_depth{model}``: images decoded and waiting for a forward pass;
* ``imagezoo_images_in_flight`` and ``imagezoo_megapixels_in_flight``: the admission budgets
  in use (requests held from their first byte to their answer; pixels being decoded);
* ``imagezoo_rejected_total{reason}``: 503s by cause (queue_full, pixels, queue_timeout).

Routes are labelled by their template (``/api/models/{name}/classify``), never by the raw path,
so that a scan of random URLs cannot grow the label set without bound.
"""
from __future__ import annotations

import logging
import re
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

access_log = logging.getLogger("imagezoo.serve.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
ROUTE_PATTERNS = [(re.compile(r"^/api/models/[^/]+/classify$"), "/api/models/{name}/classify"),
                  (re.compile(r"^/api/models/[^/]+$"), "/api/models/{name}"),
                  (re.compile(r"^/static(/.*)?$"), "/static"),
                  (re.compile(r"^/static-offline-docs(/.*)?$"), "/static-offline-docs")]
KNOWN_ROUTES = {"/", "/healthz", "/metrics", "/api/model", "/api/models", "/api/classify",
                "/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json"}


def route_label(scope: dict) -> str:
    """The route template a request went to, or ``other``."""
    route = scope.get("route")
    if getattr(route, "path", None):
        return route.path
    path = scope.get("path", "")
    if path in KNOWN_ROUTES:
        return path
    for pattern, label in ROUTE_PATTERNS:
        if pattern.match(path):
            return label
    return "other"


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("imagezoo_requests", "HTTP requests answered, by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("imagezoo_request_duration_seconds",
                                 "Time from a request's start to its answer's last byte",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_sizes = Histogram("imagezoo_batch_size", "Images per forward pass",
                                     ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.forward_time = Histogram("imagezoo_forward_seconds", "Time of one forward pass",
                                      ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("imagezoo_queue_depth", "Images decoded and waiting for a forward pass",
                           ["model"], registry=self.registry)
        self.images = Gauge("imagezoo_images_in_flight",
                            "Classify requests admitted and not yet answered",
                            registry=self.registry)
        self.megapixels = Gauge("imagezoo_megapixels_in_flight",
                                "Decoded megapixels reserved by images being decoded",
                                registry=self.registry)
        self.rejections = Counter("imagezoo_rejected", "Requests answered 503, by cause",
                                  ["reason"], registry=self.registry)

    def in_flight(self, images: int, pixels: int) -> None:
        self.images.set(images)
        self.megapixels.set(pixels / 1e6)

    def queue_depth(self, model: str, depth: int) -> None:
        self.queue.labels(model).set(depth)

    def batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_sizes.labels(model).observe(size)
        self.forward_time.labels(model).observe(seconds)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def image_note(state: dict) -> str:
    """What the access log says of a request's image: WxH and the upload's size, when known."""
    parts = []
    if state.get("image_size"):
        parts.append("%dx%d" % state["image_size"])
    if state.get("upload_bytes") is not None:
        parts.append(f"{state['upload_bytes'] / 1000:.1f}kB")
    return " ".join(parts) or "-"


class Observe:
    """ASGI middleware (outermost): times every request, counts it by route and status, and
    logs one access line: client, method, path, status, milliseconds, image size."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def watched_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.request(route_label(scope), scope["method"], status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                where = f"{client[0]}:{client[1]}" if client else "-"
                access_log.info("%s %s %s %d %.1fms %s", where, scope["method"], scope["path"],
                                status, seconds * 1000, image_note(scope.get("state") or {}))
