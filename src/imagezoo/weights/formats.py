"""Which format a weight file is in (by content, not by name), and one reader for all of them.

``read_weights(path) -> (state_dict, card)`` is the single entry point used by ``load_model``,
``convert`` and ``inspect``. Detection looks at the bytes:

* a folder holding ``card.json`` -> an imagezoo model folder;
* a folder of ``_*.w0`` files -> a PaddlePaddle v1 parameter folder (or an unpacked v2
  tarball: the same files with ``.protobuf`` sidecars);
* ``MATLAB 5.0 MAT-file`` text header, or the HDF5 signature at offset 512 (MATLAB 7.3) ->
  MatConvNet;
* an 8-byte length followed by ``{`` -> safetensors;
* a tar archive with a top-level ``_<layer>.w0`` member -> a PaddlePaddle v2
  ``parameters.to_tar`` tarball;
* a zip archive with ``<name>/code/`` or ``<name>/constants.pkl`` records -> a TorchScript
  program (``torch.jit.save``), which ``load_model`` runs but which holds no state dict;
* a zip archive (whole, or cut short: a local file header at offset 0) or a pickle stream ->
  a ``torch.save`` file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..card import ModelCard, imagenet_labels
from ..errors import WeightsError
from ..models.efficientnet_lite import EfficientNetLiteSpec
from ..models.registry import (cifar10_labels, cifar10_preprocess, efficientnet_lite_preprocess,
                               registry_entry, torchvision_preprocess)
from ..models.resnet import ResNetSpec
from ..models.specs import CifarResNetSpec
from .matconvnet import read_matconvnet
from .matlab_file import is_matlab_file
from .paddle_v1 import is_paddle_v1_folder, read_paddle_v1
from .paddle_v2 import is_paddle_v2_tarball, read_paddle_v2_tar
from .store import sha256_of
from .torch_state import (
    is_torchscript_file, looks_like_safetensors, looks_like_torch_file, read_state_dict,
)

FORMATS = ("model_folder", "paddle_v1", "matconvnet", "safetensors", "paddle_v2_tar",
           "torchscript", "torch")


def detect_format(path: str | os.PathLike) -> str:
    """One of ``FORMATS``, or a ``WeightsError`` saying what the path is not."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weight file or folder")
    if path.is_dir():
        if (path / "card.json").is_file():
            return "model_folder"
        if is_paddle_v1_folder(path):
            return "paddle_v1"
        raise WeightsError(f"{path}: a folder that is neither an imagezoo model folder "
                           f"(card.json) nor a PaddlePaddle v1 parameter folder (_*.w0 files)")
    if is_matlab_file(path):
        return "matconvnet"
    if looks_like_safetensors(path):
        return "safetensors"
    if is_paddle_v2_tarball(path):
        return "paddle_v2_tar"
    if is_torchscript_file(path):
        return "torchscript"
    if looks_like_torch_file(path):
        return "torch"
    raise WeightsError(f"{path}: not a weight file imagezoo knows (PyTorch .pth, .safetensors, "
                       f"MatConvNet .mat, PaddlePaddle v1 folder or v2 tarball, imagezoo model "
                       f"folder)")


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Tensors in imagezoo's naming plus the card the source implies."""
    from ..model_folder import read_card, WEIGHTS_FILE
    path = Path(path)
    kind = detect_format(path)
    if kind == "model_folder":
        return read_state_dict(path / WEIGHTS_FILE), read_card(path)
    if kind == "paddle_v1":
        return read_paddle_v1(path)
    if kind == "matconvnet":
        return read_matconvnet(path)
    if kind == "paddle_v2_tar":
        return read_paddle_v2_tar(path)
    if kind == "torchscript":
        raise WeightsError(f"{path}: a TorchScript program (as imagezoo export --torchscript "
                           f"writes), not weights: run it as a model, imagezoo.load_model(path) "
                           f"or --model {path.name}; its tensors cannot be imported or converted")
    tensors = read_state_dict(path)
    return tensors, card_for_state_dict(tensors, path, kind)


