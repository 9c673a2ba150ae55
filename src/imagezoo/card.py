"""The model card: everything about a model except its code and its tensors.

A card travels with the weights (``card.json`` in a model folder) so that a model is always
run with the preprocessing and labels it was trained with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

from .data.transforms import Preprocess


@dataclass
class ModelCard:
    name: str
    architecture: dict                 # {"family": "resnet", ...the spec fields}
    preprocess: Preprocess
    labels: list[str]
    source: str | None = None          # file name or URL the weights came from
    source_format: str | None = None   # "torch", "safetensors", "matconvnet", "paddle_v1", ...
    sha256: str | None = None          # SHA-256 of the source file
    license: str | None = None
    reference_accuracy: dict = field(default_factory=dict)  # e.g. {"top1": 76.13, "top5": 92.862, "source": ...}

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "preprocess": self.preprocess.to_dict(),
            "labels": list(self.labels),
            "source": self.source,
            "source_format": self.source_format,
            "sha256": self.sha256,
            "license": self.license,
            "reference_accuracy": self.reference_accuracy,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        data = dict(data)
        data["preprocess"] = Preprocess.from_dict(data["preprocess"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        return cls.from_dict(json.loads(text))


def imagenet_labels() -> list[str]:
    """The 1000 ILSVRC-2012 class names in the standard index order (see resources/README.md)."""
    text = resources.files("imagezoo.resources").joinpath("imagenet_classes.txt").read_text("utf-8")
    labels = [line for line in text.splitlines() if line]
    assert len(labels) == 1000, "resource file imagenet_classes.txt is damaged"
    return labels
