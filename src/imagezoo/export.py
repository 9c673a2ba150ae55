"""Export a model to ONNX or TorchScript, checked against PyTorch, and run ONNX files back.

An exported graph takes **raw pixels**: float32, N x 3 x H x W, RGB, values 0..255, at the
card's crop size, with a dynamic batch dimension. The card's normalisation (scale, channel
order, mean image or mean, std) is inside the graph (``models.normalize.NormalizedModel``),
so a user of the file needs only to resize and crop; no framework convention leaks out.

ONNX files carry their card in the model's ``metadata_props``:

* ``imagezoo.card``: the card as JSON (``ModelCard.to_json``), with the preprocessing replaced
  by its raw-pixel view (same resize, crop and interpolation; scale 1, RGB, mean 0, std 1, no
  mean image), which is what a caller has to do before feeding the graph;
* ``imagezoo.source_preprocess``: the original preprocessing, for information only (a mean
  image is summarised by its shape and per-channel average; its values are in the graph);
* ``imagezoo.labels``: the class labels as a JSON list (also in the card);
* ``imagezoo.input``: the input's name, layout, channel order, value range and size;
* ``imagezoo.opset``, ``imagezoo.version``.

The exporter is PyTorch's ``torch.export``-based one (``torch.onnx.export(dynamo=True)``),
the default and maintained path in PyTorch 2.13 (the TorchScript-based exporter is
deprecated). It works for every architecture imagezoo builds, including EfficientNet-Lite's
``Conv2dSame``, whose padding is computed from the input's (fixed) height and width.

Every export is checked before it replaces the target: the written file is run (ONNX Runtime
on the CPU, or ``torch.jit.load``) on the bundled cat photo and a second picture, in one batch
of two, and compared with the PyTorch model fed by ``to_tensor`` (``CHECK_RTOL``,
``CHECK_ATOL``). A file that disagrees raises ``ExportError`` and is not left behind.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import __version__
from .card import ModelCard
from .data.images import load_image
from .data.transforms import Preprocess, center_crop, resize_and_pad, to_tensor
from .errors import ImagezooError, WeightsError
from .fileio import atomic_path
from .models.normalize import NormalizedModel, raw_pixel_preprocess

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20          # PyTorch 2.13's native opset for the dynamo exporter
MIN_OPSET = 18              # the dynamo exporter's lowest supported opset
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
CHECK_RTOL = 1e-3
CHECK_ATOL = 1e-4

CARD_KEY = "imagezoo.card"
SOURCE_PREPROCESS_KEY = "imagezoo.source_preprocess"
LABELS_KEY = "imagezoo.labels"
INPUT_KEY = "imagezoo.input"
OPSET_KEY = "imagezoo.opset"
VERSION_KEY = "imagezoo.version"


class ExportError(ImagezooError):
    """A model could not be exported, or the exported file does not reproduce PyTorch."""


# --------------------------------------------------------------------------------------------
# ONNX


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int | None = None,
                check: bool = True) -> Path:
    """Write ``model`` (with its ``.card``) as an ONNX file taking raw RGB pixels; return the path.

    The graph's input ``pixels`` is float32 ``batch x 3 x crop x crop``, RGB, 0..255; its
    output ``logits`` is ``batch x classes``. ``opset`` defaults to ``DEFAULT_OPSET``. With
    ``check`` the file is run in ONNX Runtime and compared with PyTorch before it replaces
    ``path`` (see the module docstring); a mismatch raises ``ExportError`` and leaves nothing.
    The model itself is not changed (a CPU copy in eval mode is exported).
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old for PyTorch's ONNX exporter; "
                          f"use {MIN_OPSET} or later")
    card = _card_of(model)
    size = _input_size(card)
    model = _cpu_eval_copy(model)
    example = torch.zeros(2, 3, size, size)     # a batch of 2, so the batch is not specialised
    proto = _onnx_proto(NormalizedModel(model), example, opset)
    _set_metadata(proto, card, opset, size)
    path = Path(path)
    with atomic_path(path) as temporary:
        _save_onnx(proto, temporary)
        if check:
            _check_onnx(temporary, model, card)
    log.info("exported %s to %s (opset %d)", card.name, path, opset)
    return path


