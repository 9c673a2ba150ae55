"""The HTTP server: one model behind a small JSON API and an upload page.

Routes (all relative, so the app also works mounted under a prefix behind a proxy):

* ``GET /``: the upload page (``static/index.html`` and its script and style);
* ``GET /api/model``: the model card's summary and the engine that runs it;
* ``POST /api/classify``: multipart form field ``file`` holding one image -> its top classes
  (``?top=K``, default the server's ``--top``); an unreadable image, or one too large or too
  elongated to preprocess, is a 400 with the decoder's message; an upload over the size limit
  a 413, sent as soon as the limit is passed;
* ``GET /healthz``: ``{"status": "ok"}`` for load balancers and scripts waiting for the start.

FastAPI runs each upload in a thread of its pool: up to one decode per core runs at a time,
and one lock lets one forward pass run at a time, because the model (or engine) already uses
every core and two passes at once would only slow each other down. The page, the model
description and the health check are async and never wait behind uploads.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from torch import nn

from .. import __version__
from ..data.images import decode_bytes
from ..errors import ImageDecodeError
from ..tasks.classify import classify_input, draft_size, preprocess
from .limits import MAX_UPLOAD_BYTES, UploadLimit, check_image_size, size_text

STATIC = Path(__file__).parent / "static"


def create_app(model: nn.Module, top: int = 5, ten_crop: bool = False,
               max_upload_bytes: int = MAX_UPLOAD_BYTES,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """A FastAPI app serving ``model`` (a loaded model, an ``Engine`` or an ``OnnxModel``:
    anything with a ``card`` that maps a preprocessed batch to logits), put in eval mode.

    An engine built with ``precision="fast"`` decodes big JPEGs in draft mode, as
    ``imagezoo classify --precision fast`` does; ``exact`` decodes fully. ``allowed_hosts``
    (Host header names) keeps other web sites from reaching a server on 127.0.0.1 through
    DNS rebinding; ``serve`` sets it for a loopback address."""
    model.eval()  # a model left in training mode would answer nonsense and drift
    card = model.card
    precision = getattr(model, "precision", "exact")
    draft_side = draft_size(card, draft=precision == "fast")
    forward_lock = threading.Lock()
    decode_slots = threading.BoundedSemaphore(os.cpu_count() or 1)
    app = FastAPI(title="imagezoo", version=__version__,
                  description=f"Image classification with {card.name}.")
    app.add_middleware(UploadLimit, limit=max_upload_bytes)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    summary = {
        "name": card.name,
        "architecture": card.architecture,
        "classes": card.num_classes,
        "input_size": card.preprocess.crop,
        "source": card.source,
        "source_format": card.source_format,
        "license": card.license,
        "backend": getattr(model, "backend", "torch"),
        "precision": precision,
        "numerics": getattr(model, "numerics", "fp32"),
        "ten_crop": ten_crop,
        "top": top,
        "max_upload_bytes": max_upload_bytes,
    }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/model")
    async def describe_model() -> dict:
        return summary

    @app.post("/api/classify")
    def classify_upload(file: UploadFile = File(..., description="one image file"),
                        top_k: int = Query(top, alias="top", ge=1,
                                           description="how many classes to return")) -> dict:
        name = file.filename or "upload"
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"{name}: larger than the server's limit of "
                                     f"{size_text(max_upload_bytes)}")
        try:
            with decode_slots:
                image = decode_bytes(data, name, draft_side, check_size=check_image_size)
                batch = preprocess(image, card, ten_crop)
        except ImageDecodeError as error:
            raise HTTPException(400, str(error)) from None
        with forward_lock:
            started = time.perf_counter()
            [ranked] = classify_input(model, batch, top=top_k)
            milliseconds = (time.perf_counter() - started) * 1000
        return {"input": name, "predictions": [r._asdict() for r in ranked],
                "milliseconds": round(milliseconds, 1)}

    return app
