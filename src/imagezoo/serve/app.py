"""The HTTP server: models behind a small JSON API and an upload page.

Routes (all relative, so the app also works mounted under a prefix behind a proxy):

* ``GET /``: the upload page (``static/index.html`` and its script and style);
* ``GET /api/model``: the (first) model's card summary and the engine that runs it;
* ``POST /api/classify``: multipart form field ``file`` holding one image -> its top classes
  (``?top=K``, default the server's ``--top``); an unreadable image, or one too large or too
  elongated to preprocess, is a 400 with the decoder's message; two ``file`` parts a 400; an
  upload over the size limit a 413, sent as soon as the limit is passed; a full server a 503
  with ``Retry-After``;
* ``GET /api/models``, ``GET /api/models/NAME``, ``POST /api/models/NAME/classify``: the same
  for each model the server holds (``serve`` given several);
* ``GET /healthz``: ``{"status": "ok"}`` for load balancers and scripts waiting for the start;
* ``GET /metrics``: Prometheus metrics (see ``metrics.py``); ``/docs``, ``/redoc``: the API's
  pages, with Swagger UI and ReDoc served from the fastapi-offline package (no CDN).

How an upload goes: admitted (or 503 at once: ``admission.py``), its body read within the time
limit (``guards.py``), decoded and preprocessed in a pool of one thread per core (its decoded
pixels reserved from the header first), then queued for the dynamic batcher
(``batcher.py``), which runs the images ready together in one forward pass. The page, the
model description, the health check and the metrics are async and never wait behind uploads.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import __version__
from ..choices import INFERENCE_BATCH
from ..data.images import decode_bytes
from ..errors import ImageDecodeError, ImagezooError
from ..data.decode_guard import preprocess_reason
from ..data.items import draft_size
from ..data.transforms import preprocess_array, preprocess_ten_crop_array
from .admission import Admission, AdmissionLimit, PixelReservation, QueueTimeout, ServerBusy
from .batcher import DynamicBatcher
from .forward import array_forward, is_array_model
from .guards import OriginCheck, TimeLimit
from .limits import (MAX_PIXELS_IN_FLIGHT, MAX_QUEUE, MAX_UPLOAD_BYTES, MAX_WAIT_MS,
                     REQUEST_TIMEOUT, RETRY_AFTER, UploadLimit, size_text)
from .memory import TRIM_AFTER_PIXELS, give_back_memory
from .metrics import Metrics, Observe

STATIC = Path(__file__).parent / "static"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The longest the shutdown waits for a forward pass or a decode still running.
WORKER_JOIN_SECONDS = 5.0


@dataclass
class Served:
    """One model the server holds, with what its requests need."""
    name: str
    model: object   # a PyTorch model, an Engine, an OnnxModel or a LightEngine
    draft_side: int | None
    batcher: DynamicBatcher
    summary: dict


def named_models(models) -> dict:
    """A model, a list of models (named by their cards) or a dict name -> model."""
    if isinstance(models, Mapping):
        pairs = list(models.items())
    elif isinstance(models, (list, tuple)):
        pairs = [(model.card.name, model) for model in models]
    else:
        pairs = [(models.card.name, models)]
    if not pairs:
        raise ImagezooError("no model to serve")
    named: dict = {}
    for name, model in pairs:
        if not MODEL_NAME.match(name):
            raise ImagezooError(f"cannot serve a model named {name!r} at /api/models/NAME: "
                                f"use letters, digits, '.', '_' and '-'")
        if name in named:
            raise ImagezooError(f"two models are named {name!r}: give them names of their own")
        named[name] = model
    return named


def default_max_batch(model) -> int:
    """The engine's batch size when it has one, else the inference commands' batch size."""
    return int(getattr(model, "batch_size", None) or INFERENCE_BATCH)


def create_app(model, top: int = 5, ten_crop: bool = False,
               max_upload_bytes: int = MAX_UPLOAD_BYTES,
               allowed_hosts: list[str] | None = None, *,
               max_batch: int | None = None, max_wait_ms: float = MAX_WAIT_MS,
               max_queue: int = MAX_QUEUE, max_pixels_in_flight: int = MAX_PIXELS_IN_FLIGHT,
               timeout: float = REQUEST_TIMEOUT, allow_origins=(),
               decode_threads: int | None = None, explainer=None) -> FastAPI:
    """A FastAPI app serving ``model``: a loaded model, an ``Engine``, an ``OnnxModel``
    (anything with a ``card`` that maps a preprocessed batch to logits), put in eval mode, or a
    cached engine run without PyTorch (``engine.light.LightEngine``); or
    several, as a list (named by their cards) or a dict name -> model, each at
    ``/api/models/NAME/classify``, the first also at ``/api/classify``.

    An engine built with ``precision="fast"`` decodes big JPEGs in draft mode, as
    ``imagezoo classify --precision fast`` does; ``exact`` decodes fully. ``allowed_hosts``
    (Host header names) keeps other web sites from reaching a server on 127.0.0.1 through
    DNS rebinding; ``serve`` sets it for a loopback address. ``allow_origins`` lists the web
    origins (``https://app.example``, or ``*``) whose pages may POST to the server besides
    its own (see ``guards.OriginCheck``); they also get CORS headers.

    Batching and limits: up to ``max_batch`` images per forward pass (default the engine's
    batch size, else 8), waiting at most ``max_wait_ms`` for more when a pass could start;
    ``max_queue`` images in hand and ``max_pixels_in_flight`` decoded pixels at once (beyond
    them: 503 with ``Retry-After``); ``timeout`` seconds for a request's body to arrive, and
    as its budget for the wait in the queue after (then: 503); ``decode_threads`` images
    decoded at once (default: one per core). ``explainer``: the first model's eager PyTorch
    model, for ``POST /api/explain`` (heat maps), or an ``explain.Deferred`` that loads it on
    the first such request (a server running without PyTorch imports it only then); by
    default the first model itself when it is a PyTorch model with layers (not an engine or
    an ONNX file)."""
    models = named_models(model)
    metrics = Metrics()
    admission = Admission(max_queue, max_pixels_in_flight, metrics)
    forward_lock = threading.Lock()   # one forward pass at a time, whichever the model
    decoders = ThreadPoolExecutor(max_workers=decode_threads or os.cpu_count() or 1,
                                  thread_name_prefix="imagezoo-decode")
    served: dict[str, Served] = {}

    def coming() -> int:
        """Requests admitted (from their first byte) but neither queued nor running yet."""
        return admission.images - sum(each.batcher.depth + each.batcher.running
                                      for each in served.values())
    for name, each in models.items():
        if hasattr(each, "eval"):
            each.eval()  # a model left in training mode would answer nonsense and drift
        precision = getattr(each, "precision", "exact")
        batch = max_batch or default_max_batch(each)
        card = each.card
        served[name] = Served(
            name, each, draft_size(card, draft=precision == "fast"),
            DynamicBatcher(array_forward(each), card, name, batch, max_wait_ms / 1000,
                           forward_lock, metrics, coming=coming),
            {"name": card.name,
             "architecture": card.architecture,
             "classes": card.num_classes,
             "input_size": card.preprocess.crop,
             "source": card.source,
             "source_format": card.source_format,
             "license": card.license,
             "backend": getattr(each, "backend", "torch"),
             "precision": precision,
             "numerics": getattr(each, "numerics", "fp32"),
             "ten_crop": ten_crop,
             "top": top,
             "max_upload_bytes": max_upload_bytes,
             "max_batch": batch,
             "route": f"/api/models/{name}/classify"})
    first = next(iter(served.values()))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # By now the server has waited out its grace period and nothing is queued: the
        # workers end at once. They are joined (briefly) all the same: a thread still inside
        # PyTorch when the interpreter finalizes can abort the process ("terminate called
        # without an active exception") instead of letting it exit 0.
        await asyncio.to_thread(stop_workers, [each.batcher for each in served.values()],
                                decoders, WORKER_JOIN_SECONDS)

    description = (f"Image classification with {', '.join(served)}." if len(served) > 1
                   else f"Image classification with {first.model.card.name}.")
    app = FastAPIOffline(title="imagezoo", version=__version__, description=description,
                         lifespan=lifespan)
    # Added innermost first: a request meets them in the reverse order.
    app.add_middleware(UploadLimit, limit=max_upload_bytes)
    app.add_middleware(AdmissionLimit, admission=admission)
    app.add_middleware(TimeLimit, timeout=timeout)
    app.add_middleware(OriginCheck, allow_origins=allow_origins)
    if allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(allow_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(Observe, metrics=metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.metrics = metrics
    app.state.admission = admission
    app.state.served = served

    def decode_upload(data: bytes, name: str, target: Served, deadline: float):
        """In a decoding thread: the upload -> (model input, decoded size)."""
        if time.monotonic() > deadline:
            raise QueueTimeout(f"{name}: waited longer than the server's time limit for a "
                               f"decoder; try again in {RETRY_AFTER} s")
        reservation = PixelReservation(admission, data, target.draft_side)
        try:
            image = decode_bytes(data, name, target.draft_side, check_size=reservation.check)
            size = image.size
            transform = preprocess_ten_crop_array if ten_crop else preprocess_array
            try:
                array = transform(image, target.model.card.preprocess)
            except Exception as error:  # noqa: BLE001 - an odd image is its own error
                raise ImageDecodeError(f"{name}: {preprocess_reason(error)}") from None
            del image
        finally:
            big = reservation.pixels >= TRIM_AFTER_PIXELS
            reservation.release()
            if big:
                give_back_memory()
        return array, size

    async def classify_upload(target: Served, request: Request, file: UploadFile,
                              top_k: int) -> dict:
        files = (await request.form()).getlist("file")   # parsed once, by FastAPI
        if len(files) > 1:
            raise HTTPException(400, f"one image per request: the form has {len(files)} "
                                     f"'file' parts")
        name = file.filename or "upload"
        data = await file.read(max_upload_bytes + 1)
        request.state.upload_bytes = len(data)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"{name}: larger than the server's limit of "
                                     f"{size_text(max_upload_bytes)}")
        deadline = getattr(request.state, "deadline", None) or time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        try:
            array, size = await asyncio.wait_for(
                loop.run_in_executor(decoders, decode_upload, data, name, target, deadline),
                max(0.0, deadline - time.monotonic()))
            request.state.image_size = size
            answer = await target.batcher.classify(array, top_k, deadline)
        except asyncio.TimeoutError:
            metrics.rejected("queue_timeout")
            raise busy(f"{name}: waited longer than the server's time limit for a decoder; "
                       f"try again in {RETRY_AFTER} s") from None
        except ServerBusy as error:
            metrics.rejected("queue_timeout" if isinstance(error, QueueTimeout) else "pixels")
            raise busy(str(error)) from None
        except ImageDecodeError as error:
            raise HTTPException(400, str(error)) from None
        return {"input": name, "predictions": [r._asdict() for r in answer.ranked],
                "milliseconds": round(answer.milliseconds, 1), "batch": answer.batch_size}

    def model_named(name: str) -> Served:
        if name not in served:
            raise HTTPException(404, f"no model named {name!r} here; this server has: "
                                     f"{', '.join(served)}")
        return served[name]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        for each in served.values():
            metrics.queue_depth(each.name, each.batcher.depth)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/api/model")
    async def describe_model() -> dict:
        return first.summary

    @app.get("/api/models")
    async def list_models() -> list[dict]:
        return [each.summary for each in served.values()]

    @app.get("/api/models/{name}")
    async def describe_named_model(name: str) -> dict:
        return model_named(name).summary

    @app.post("/api/classify")
    async def classify(request: Request,
                       file: UploadFile = File(..., description="one image file"),
                       top_k: int = Query(top, alias="top", ge=1,
                                          description="how many classes to return")) -> dict:
        return await classify_upload(first, request, file, top_k)

    @app.post("/api/models/{name}/classify")
    async def classify_with_model(name: str, request: Request,
                                  file: UploadFile = File(..., description="one image file"),
                                  top_k: int = Query(top, alias="top", ge=1,
                                                     description="how many classes to return")
                                  ) -> dict:
        return await classify_upload(model_named(name), request, file, top_k)

    from .explain import add_explain_route
    add_explain_route(app, explainer if explainer is not None else eager_model(first.model),
                      max_upload_bytes)
    return app


def eager_model(model):
    """``model`` when it is a PyTorch model whose layers a heat map can hook, else None."""
    if is_array_model(model):
        return None
    from ..models.layers import named_layers
    try:
        return model if named_layers(model) and not hasattr(model, "backend") else None
    except Exception:  # noqa: BLE001 - an engine or exported file: no heat maps
        return None


def stop_workers(batchers: list[DynamicBatcher], decoders: ThreadPoolExecutor,
                 seconds: float) -> None:
    """End the decoding threads (a decode is bounded: at most 64 megapixels) and the
    batchers (each waited for at most ``seconds`` in all)."""
    decoders.shutdown(wait=True, cancel_futures=True)
    deadline = time.monotonic() + seconds
    for batcher in batchers:
        batcher.stop(wait=max(0.0, deadline - time.monotonic()))


def busy(message: str) -> HTTPException:
    return HTTPException(503, message, headers={"Retry-After": str(RETRY_AFTER)})