def _onnx_proto(module: nn.Module, example: torch.Tensor, opset: int):
    """The ONNX ModelProto of ``module`` with a dynamic batch, via the dynamo exporter."""
    batch = torch.export.Dim(BATCH_DIM)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset, external_data=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"pixels": {0: batch}}, verbose=False)
    except Exception as error:  # the exporter raises many types; report one line
        raise ExportError(f"PyTorch could not export the model to ONNX: "
                          f"{_first_line(error)}") from error
    proto = program.model_proto
    produced = _onnx_opset(proto)
    if produced != opset:
        # The exporter logs a failed version conversion and carries on with its own opset.
        raise ExportError(f"PyTorch could not produce ONNX opset {opset} (it gave "
                          f"{produced}); use an opset from {MIN_OPSET} to the newest your "
                          f"ONNX Runtime supports, or the default {DEFAULT_OPSET}")
    return proto


def _onnx_opset(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress, warns about deprecations and logs that torchvision's
    operators are not registered; none of it concerns an imagezoo user. Errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _save_onnx(proto, path: Path) -> None:
    import onnx
    try:
        onnx.save_model(proto, str(path))
    except ValueError as error:  # over protobuf's 2 GB limit
        raise ExportError(f"cannot write {path.name}: {error}") from error


def _set_metadata(proto, card: ModelCard, opset: int, size: int) -> None:
    raw_card = _raw_pixel_card(card)
    entries = {
        CARD_KEY: raw_card.to_json(),
        SOURCE_PREPROCESS_KEY: json.dumps(_describe_preprocess(card.preprocess)),
        LABELS_KEY: json.dumps(list(card.labels)),
        INPUT_KEY: json.dumps({"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW",
                               "shape": [BATCH_DIM, 3, size, size], "channel_order": "RGB",
                               "range": [0, 255], "output": OUTPUT_NAME}),
        OPSET_KEY: str(opset),
        VERSION_KEY: __version__,
    }
    kept = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.doc_string = (f"imagezoo {card.name}: input '{INPUT_NAME}' float32 N x 3 x {size} x "
                        f"{size} RGB pixels 0..255 (resize and crop per '{CARD_KEY}'), output "
                        f"'{OUTPUT_NAME}' N x {card.num_classes}")


def _raw_pixel_card(card: ModelCard) -> ModelCard:
    from dataclasses import replace
    return replace(card, preprocess=raw_pixel_preprocess(card.preprocess))


def _describe_preprocess(spec: Preprocess) -> dict:
    """The original preprocessing as JSON; a mean image is summarised, not written out."""
    data = spec.to_dict()
    if spec.mean_image is not None:
        data["mean_image"] = {
            "shape": list(spec.mean_image.shape),
            "channel_mean": [float(v) for v in spec.mean_image.reshape(-1, 3).mean(axis=0)],
            "note": "applied inside the graph; values not repeated here",
        }
    return data


def _check_onnx(path: Path, model: nn.Module, card: ModelCard) -> None:
    import onnxruntime as ort
    pixels, expected = _reference(model, card)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        [actual] = session.run([OUTPUT_NAME], {INPUT_NAME: pixels.numpy()})
    except Exception as error:  # ORT raises its own exception types
        raise ExportError(f"ONNX Runtime cannot run the exported graph: "
                          f"{_first_line(error)}") from error
    finally:
        session = None  # release the file before it is renamed or removed
    _compare(actual, expected, "ONNX Runtime")


# --------------------------------------------------------------------------------------------
# TorchScript


def export_torchscript(model: nn.Module, path: str | os.PathLike, check: bool = True) -> Path:
    """Write ``model`` as a traced TorchScript file taking raw RGB pixels (as ``export_onnx``).

    TorchScript is deprecated in PyTorch 2.13 (``torch.jit.save`` warns so); it is offered for
    runtimes that still load it (LibTorch in C++, older mobile builds). Prefer ONNX.

    The raw-pixel card is stored in the archive as the extra file ``imagezoo.card``
    (``torch.jit.load(path, _extra_files={"imagezoo.card": ""})`` reads it back), so
    ``imagezoo.load_model(path)`` gives a ``TorchScriptModel`` that classifies like the
    original. With ``check`` the saved file is loaded and compared with PyTorch before it
    replaces ``path``.
    """
    card = _card_of(model)
    size = _input_size(card)
    model = _cpu_eval_copy(model)
    example = torch.zeros(2, 3, size, size)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about Conv2dSame's fixed padding
            traced = torch.jit.trace(NormalizedModel(model), (example,), check_trace=False)
    except Exception as error:
        raise ExportError(f"PyTorch could not trace the model: {_first_line(error)}") from error
    path = Path(path)
    extra = {CARD_KEY: _raw_pixel_card(card).to_json()}
    with atomic_path(path) as temporary, warnings.catch_warnings():
        # torch.jit.save/load warn that TorchScript is deprecated; the export is asked for.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(temporary), _extra_files=extra)
        if check:
            pixels, expected = _reference(model, card)
            with torch.no_grad():
                actual = torch.jit.load(str(temporary), map_location="cpu")(pixels).numpy()
            _compare(actual, expected, "TorchScript")
    log.info("exported %s to %s (TorchScript)", card.name, path)
    return path


# --------------------------------------------------------------------------------------------
# The check


def check_images(card: ModelCard) -> list[Image.Image]:
    """Two different cropped RGB pictures at the card's size: the bundled cat photo, and
    the same photo turned a quarter turn (a new framing after the resize and crop)."""
    with resources.as_file(resources.files("imagezoo.resources").joinpath("cat.png")) as file:
        photo = load_image(file)
    pictures = [photo, photo.transpose(Image.Transpose.ROTATE_90)]
    return [center_crop(resize_and_pad(p, card.preprocess), card.preprocess.crop)
            for p in pictures]


def _reference(model: nn.Module, card: ModelCard) -> tuple[torch.Tensor, np.ndarray]:
    """Raw pixels (N x 3 x H x W, 0..255) and the logits of ``model`` (on the CPU, in eval
    mode) for them, the model fed exactly as ``classify`` feeds it (``to_tensor``, the card)."""
    crops = check_images(card)
    pixels = torch.stack([torch.from_numpy(np.asarray(c, dtype=np.float32).transpose(2, 0, 1).copy())
                          for c in crops])
    inputs = torch.stack([to_tensor(c, card.preprocess) for c in crops])
    with torch.no_grad():
        logits = model(inputs).float().numpy()
    return pixels, logits


def _compare(actual: np.ndarray, expected: np.ndarray, runtime: str) -> None:
    actual = np.asarray(actual, dtype=np.float32)
    if actual.shape != expected.shape:
        raise ExportError(f"{runtime} gives logits of shape {actual.shape}, PyTorch "
                          f"{expected.shape}")
    difference = np.abs(actual.astype(np.float64) - expected)
    excess = difference - (CHECK_ATOL + CHECK_RTOL * np.abs(expected))
    if np.isfinite(actual).all() and (excess <= 0).all():
        log.debug("%s matches PyTorch: largest difference %.3g", runtime, difference.max())
        return
    difference = np.where(np.isfinite(difference), difference, np.inf)
    image, cls = np.unravel_index(int(np.argmax(difference)), difference.shape)
    raise ExportError(
        f"the exported model does not reproduce PyTorch: largest difference "
        f"{difference[image, cls]:.6g} (image {image}, class {cls}: {runtime} "
        f"{actual[image, cls]:.6g}, PyTorch {expected[image, cls]:.6g}; tolerance rtol "
        f"{CHECK_RTOL:g}, atol {CHECK_ATOL:g}); nothing was written")


# --------------------------------------------------------------------------------------------
# Reading ONNX files back

_MODEL_PROTO_TAGS = {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42, 0x72, 0xa2, 0xca, 0xd2}


def is_onnx_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ONNX model, by content.

    A serialised ``ModelProto`` starts with its ``ir_version`` (field 1, a small varint)
    followed by another ModelProto field; files that pass this cheap test are then parsed
    (without external data) and must hold a graph with nodes.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    if len(head) < 3 or head[0] != 0x08 or not 1 <= head[1] <= 0x7f or head[2] not in _MODEL_PROTO_TAGS:
        return False
    import onnx
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends
        return False
    return proto.ir_version >= 1 and len(proto.graph.node) > 0


class OnnxModel(nn.Module):
    """An imagezoo ONNX file run by ONNX Runtime, usable wherever a model is expected.

    ``card`` is rebuilt from the file's ``imagezoo.card`` metadata (its preprocessing is the
    raw-pixel view: resize and crop only), so ``imagezoo.classify(OnnxModel(path), images)``
    works as with the PyTorch model. ``forward`` takes the raw-pixel batch as a tensor and
    returns the logits as a tensor on the input's device. The module has no parameters;
    ``.to()`` and ``.eval()`` change nothing. ``providers`` are ONNX Runtime's execution
    providers (CPU by default).

    Files not exported by imagezoo are refused: their preprocessing and labels are unknown,
    and guessing them would give confident wrong answers.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort
        self.path = Path(path)
        if not is_onnx_file(self.path):
            raise WeightsError(f"{self.path}: not an ONNX model file")
        try:
            session = ort.InferenceSession(str(self.path),
                                           providers=providers or ["CPUExecutionProvider"])
        except Exception as error:
            raise WeightsError(f"{self.path}: ONNX Runtime cannot load it "
                               f"({_first_line(error)})") from None
        metadata = session.get_modelmeta().custom_metadata_map
        if CARD_KEY not in metadata:
            raise WeightsError(f"{self.path}: an ONNX file not exported by imagezoo (no "
                               f"'{CARD_KEY}' metadata), so its preprocessing and labels are "
                               f"unknown; export the model with imagezoo.export_onnx")
        try:
            self.card = ModelCard.from_json(metadata[CARD_KEY])
        except (ValueError, KeyError, TypeError) as error:
            raise WeightsError(f"{self.path}: damaged '{CARD_KEY}' metadata ({error})") from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise WeightsError(f"{self.path}: expected one N x 3 x H x W input and one output")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        [logits] = self.session.run([self.output_name], {self.input_name: pixels})
        return torch.from_numpy(logits).to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, name={self.card.name!r}"


# --------------------------------------------------------------------------------------------
# Reading TorchScript files back


class TorchScriptModel(nn.Module):
    """An imagezoo TorchScript file (``export_torchscript``), usable wherever a model is expected.

    The card is the raw-pixel card stored in the archive's extra file ``imagezoo.card`` (read
    with ``zipfile`` before anything is loaded), so ``imagezoo.classify`` feeds the program
    resized and cropped RGB pixels, 0..255, and the normalisation inside it does the rest, as
    for ``OnnxModel``. The program is loaded with ``torch.jit.load``, which rebuilds
    TorchScript code and tensors and never unpickles arbitrary Python objects. It is a
    submodule, so ``.to(device)`` moves it.

    TorchScript files without the card (not exported by imagezoo) are refused: their
    preprocessing and labels are unknown.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self.card = _torchscript_card(self.path)
        try:
            with warnings.catch_warnings():
                # torch.jit.load warns that TorchScript is deprecated; the file is what we have.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                self.program = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as error:  # torch raises RuntimeError and others for damaged files
            raise WeightsError(f"{self.path}: TorchScript cannot load it "
                               f"({_first_line(error)})") from None
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """Only the model itself: the program's inside is compiled code, where forward hooks
        do not run, so it offers no layers to take features from (as an ONNX model)."""
        yield prefix, self

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, name={self.card.name!r}"


