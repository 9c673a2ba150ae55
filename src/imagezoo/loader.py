"""``load_model``: a name, a weight file or a model folder -> a ready module with its card."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from .card import ModelCard
from .errors import WeightsError, WeightsNotAvailableError
from .models.registry import build_model, default_card, registry_entry
from .weights.formats import detect_format, read_weights
from .weights.store import sha256_of
from .weights.torch_state import is_torchscript_file, load_state_dict, read_state_dict

log = logging.getLogger(__name__)

RANDOM = "random"


def load_model(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None,
               pretrained: str | None = None, verify: bool = False) -> nn.Module:
    """Build a model in eval mode with its card attached as ``model.card``.

    ``name_or_path`` is either

    * a weight file or folder in any format imagezoo reads (a model folder, a MatConvNet
      ``.mat``, a PaddlePaddle v1 folder or v2 ``parameters.to_tar`` tarball, a
      torchvision/timm ``.pth`` or ``.safetensors``): the architecture and preprocessing come
      from the file; an ``.onnx`` file exported by imagezoo gives an ``OnnxModel`` that runs
      in ONNX Runtime, and a TorchScript file it exported a ``TorchScriptModel``; or
    * a registry name (``resnet50``, ``efficientnet_lite0``, ...), with ``weights``:

      - ``None``: the model's bundled weights (only ``efficientnet_lite0`` has them; for the
        ResNets a ``WeightsNotAvailableError`` says to pass a file or ``pretrained``);
      - a weight file in any format above; a torchvision-style file fills the named
        architecture, an imported one (MatConvNet, Paddle) must hold the same depth;
      - ``"random"`` or ``"random:SEED"``: He-initialised weights drawn from the seed (0 by
        default), for training from scratch or speed tests. The same seed is the same model
        (and so finds its cached engines again); the card's source says which seed.

    ``pretrained`` (``"torchvision"``, ``"matconvnet"``, ``"paddle_v1"``) fetches the
    publisher's weights for the named model through the verified cache (see
    ``imagezoo.weights.fetch``); ``verify=True`` re-hashes a file already in the cache.
    """
    model = _load_model(name_or_path, weights, pretrained, verify)
    if pretrained is None:
        # How the user named the model: the engine cache files its engines under this name too
        # (engine/records.source_key), so a later run finds them before loading the model.
        model.source_args = (str(name_or_path), None if weights is None else str(weights))
    return model


def _load_model(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None,
                pretrained: str | None = None, verify: bool = False) -> nn.Module:
    """``load_model`` without recording how the model was named."""
    text = str(name_or_path)
    if Path(text).exists():
        if weights is not None or pretrained is not None:
            raise WeightsError(f"{text} holds its own weights; do not pass weights as well")
        from .export import OnnxModel, TorchScriptModel, is_onnx_file
        if is_onnx_file(text):
            return OnnxModel(text)  # runs in ONNX Runtime, preprocessing from its metadata
        if is_torchscript_file(text):
            return TorchScriptModel(text)  # torch.jit.load, preprocessing from its extra file
        tensors, card = read_weights(text)
        return _assemble(tensors, card, text)
    card = default_card(text)
    if pretrained is not None:
        if weights is not None:
            raise WeightsError("pass either weights or pretrained, not both")
        from .weights.published import fetch_published
        weights = fetch_published(text, pretrained, verify=verify)
    if weights is None:
        return _load_bundled(text, card)
    seed = random_seed(weights)
    if seed is not None:
        import torch
        card.source = f"{RANDOM}:{seed}"
        with torch.random.fork_rng(devices=[]):  # the caller's own random state is left alone
            torch.manual_seed(seed)
            return _ready(build_model(card.architecture), card)
    return _load_named(text, card, Path(weights))


def random_seed(weights) -> int | None:
    """The seed of ``"random"`` (0) or ``"random:SEED"``; None for anything else."""
    text = str(weights) if weights is not None else ""
    if text == RANDOM:
        return 0
    if text.startswith(RANDOM + ":"):
        value = text[len(RANDOM) + 1:]
        if not value.isdigit():
            raise WeightsError(f"--weights {text}: the seed after 'random:' must be a "
                               f"non-negative integer")
        return int(value)
    return None


def _load_bundled(name: str, card: ModelCard) -> nn.Module:
    entry = registry_entry(name)
    if entry.default_weights is None:
        raise WeightsNotAvailableError(
            f"{name} has no bundled weights: pass a weight file (--weights resnet50.pth), "
            f"fetch the published ones (--pretrained torchvision), or use the default model, "
            f"efficientnet_lite0")
    path = entry.default_weights()
    digest = sha256_of(path)
    if entry.default_weights_sha256 and digest != entry.default_weights_sha256:
        raise WeightsError(f"{path}: SHA-256 {digest} differs from the published "
                           f"{entry.default_weights_sha256}; reinstall the package")
    tensors = read_state_dict(path)
    card.source, card.source_format, card.sha256 = path.name, "torch", digest
    return _assemble(tensors, card, str(path))


def _load_named(name: str, card: ModelCard, path: Path) -> nn.Module:
    """A registry name plus a weight file: torch files fill the name's architecture as it
    stands; imported formats bring their own (v1) architecture, which must match the depth."""
    kind = detect_format(path)
    if kind in ("torch", "safetensors"):
        tensors = read_state_dict(path)
        card.source, card.source_format, card.sha256 = path.name, kind, sha256_of(path)
        return _assemble(tensors, card, str(path))
    tensors, file_card = read_weights(path)
    wanted, found = card.architecture, file_card.architecture
    for key in ("family", "block", "layers"):
        if key in wanted and wanted.get(key) != found.get(key):
            raise WeightsError(f"{path}: holds a {found.get('family')} with {key} "
                               f"{found.get(key)}, not the {wanted.get(key)} of {name}")
    return _assemble(tensors, file_card, str(path))


def _assemble(tensors: dict[str, torch.Tensor], card: ModelCard, source: str) -> nn.Module:
    model = build_model(card.architecture)
    load_state_dict(model, tensors, source)
    return _ready(model, card)


def _ready(model: nn.Module, card: ModelCard) -> nn.Module:
    model.card = card
    model.eval()
    return model