def card_for_state_dict(tensors: dict[str, torch.Tensor], path: Path, kind: str) -> ModelCard:
    """Infer the architecture of a torchvision/timm-named state dict and give it a card.

    The stride position of a bottleneck leaves no trace in the weights: torchvision's v1.5 is
    assumed, as for every torchvision and timm ResNet. A ResNet whose ``conv1`` is 3x3 is one
    of the paper's CIFAR networks (the ImageNet ones start 7x7): with 10 classes it gets
    CIFAR-10's class names and the preprocessing of the weights' publisher
    (akamaster/pytorch_resnet_cifar10), and the publisher's licence and test accuracy when its
    SHA-256 is one of the published files'.
    """
    labels = None
    license, reference_accuracy = None, {}
    if "_conv_stem.weight" in tensors:
        num_classes = tensors["_fc.weight"].shape[0] if "_fc.weight" in tensors else 1000
        architecture = EfficientNetLiteSpec(num_classes=num_classes).to_dict()
        preprocess = efficientnet_lite_preprocess()
    elif is_cifar_resnet(tensors):
        architecture = infer_cifar_resnet_spec(tensors, path).to_dict()
        num_classes = architecture["num_classes"]
        preprocess = cifar10_preprocess()
        if num_classes == len(cifar10_labels()):
            labels = cifar10_labels()
        license, reference_accuracy = _published_facts(sha256_of(path))
    elif "conv1.weight" in tensors and "fc.weight" in tensors:
        architecture = infer_resnet_spec(tensors, path).to_dict()
        num_classes = architecture["num_classes"]
        preprocess = torchvision_preprocess()
    else:
        raise WeightsError(f"{path}: cannot tell which architecture these tensors are for; "
                           f"name it, e.g. --model resnet50 --weights {path.name}")
    if labels is None:
        labels = imagenet_labels() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    return ModelCard(name=path.stem, architecture=architecture, preprocess=preprocess,
                     labels=labels, source=path.name, source_format=kind, sha256=sha256_of(path),
                     license=license, reference_accuracy=reference_accuracy)


def is_cifar_resnet(tensors: dict[str, torch.Tensor]) -> bool:
    """A ResNet state dict (``conv1``, ``layer1``, ``fc``) with a 3x3 first convolution."""
    conv1 = tensors.get("conv1.weight")
    return (conv1 is not None and conv1.dim() == 4 and tuple(conv1.shape[2:]) == (3, 3)
            and "fc.weight" in tensors and "layer1.0.conv1.weight" in tensors)


def infer_cifar_resnet_spec(tensors: dict[str, torch.Tensor], path: Path) -> CifarResNetSpec:
    """The CIFAR ResNet a state dict holds: blocks per stage, width, classes, and option A (no
    shortcut tensors) or B (``downsample`` projections)."""
    if "layer1.0.conv3.weight" in tensors:
        raise WeightsError(f"{path}: a 3x3-stem ResNet with bottleneck blocks, which imagezoo "
                           f"does not build (its CIFAR ResNets have basic blocks)")
    layers = infer_resnet_spec(tensors, path).layers
    projections = any(".downsample." in name for name in tensors)
    try:
        return CifarResNetSpec(layers=layers, width=int(tensors["conv1.weight"].shape[0]),
                               num_classes=int(tensors["fc.weight"].shape[0]),
                               shortcut="B" if projections else "A")
    except ValueError as error:
        raise WeightsError(f"{path}: not a CIFAR ResNet imagezoo builds ({error})") from None


def _published_facts(digest: str) -> tuple[str | None, dict]:
    """Licence and reference accuracy of a published file with this SHA-256, if it is one."""
    from .published import PUBLISHED
    for entry in PUBLISHED:
        if entry.sha256 and len(entry.sha256) == 64 and entry.sha256 == digest:
            registered = registry_entry(entry.model)
            return registered.license, dict(registered.reference_accuracy or {})
    return None, {}


def infer_resnet_spec(tensors: dict[str, torch.Tensor], path: Path) -> ResNetSpec:
    blocks_per_stage: dict[int, int] = {}
    for name in tensors:
        match = re.match(r"layer(\d+)\.(\d+)\.", name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks_per_stage[stage] = max(blocks_per_stage.get(stage, 0), block + 1)
    stages = sorted(blocks_per_stage)
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise WeightsError(f"{path}: the layerN.M tensors do not describe ResNet stages")
    return ResNetSpec(
        block="bottleneck" if "layer1.0.conv3.weight" in tensors else "basic",
        layers=tuple(blocks_per_stage[s] for s in stages),
        width=int(tensors["conv1.weight"].shape[0]),
        num_classes=int(tensors["fc.weight"].shape[0]),
        conv1_bias="conv1.bias" in tensors,
    )
