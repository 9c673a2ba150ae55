"""What one request may cost the server: the upload's bytes and the decoded image's shape.

Anyone who can reach the server can send it anything, so the limits hold before the work:
an upload is refused while it streams in (not after it has been spooled to disk whole), and
an image's dimensions are read from its header before its pixels are decoded.
"""
from __future__ import annotations

import json


from ..errors import ImageDecodeError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Room for the multipart headers and boundaries around the file in the request body.
MULTIPART_SLACK_BYTES = 64 * 1024
# 64 megapixels is a 9248 x 6936 photo, beyond what phones and most cameras take. The shorter
# side is resized to the card's size, so a 1 x 8000 strip would become 256 x 2,048,000 pixels:
# elongated images are refused by their aspect ratio (50:1 still admits any panorama).
MAX_IMAGE_PIXELS = 64_000_000
MAX_ASPECT_RATIO = 50


def size_text(count: int) -> str:
    return f"{count / (1024 * 1024):g} MiB" if count >= 1024 * 1024 else f"{count} bytes"


def check_image_size(width: int, height: int, name: str) -> None:
    """Refuse, from the header alone, an image too big or too elongated to preprocess (given
    to ``decode_bytes``, which reads the header inside its guarded boundary)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(f"{name}: {width}x{height} is over the server's limit of "
                               f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels")
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise ImageDecodeError(f"{name}: {width}x{height} is more elongated than the server "
                               f"accepts ({MAX_ASPECT_RATIO}:1)")


class UploadTooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: a POST body larger than ``limit`` (plus the multipart slack) gets a
    413 as soon as its Content-Length says so, or as soon as that many bytes have arrived."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit
        self.body_limit = limit + MULTIPART_SLACK_BYTES

    async def refuse(self, send) -> None:
        body = json.dumps({"detail": f"the upload is larger than the server's limit of "
                                     f"{size_text(self.limit)}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.body_limit:
            return await self.refuse(send)
        received = 0
        refused = False

        async def counting_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.body_limit and not refused:
                    refused = True
                    await self.refuse(send)
                    raise UploadTooLarge()   # stops the form parser reading on
            return message

        async def send_unless_refused(message):
            if not refused:  # the app's own answer to the cut-off body is dropped
                await send(message)

        try:
            await self.app(scope, counting_receive, send_unless_refused)
        except Exception:  # UploadTooLarge, or whatever the app made of the cut-off body
            if not refused:
                raise


# What the server holds at once, and for how long (the ``serve`` options' defaults).
# A queue of 32 images is four forward passes of 8: on two cores about half a second of
# waiting, so an accepted request is answered in about that and the others at once with 503.
MAX_QUEUE = 32
# Decoded megapixels in flight. Pillow holds RGB at 4 bytes a pixel, so 100 megapixels is
# about 400 MB: one 64-megapixel image at a time beside ordinary photos.
MAX_PIXELS_IN_FLIGHT = 100_000_000
# Seconds a request has for its headers and body, and for its wait in the queue after.
REQUEST_TIMEOUT = 30.0
# Seconds SIGTERM/SIGINT leaves running requests before the server exits anyway.
GRACE_PERIOD = 10.0
# How long the batcher waits for more images when one arrives at an idle server.
MAX_WAIT_MS = 5.0
# What a 503 asks the client to wait before trying again (seconds).
RETRY_AFTER = 1
JPEG_SIGNATURE = b"\xff\xd8\xff"


def decoded_pixels(width: int, height: int, data: bytes, draft_side: int | None) -> int:
    """The pixels decoding will hold: the header's size, or, for a JPEG decoded in draft mode,
    the size libjpeg reduces it to (by 2, 4 or 8, still covering ``draft_side``; the same
    rule as Pillow's ``JpegImageFile.draft``)."""
    if draft_side and data.startswith(JPEG_SIGNATURE):
        scale = min(width // draft_side, height // draft_side)
        reduction = next((s for s in (8, 4, 2, 1) if scale >= s), 1)
        width, height = -(-width // reduction), -(-height // reduction)
    return width * height
