"""Backbone and classification head of every architecture, for transfer learning.

Each architecture exposes ``forward_features(x)`` (the pooled features, N x num_features)
and a final ``nn.Linear`` head; only the head's name differs (``fc`` for ResNets, ``_fc`` for
EfficientNet-Lite, as in their published weights).
"""
from __future__ import annotations

import torch
from torch import nn

from .efficientnet_lite import EfficientNetLite
from .resnet import ResNet


def head_name(model: nn.Module) -> str:
    if isinstance(model, ResNet):
        return "fc"
    if isinstance(model, EfficientNetLite):
        return "_fc"
    raise TypeError(f"no known classification head on {type(model).__name__}")


def head_of(model: nn.Module) -> nn.Linear:
    return getattr(model, head_name(model))


def replace_head(model: nn.Module, num_classes: int, seed: int) -> nn.Linear:
    """A new ``nn.Linear`` head for ``num_classes``, initialised from ``seed`` alone (so a
    run and its resumption, or two processes, start from the same head)."""
    old = head_of(model)
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(old.in_features, num_classes)
    # PyTorch's default Linear initialisation (uniform in +-1/sqrt(fan_in)), drawn from our
    # own generator rather than the global one.
    bound = 1.0 / old.in_features ** 0.5
    with torch.no_grad():
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=generator))
        head.bias.copy_(torch.empty_like(head.bias).uniform_(-bound, bound, generator=generator))
    setattr(model, head_name(model), head)
    return head


def with_num_classes(architecture: dict, num_classes: int) -> dict:
    """The architecture spec of the same network with a ``num_classes``-way head."""
    return {**architecture, "num_classes": num_classes}