def _torchscript_card(path: Path) -> ModelCard:
    import zipfile
    suffix = f"/extra/{CARD_KEY}"
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith(suffix)]
            text = archive.read(names[0]).decode("utf-8") if names else None
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, ValueError) as error:
        raise WeightsError(f"{path}: unreadable TorchScript archive ({error})") from None
    if text is None:
        raise WeightsError(f"{path}: a TorchScript file not exported by imagezoo (no "
                           f"'{CARD_KEY}' extra file), so its preprocessing and labels are "
                           f"unknown; export the model with imagezoo export --torchscript")
    try:
        return ModelCard.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: damaged '{CARD_KEY}' extra file ({error})") from None


# --------------------------------------------------------------------------------------------
# Helpers


def _card_of(model: nn.Module) -> ModelCard:
    card = getattr(model, "card", None)
    if card is None:
        raise ExportError("the model has no card (model.card); load it with "
                          "imagezoo.load_model, which attaches one")
    return card


def _input_size(card: ModelCard) -> int:
    if card.preprocess.crop is None:
        raise ExportError(f"{card.name}: the card has no crop size, and an exported graph "
                          f"needs a fixed input size; set preprocess.crop in the card")
    return int(card.preprocess.crop)


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """The model on the CPU in eval mode, without moving or switching the caller's model."""
    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    if on_cpu and not model.training:
        return model
    return copy.deepcopy(model).to("cpu").eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


__all__ = ["DEFAULT_OPSET", "ExportError", "OnnxModel", "TorchScriptModel", "check_images",
           "export_onnx", "export_torchscript", "is_onnx_file"]
