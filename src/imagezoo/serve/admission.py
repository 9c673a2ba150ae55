"""Admission control: how many images the server holds at once, and how many decoded pixels.

A server that queues whatever arrives answers everyone late and grows until it is killed; one
that refuses what it cannot start soon answers the rest on time, and the refused clients can
try again (503 with ``Retry-After``, as a load balancer expects). Two budgets are kept:

* images: a classify request holds a place from its first byte to its answer, and the request
  past ``max_queue`` is answered 503 before its body is read;
* decoded pixels: an image's size is read from its header (inside the guarded decode) and
  reserved before its pixels are decoded, and given back once it has been preprocessed, so
  eight 8000 x 8000 PNGs of a few kilobytes each cannot take gigabytes at once.
"""
from __future__ import annotations

import json
import threading

from ..errors import ImageDecodeError
from .limits import RETRY_AFTER, check_image_size, decoded_pixels


class ServerBusy(ImageDecodeError):
    """The server is full (images or pixels): answered 503 with ``Retry-After``.

    A subclass of ``ImageDecodeError`` only so that it passes unchanged through
    ``decode_bytes``, which turns every other exception of a decode into that input's error."""


class QueueTimeout(ServerBusy):
    """A request that waited in the queue past its time budget."""


class Admission:
    """The two budgets, shared by the request threads and the event loop (thread-safe)."""

    def __init__(self, max_queue: int, max_pixels: int, metrics=None):
        if max_queue < 1 or max_pixels < 1:
            raise ValueError("max_queue and max_pixels_in_flight must be at least 1")
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self.metrics = metrics
        self.images = 0
        self.pixels = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Take a place for one image; False when the queue is full."""
        with self._lock:
            if self.images >= self.max_queue:
                return False
            self.images += 1
            self._publish()
            return True

    def leave(self) -> None:
        with self._lock:
            self.images -= 1
            self._publish()

    def reserve(self, pixels: int) -> bool:
        """Reserve ``pixels`` of the decoding budget; False when they do not fit now."""
        with self._lock:
            if self.pixels + pixels > self.max_pixels:
                return False
            self.pixels += pixels
            self._publish()
            return True

    def release(self, pixels: int) -> None:
        with self._lock:
            self.pixels -= pixels
            self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.in_flight(self.images, self.pixels)


class PixelReservation:
    """One upload's share of the pixel budget: ``check`` is given to ``decode_bytes`` as its
    ``check_size`` (it runs on the header, before any pixel is decoded); ``release`` gives the
    share back once the image has been preprocessed."""

    def __init__(self, admission: Admission, data: bytes, draft_side: int | None):
        self.admission = admission
        self.data = data
        self.draft_side = draft_side
        self.pixels = 0

    def check(self, width: int, height: int, name: str) -> None:
        check_image_size(width, height, name)
        pixels = decoded_pixels(width, height, self.data, self.draft_side)
        if pixels > self.admission.max_pixels:  # would never fit: not worth a retry
            raise ImageDecodeError(
                f"{name}: {width}x{height} is more than the server decodes at once "
                f"({self.admission.max_pixels / 1e6:g} megapixels)")
        if not self.admission.reserve(pixels):
            raise ServerBusy(f"{name}: the server is decoding as many pixels as it can hold; "
                             f"try again in {RETRY_AFTER} s")
        self.pixels = pixels

    def release(self) -> None:
        if self.pixels:
            self.admission.release(self.pixels)
            self.pixels = 0


def busy_response(message: str) -> tuple[dict, bytes]:
    """The headers and body of a 503: JSON ``detail`` like every other error, and
    ``Retry-After``."""
    body = json.dumps({"detail": message}).encode()
    return {"retry-after": str(RETRY_AFTER), "content-type": "application/json",
            "content-length": str(len(body))}, body


class AdmissionLimit:
    """ASGI middleware: a classify POST past the image budget is answered 503 at once, before
    its body is read; the others hold their place until their answer has been sent."""

    def __init__(self, app, admission: Admission):
        self.app = app
        self.admission = admission

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" \
                or not scope["path"].endswith("/classify"):
            return await self.app(scope, receive, send)
        if not self.admission.enter():
            if self.admission.metrics is not None:
                self.admission.metrics.rejected("queue_full")
            headers, body = busy_response(
                f"the server has {self.admission.max_queue} images in hand; "
                f"try again in {RETRY_AFTER} s")
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave()
