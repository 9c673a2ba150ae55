"""The CIFAR-10 ResNets of the ResNet paper (He et al. 2015, section 4.2 and Table 6).

``conv1`` (3x3, 16 filters, stride 1) -> ``bn1`` -> ReLU -> ``layer1``..``layer3`` (n basic
blocks each, 16/32/64 filters, stride 2 at the start of stages 2 and 3) -> global average
pool -> ``fc``: 6n+2 weighted layers, 0.27 M parameters for ResNet-20 up to 1.7 M for
ResNet-110. There is no max pool: a 32x32 image leaves the last stage as an 8x8 map.

The network is a ``ResNet`` (same module names and ``forward_features`` / ``fc`` split), so
features, layer listings, fine-tuning, export, batch-norm folding and serving treat it like the
ImageNet ones. It follows the publisher of the trained weights imagezoo knows,
``akamaster/pytorch_resnet_cifar10`` (``resnet.py``), whose modules are ``conv1``, ``bn1``,
``layerN.M.{conv1,bn1,conv2,bn2,shortcut}`` and ``linear``; only two names differ here:

* the head is ``fc`` (torchvision's name, which every imagezoo ResNet uses); the publisher's
  ``linear.*`` tensors are renamed when a file is read (``weights/torch_state.py``) and
  ``linear`` stays a layer alias (``models/layers.py``);
* a block's shortcut is ``downsample`` (torchvision's name). Option A is the publisher's
  ``LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4)))``:
  every second row and column, then ``planes // 4`` zero channels on each side of the
  ``planes // 2`` input channels; ``ZeroPadShortcut`` computes exactly that, as a module with
  no parameters (so nothing is stored for it, as in the publisher's files).

The global pool is ``AdaptiveAvgPool2d(1)``; the publisher's ``F.avg_pool2d(out,
out.size()[3])`` is the same for the square maps of square inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BasicBlock, ResNet, _init_weights
from .specs import CIFAR_DEPTHS, CifarResNetSpec, cifar_resnet_spec  # noqa: F401 (re-exported)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A can only add channels ({in_channels} -> {out_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        # As the publisher splits them: planes // 4 on each side when the width doubles.
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class CifarResNet(ResNet):
    """conv1 -> three stages of basic blocks -> global average pool -> fc (see the module doc)."""

    def __init__(self, spec: CifarResNetSpec):
        nn.Module.__init__(self)  # ResNet.__init__ would build the ImageNet stem
        self.spec = spec
        self.conv1 = nn.Conv2d(3, spec.width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.width, eps=spec.bn_eps)
        self.relu = nn.ReLU(inplace=True)
        in_channels = spec.width
        for stage, blocks in enumerate(spec.layers):
            planes = spec.width * 2 ** stage
            stride = 1 if stage == 0 else 2
            layers = []
            for index in range(blocks):
                block_stride = stride if index == 0 else 1
                layers.append(BasicBlock(in_channels, planes, block_stride,
                                         _shortcut(in_channels, planes, block_stride, spec),
                                         False, spec.bn_eps))
                in_channels = planes
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.num_stages = len(spec.layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, spec.num_classes)
        self.num_features = in_channels
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N x num_features), the input of ``fc``."""
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return torch.flatten(self.avgpool(x), 1)


def _shortcut(in_channels: int, planes: int, stride: int,
              spec: CifarResNetSpec) -> nn.Module | None:
    if stride == 1 and in_channels == planes:
        return None  # identity
    if spec.shortcut == "A":
        return ZeroPadShortcut(in_channels, planes, stride)
    return nn.Sequential(nn.Conv2d(in_channels, planes, 1, stride, bias=False),
                         nn.BatchNorm2d(planes, eps=spec.bn_eps))


def resnet_cifar(depth: int, **overrides) -> CifarResNet:
    """``resnet_cifar(56)``: the paper's 6n+2-layer network; ``overrides`` change spec fields."""
    return CifarResNet(cifar_resnet_spec(depth, **overrides))
