"""Which name a layer is shown under: PyTorch's module path, or its Caffe or Paddle name.

The aliases are those ``imagezoo.models.layers.layer_aliases`` resolves, so every name a table
or a diagram shows can be passed back as ``--layers`` or ``--layer``. A layer without an alias
in the chosen style (a stage, a ReLU module, every layer of a model that is not a ResNet) keeps
its module path.

Caffe (the MSRA prototxts, MatConvNet) spells the later blocks of a stage with letters
(``res4b``, ``res4c`` ... in ResNet-50) or, in the stages of ResNet-101/152 that have more than
three blocks, with ``b`` and a number (``res4b22``); both resolve, and the tables show the
spelling of the published files.
"""
from __future__ import annotations

import re

from torch import nn

from ..errors import ImagezooError
from ..models.layers import layer_aliases
from ..models.resnet import ResNet

NAME_STYLES = ("torch", "caffe", "paddle")

_PADDLE = re.compile(r"^res\d+_\d+")
_PADDLE_NAMES = {"conv1_conv", "conv1_bn", "output"}
_NUMBERED_BLOCK = re.compile(r"^(bn|res)\d+b\d+")


def check_style(names: str) -> str:
    if names not in NAME_STYLES:
        raise ImagezooError(f"names must be one of {', '.join(NAME_STYLES)}, not {names!r}")
    return names


def display_names(model: nn.Module, names: str = "torch") -> dict[str, str]:
    """Module path -> the name to show, for the modules that have one in style ``names``."""
    check_style(names)
    if names == "torch":
        return {}
    shown: dict[str, str] = {}
    for alias, ref in layer_aliases(model).items():
        style = "paddle" if alias in _PADDLE_NAMES or _PADDLE.match(alias) else "caffe"
        if style != names:
            continue
        current = shown.get(ref.module)
        if current is None or _prefer(model, ref.module, alias, current):
            shown[ref.module] = alias
    return shown


def _prefer(model: nn.Module, module: str, alias: str, current: str) -> bool:
    """Between a block's two Caffe spellings, the one the MSRA files use."""
    numbered = _NUMBERED_BLOCK.match(alias) is not None
    if numbered == (_NUMBERED_BLOCK.match(current) is not None):
        return False
    return numbered == _caffe_numbers_blocks(model, module)


def _caffe_numbers_blocks(model: nn.Module, module: str) -> bool:
    """MSRA's ResNet-101/152 number the blocks of a stage with more than three of them."""
    if not isinstance(model, ResNet):
        return False
    stage = int(module.split(".")[0].removeprefix("layer")) - 1
    blocks = model.spec.layers[stage]
    return blocks > 26 or (blocks > 3 and sum(model.spec.layers) > 16)


def shown_name(path: str, shown: dict[str, str]) -> str:
    return shown.get(path, path)
