"""``load_model``: a name or a model folder (plus optional weights) -> a ready module with a card."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from .card import ModelCard
from .errors import WeightsError, WeightsNotAvailableError
from .models.registry import build_model, default_card, registry_entry
from .weights.store import sha256_of
from .weights.torch_state import load_state_dict, read_state_dict

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
RANDOM = "random"


def load_model(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build a model in eval mode with its card attached as ``model.card``.

    ``name_or_path`` is a registry name (``resnet50``, ``efficientnet_lite0``, ...) or a model
    folder (``card.json`` + ``weights.safetensors``, as ``convert`` and ``finetune`` write).

    ``weights``, for a registry name:

    * ``None``: the model's bundled weights (only ``efficientnet_lite0`` has them; for the
      ResNets a ``WeightsNotAvailableError`` says to pass a file);
    * a ``.pth``/``.pt``/``.safetensors`` path in torchvision/timm naming;
    * ``"random"``: He-initialised weights, for training from scratch or for speed tests.
    """
    text = str(name_or_path)
    if Path(text).is_dir() and (Path(text) / CARD_FILE).is_file():
        if weights is not None:
            raise WeightsError(f"{text} is a model folder with its own weights; "
                               f"do not pass weights as well")
        return load_model_folder(Path(text))
    card = default_card(text)
    model = build_model(card.architecture)
    if weights is None:
        entry = registry_entry(text)
        if entry.default_weights is None:
            raise WeightsNotAvailableError(
                f"{text} has no bundled weights: pass a weight file (for example "
                f"--weights resnet50.pth), or use the default model, efficientnet_lite0")
        weight_path = entry.default_weights()
        digest = sha256_of(weight_path)
        if entry.default_weights_sha256 and digest != entry.default_weights_sha256:
            raise WeightsError(f"{weight_path}: SHA-256 {digest} differs from the published "
                               f"{entry.default_weights_sha256}; reinstall the package")
        _load_file_into(model, card, weight_path, digest)
    elif str(weights) == RANDOM:
        card.source = RANDOM
    else:
        _load_file_into(model, card, Path(weights), None)
    return _ready(model, card)


def _load_file_into(model: nn.Module, card: ModelCard, path: Path, digest: str | None) -> None:
    tensors = read_state_dict(path)
    load_state_dict(model, tensors, str(path))
    card.source = path.name
    card.source_format = "safetensors" if path.suffix == ".safetensors" else "torch"
    card.sha256 = digest or sha256_of(path)


def load_model_folder(folder: Path) -> nn.Module:
    """A saved model folder: ``card.json`` says what to build, ``weights.safetensors`` fills it."""
    try:
        card = ModelCard.from_json((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{folder / CARD_FILE}: not a valid model card ({error})") from None
    model = build_model(card.architecture)
    weight_path = folder / WEIGHTS_FILE
    load_state_dict(model, read_state_dict(weight_path), str(weight_path))
    return _ready(model, card)


def _ready(model: nn.Module, card: ModelCard) -> nn.Module:
    model.card = card
    model.eval()
    return model
