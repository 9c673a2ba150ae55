"""Deep residual networks (He et al., "Deep Residual Learning for Image Recognition", 2015).

One builder covers every published variant imagezoo imports:

* ``block``: ``"basic"`` (two 3x3 convolutions; ResNet-18/34) or ``"bottleneck"`` (1x1, 3x3,
  1x1 with 4x expansion; ResNet-50/101/152);
* ``layers``: blocks per stage, any counts;
* ``width``: channels of conv1 and of the first stage's inner convolutions (64 in the paper);
* ``stride_in_1x1``: where a bottleneck that halves the resolution puts its stride.
  ``True`` is the original Caffe/MSRA design ("v1": stride in the first 1x1 convolution,
  as in MatConvNet and PaddlePaddle's model zoo); ``False`` is torchvision's "v1.5" (stride in
  the 3x3 convolution, a little more accurate);
* ``pool1``: ``"torchvision"`` (3x3 max pool, stride 2, padding 1) or ``"caffe"`` (3x3,
  stride 2, no padding, output size rounded up, which is MatConvNet's pad ``[0 1 0 1]``);
* ``conv1_bias``: the MSRA Caffe files carry a bias on conv1, torchvision's do not;
* ``bn_eps``: batch-norm epsilon (1e-5 everywhere these networks were published).

Module names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``), so torchvision and timm state dicts load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .specs import BLOCK_TYPES, POOL1_STYLES, STANDARD_DEPTHS, ResNetSpec  # noqa: F401 (re-exported)

class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None,
                 stride_in_1x1: bool, bn_eps: float):
        super().__init__()
        del stride_in_1x1  # a basic block has a single place for the stride
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None,
                 stride_in_1x1: bool, bn_eps: float):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride_3x3, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """conv1 -> pool1 -> four stages of residual blocks -> global average pool -> fc."""

    def __init__(self, spec: ResNetSpec):
        super().__init__()
        self.spec = spec
        block = Bottleneck if spec.block == "bottleneck" else BasicBlock
        self.conv1 = nn.Conv2d(3, spec.width, 7, 2, 3, bias=spec.conv1_bias)
        self.bn1 = nn.BatchNorm2d(spec.width, eps=spec.bn_eps)
        self.relu = nn.ReLU(inplace=True)
        if spec.pool1 == "caffe":
            self.maxpool = nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        in_channels = spec.width
        for stage, blocks in enumerate(spec.layers):
            planes = spec.width * 2 ** stage
            stride = 1 if stage == 0 else 2
            stage_module, in_channels = _make_stage(block, in_channels, planes, blocks, stride, spec)
            self.add_module(f"layer{stage + 1}", stage_module)
        self.num_stages = len(spec.layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, spec.num_classes)
        self.num_features = in_channels
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N x num_features), the input of ``fc``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _make_stage(block, in_channels: int, planes: int, blocks: int, stride: int,
                spec: ResNetSpec) -> tuple[nn.Sequential, int]:
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        # The projection shortcut (option B of the paper): a strided 1x1 convolution + BN.
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
            nn.BatchNorm2d(out_channels, eps=spec.bn_eps),
        )
    layers = [block(in_channels, planes, stride, downsample, spec.stride_in_1x1, spec.bn_eps)]
    for _ in range(1, blocks):
        layers.append(block(out_channels, planes, 1, None, spec.stride_in_1x1, spec.bn_eps))
    return nn.Sequential(*layers), out_channels


def _init_weights(model: nn.Module) -> None:
    """He initialisation for convolutions, unit batch norm: a sensible start for training."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def resnet(depth: int, **overrides) -> ResNet:
    """The standard depths with torchvision's defaults; ``overrides`` change any spec field."""
    layers, block = STANDARD_DEPTHS[depth]
    return ResNet(ResNetSpec(block=block, layers=layers, **overrides))
