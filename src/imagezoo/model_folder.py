"""A model folder: ``weights.safetensors`` + ``card.json`` (+ ``mean_image.npy`` when needed).

This is imagezoo's own format, what ``convert`` and ``finetune`` write and ``load_model``
reads. Each file is written atomically and the card last, so a folder with a card always has
complete weights beside it. A mean image (MatConvNet's 224 x 224 x 3 average image) is kept in
``mean_image.npy`` rather than in the JSON, which it would swell by megabytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from .card import ModelCard
from .errors import WeightsError
from .fileio import atomic_path, atomic_write_text

if TYPE_CHECKING:  # reading a card or a folder's tensor shapes needs no PyTorch
    from torch import nn

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
MEAN_IMAGE_FILE = "mean_image.npy"


def is_model_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / CARD_FILE).is_file()


def save_model(model: "nn.Module", folder: str | os.PathLike, card: ModelCard | None = None) -> Path:
    """Write ``model`` (and its card) as a model folder; returns the folder."""
    from safetensors.torch import save_file
    folder = Path(folder)
    card = card or model.card
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu").contiguous()
               for name, tensor in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt", "producer": "imagezoo"})
    write_card(folder, card)
    return folder


def write_card(folder: str | os.PathLike, card: ModelCard) -> None:
    """``card.json`` (and ``mean_image.npy`` when the card has a mean image) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card_data = card.to_dict()
    if card.preprocess.mean_image is not None:
        with atomic_path(folder / MEAN_IMAGE_FILE) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, card.preprocess.mean_image.astype(np.float32))
        card_data["preprocess"]["mean_image"] = MEAN_IMAGE_FILE
    atomic_write_text(folder / CARD_FILE, json.dumps(card_data, indent=2))


def read_card(folder: str | os.PathLike) -> ModelCard:
    folder = Path(folder)
    try:
        data = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
        mean_image = data["preprocess"].get("mean_image")
        if isinstance(mean_image, str):
            data["preprocess"]["mean_image"] = np.load(folder / mean_image, allow_pickle=False)
        return ModelCard.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{folder / CARD_FILE}: not a valid model card ({error})") from None


def tensor_shapes(folder: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the folder's tensors, read from the safetensors header alone."""
    from safetensors import safe_open
    path = Path(folder) / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="numpy") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from None


def load_model_folder(folder: str | os.PathLike) -> "tuple[nn.Module, ModelCard]":
    """Build the card's architecture and fill it with the folder's weights."""
    from .models.registry import build_model
    from .weights.torch_state import load_state_dict, read_state_dict
    folder = Path(folder)
    card = read_card(folder)
    model = build_model(card.architecture)
    weight_path = folder / WEIGHTS_FILE
    load_state_dict(model, read_state_dict(weight_path), str(weight_path))
    return model, card

