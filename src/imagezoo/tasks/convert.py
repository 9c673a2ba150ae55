"""convert and inspect: any weight format -> an imagezoo model folder, or a summary of it."""
from __future__ import annotations

import os
from pathlib import Path

import math

from ..model_folder import is_model_folder, read_card, tensor_shapes

# Buffers, not parameters: left out of the parameter count.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def convert(source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Import ``source`` (any readable format) and write it as a model folder at ``out``.

    The weights are checked against the architecture before anything is written, and the
    card records the source file's name, format and SHA-256.
    """
    from ..model_folder import save_model
    from ..models.registry import build_model
    from ..weights.formats import read_weights
    from ..weights.torch_state import load_state_dict
    tensors, card = read_weights(source)
    model = build_model(card.architecture)
    load_state_dict(model, tensors, str(source))
    return save_model(model, out, card)


def inspect_weights(source: str | os.PathLike, label_count: int = 5) -> dict:
    """What a weight file holds: format, architecture, sizes, preprocessing, first labels.
    A model folder is described from its card and its safetensors header, without PyTorch."""
    if is_model_folder(source):
        kind, card, shapes = "model_folder", read_card(source), tensor_shapes(source)
    else:
        from ..weights.formats import detect_format, read_weights
        kind = detect_format(source)
        tensors, card = read_weights(source)
        shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    preprocess = card.preprocess.to_dict()
    if card.preprocess.mean_image is not None:
        preprocess["mean_image"] = {"shape": list(card.preprocess.mean_image.shape),
                                    "channel_means": [round(float(v), 4) for v in
                                                      card.preprocess.mean_image.mean(axis=(0, 1))]}
    return {
        "source": str(source),
        "format": kind,
        "architecture": card.architecture,
        "tensors": len(shapes),
        "parameters": sum(math.prod(shape) for name, shape in shapes.items()
                          if not name.endswith(BUFFER_SUFFIXES)),
        "num_classes": card.num_classes,
        "preprocess": preprocess,
        "labels": card.labels[:label_count],
        "sha256": card.sha256,
    }
