"""Batch norm folded into the convolution before it: the same function with one op fewer.

In eval mode ``bn(conv(x)) = gamma * (W*x + b - mean) / sqrt(var + eps) + beta``, which is a
convolution with weights ``W * s`` and bias ``(b - mean) * s + beta`` where
``s = gamma / sqrt(var + eps)``. Folding is done in float64 and rounded once, so the folded
network stays within float32 rounding of the original (the exact engines check 1e-4).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.efficientnet_lite import EfficientNetLite, MBConvBlock
from ..models.resnet import BasicBlock, Bottleneck, ResNet


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, batch norm) module paths where the norm directly follows the conv."""
    pairs: list[tuple[str, str]] = []
    if isinstance(model, ResNet):
        pairs.append(("conv1", "bn1"))
        for name, module in model.named_modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                count = 3 if isinstance(module, Bottleneck) else 2
                pairs += [(f"{name}.conv{i}", f"{name}.bn{i}") for i in range(1, count + 1)]
                # A projection (conv + BN); the CIFAR nets' option A has nothing to fold.
                if isinstance(module.downsample, nn.Sequential):
                    pairs.append((f"{name}.downsample.0", f"{name}.downsample.1"))
    elif isinstance(model, EfficientNetLite):
        pairs += [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
        for name, module in model.named_modules():
            if isinstance(module, MBConvBlock):
                if module.has_expansion:
                    pairs.append((f"{name}._expand_conv", f"{name}._bn0"))
                pairs += [(f"{name}._depthwise_conv", f"{name}._bn1"),
                          (f"{name}._project_conv", f"{name}._bn2")]
    return pairs


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every conv + batch-norm pair merged."""
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for conv_name, bn_name in conv_bn_pairs(folded):
        conv, bn = modules[conv_name], modules[bn_name]
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        with torch.no_grad():
            conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).float())
            new_bias = ((bias - bn.running_mean.double()) * scale + bn.bias.double()).float()
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias)
            else:
                conv.bias.copy_(new_bias)
        parent_name, _, child = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else folded
        setattr(parent, child, nn.Identity())
    return folded
