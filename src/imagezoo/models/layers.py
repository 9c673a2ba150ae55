"""Layer names: PyTorch module paths, plus the names Caffe/MatConvNet and Paddle gave them.

Canonical names are module paths (``layer4.2.conv3``, ``layer4.2.bn3``, ``layer4``,
``avgpool``, ``fc``). A ResNet also answers to the names of the frameworks its weights came
from, so a user can ask for the layer a paper or a model zoo names:

* Caffe / MatConvNet (the MSRA prototxt): ``conv1``, ``bn_conv1``, ``pool1``,
  ``res{s}{b}_branch{1,2a,2b,2c}`` (a convolution), ``bn{s}{b}_branch...`` (its batch norm,
  scale included, before any ReLU), ``res{s}{b}`` (the block's output after its ReLU),
  ``pool5`` (the pooled vector) and ``fc1000``. Stage ``s`` runs 2..5 (``layer1``..``layer4``);
  block ``b`` is ``a`` for the first block, then ``b``, ``c``, ... (ResNet-50) or ``b1``,
  ``b2``, ... (ResNet-101/152: ``res4b22``); both spellings are accepted for every net.
* PaddlePaddle v1 (the model zoo's ``resnet.py``): ``conv1_conv``, ``conv1_bn``,
  ``res{s}_{i}_branch{...}_conv``, ``res{s}_{i}_branch{...}_bn``, ``res{s}_{i}`` (block ``i``
  from 1), ``output``. Paddle's ``batch_norm_layer`` carries the activation, so the ``_bn``
  output of ``conv1`` and of every branch but the last of a block is after the ReLU, and
  ``output`` is the softmax of the fully connected layer; the aliases reproduce that.

The CIFAR ResNets (``resnet_cifar.py``) were published in PyTorch with the same module names
but two: they answer to their publisher's ``linear`` (the head, ``fc``) and
``layerN.M.shortcut`` (a block's ``downsample``), and have no Caffe or Paddle names.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ImagezooError
from .resnet import ResNet
from .resnet_cifar import CifarResNet


class UnknownLayerError(ImagezooError):
    """A layer name the model does not have; the message lists the closest valid ones."""


@dataclass(frozen=True)
class LayerRef:
    """Where a requested layer's values come from: a module's output, then an optional op."""

    name: str                  # as the user asked for it
    module: str                # canonical module path
    after: str | None = None   # "relu" or "softmax", applied to the module's output


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule by its path (the root module itself excluded)."""
    return {name: module for name, module in model.named_modules() if name}


def layer_aliases(model: nn.Module) -> dict[str, LayerRef]:
    """The Caffe/MatConvNet and Paddle names of a ResNet's layers (empty for other models)."""
    if not isinstance(model, ResNet):
        return {}
    aliases: dict[str, LayerRef] = {}

    def add(name: str, module: str, after: str | None = None) -> None:
        aliases[name] = LayerRef(name, module, after)

    if isinstance(model, CifarResNet):
        add("linear", "fc")
        for stage_index in range(model.num_stages):
            for index, block in enumerate(getattr(model, f"layer{stage_index + 1}")):
                if block.downsample is not None:
                    path = f"layer{stage_index + 1}.{index}"
                    add(f"{path}.shortcut", f"{path}.downsample")
        return aliases

    add("bn_conv1", "bn1")
    add("pool1", "maxpool")
    add("pool5", "avgpool")
    add("fc1000", "fc")
    add("conv1_conv", "conv1")
    add("conv1_bn", "bn1", "relu")
    add("output", "fc", "softmax")
    bottleneck = model.spec.block == "bottleneck"
    branches = ("2a", "2b", "2c") if bottleneck else ("2a", "2b")
    for stage_index, blocks in enumerate(model.spec.layers):
        stage = stage_index + 2
        for index in range(blocks):
            path = f"layer{stage_index + 1}.{index}"
            block = getattr(model, f"layer{stage_index + 1}")[index]
            for caffe_block in _caffe_block_names(index):
                prefix = f"{stage}{caffe_block}"
                add(f"res{prefix}", path)
                for number, branch in enumerate(branches, start=1):
                    add(f"res{prefix}_branch{branch}", f"{path}.conv{number}")
                    add(f"bn{prefix}_branch{branch}", f"{path}.bn{number}")
                if block.downsample is not None:
                    add(f"res{prefix}_branch1", f"{path}.downsample.0")
                    add(f"bn{prefix}_branch1", f"{path}.downsample.1")
            paddle = f"res{stage}_{index + 1}"
            add(paddle, path)
            for number, branch in enumerate(branches, start=1):
                last = number == len(branches)
                add(f"{paddle}_branch{branch}_conv", f"{path}.conv{number}")
                add(f"{paddle}_branch{branch}_bn", f"{path}.bn{number}", None if last else "relu")
            if block.downsample is not None:
                add(f"{paddle}_branch1_conv", f"{path}.downsample.0")
                add(f"{paddle}_branch1_bn", f"{path}.downsample.1")
    return aliases


def _caffe_block_names(index: int) -> list[str]:
    if index == 0:
        return ["a"]
    names = [f"b{index}"]
    if index < 26:
        names.insert(0, chr(ord("a") + index))
    return names


def resolve_layers(model: nn.Module, names: list[str]) -> list[LayerRef]:
    """Requested names -> LayerRefs, or ``UnknownLayerError`` suggesting close valid names."""
    modules = named_layers(model)
    if not modules:
        raise UnknownLayerError(f"{type(model).__name__} exposes no layers (an ONNX or "
                                f"TorchScript file gives only its logits); use the PyTorch model "
                                f"or its weights for features")
    aliases = layer_aliases(model)
    refs = []
    for name in names:
        if name in modules:
            refs.append(LayerRef(name, name))
        elif name in aliases:
            refs.append(aliases[name])
        else:
            known = list(modules) + list(aliases)
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise UnknownLayerError(f"the model has no layer {name!r}{hint} "
                                    f"(see 'imagezoo layers' for every name)")
    return refs


@dataclass
class LayerInfo:
    name: str
    type: str
    output_shape: tuple[int, ...] | None   # None for a module the dry run did not call
    aliases: list[str]

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type,
                "output_shape": None if self.output_shape is None else list(self.output_shape),
                "aliases": self.aliases}


def list_layers(model: nn.Module, size: int = 224) -> list[LayerInfo]:
    """Every layer with its type and output shape for one size x size image (a dry run).

    A module called more than once in a forward pass (a block's shared ReLU) shows the shape
    of its last call."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:  # must return None: a value replaces the output
            # A module used more than once (a block's ReLU) keeps its last call's shape,
            # which for a block's ReLU is the block's output.
            shapes[name] = tuple(output.shape)
        return hook

    hooks = [module.register_forward_hook(record(name))
             for name, module in named_layers(model).items()]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size, device=_device_of(model)))
    finally:
        for hook in hooks:
            hook.remove()
    by_module: dict[str, list[str]] = {}
    for alias, ref in layer_aliases(model).items():
        if ref.after is None and alias != ref.module:
            by_module.setdefault(ref.module, []).append(alias)
    return [LayerInfo(name, type(module).__name__, shapes.get(name), by_module.get(name, []))
            for name, module in named_layers(model).items()]


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
