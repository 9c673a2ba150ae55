"""``POST /api/explain``: the Grad-CAM heat map of an upload, as the PNG ``imagezoo explain``
draws, for the page's "heat map" button.

Heat maps need the PyTorch model's gradients, which a compiled engine (ONNX Runtime,
OpenVINO) does not have: the server gets the eager model beside the engine that classifies
(``explainer``), and answers 501 when it has none (an ``.onnx`` model). One heat map at a
time: each costs a forward and a backward pass, on every core."""
from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import Response

from ..data.images import decode_bytes
from ..errors import ImageDecodeError, ImagezooError
from .limits import check_image_size, size_text


NO_HEAT_MAPS = ("this server has no PyTorch model to draw heat maps with (a compiled file "
                "such as .onnx cannot give gradients)")


class NoHeatMaps(Exception):
    """The deferred model turned out to have no layers to hook."""


class Deferred:
    """The eager PyTorch model, loaded by ``load()`` when the first heat map is asked for: a
    server that classifies without PyTorch imports it only then."""

    def __init__(self, load):
        self.load, self.model = load, None

    def get(self):
        """The model, or None when it has no layers a heat map can hook (a TorchScript file)."""
        if self.model is None:
            from .app import eager_model
            self.model = eager_model(self.load()) or False
        return self.model or None


def add_explain_route(app: FastAPI, explainer, max_upload_bytes: int) -> None:
    """Add the route; ``explainer`` is the eager PyTorch model of the first model, a
    ``Deferred`` one, or None."""
    lock = threading.Lock()

    def draw(data: bytes, name: str, target: str | None) -> bytes:
        from ..viz import explain, overlay
        image = decode_bytes(data, name, check_size=check_image_size)
        with lock, tempfile.TemporaryDirectory() as folder:
            model = explainer.get() if isinstance(explainer, Deferred) else explainer
            if model is None:
                raise NoHeatMaps()
            [explanation] = explain(model, image, target=target, top=1)
            return overlay(image, explanation, Path(folder) / "heat.png").read_bytes()

    @app.post("/api/explain", response_class=Response,
              responses={200: {"content": {"image/png": {}}}})
    async def explain_upload(file: UploadFile = File(..., description="one image file"),
                             target: str | None = Query(None, alias="class",
                                                        description="class index or label "
                                                                    "(default: the top class)")):
        if explainer is None:
            raise HTTPException(501, NO_HEAT_MAPS)
        name = file.filename or "upload"
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"{name}: larger than the server's limit of "
                                     f"{size_text(max_upload_bytes)}")
        try:
            png = await asyncio.get_running_loop().run_in_executor(None, draw, data, name, target)
        except NoHeatMaps:
            raise HTTPException(501, NO_HEAT_MAPS) from None
        except ImageDecodeError as error:
            raise HTTPException(400, str(error)) from None
        except ImagezooError as error:  # an unknown class name or index
            raise HTTPException(400, str(error)) from None
        return Response(png, media_type="image/png")
