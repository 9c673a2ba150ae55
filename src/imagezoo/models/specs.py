"""Architecture specs: the plain data a card's ``architecture`` dict holds, without PyTorch.

A spec names a network completely (``build_model`` in ``registry.py`` turns one into a module);
keeping the specs apart from the module code lets the registry, the cards and the commands that
need no tensors (``imagezoo models``, ``inspect``, ``cache``) run without importing PyTorch.
See ``resnet.py`` and ``efficientnet_lite.py`` for what each field means.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

POOL1_STYLES = ("torchvision", "caffe")
BLOCK_TYPES = ("basic", "bottleneck")


@dataclass(frozen=True)
class ResNetSpec:
    block: str = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = 1000
    stride_in_1x1: bool = False
    pool1: str = "torchvision"
    conv1_bias: bool = False
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"block must be one of {BLOCK_TYPES}, not {self.block!r}")
        if self.pool1 not in POOL1_STYLES:
            raise ValueError(f"pool1 must be one of {POOL1_STYLES}, not {self.pool1!r}")
        if self.width < 1 or self.num_classes < 1 or not self.layers or min(self.layers) < 1:
            raise ValueError(f"invalid ResNet spec: {self}")
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))

    def to_dict(self) -> dict:
        return {"family": "resnet", **asdict(self), "layers": list(self.layers)}


CIFAR_SHORTCUTS = ("A", "B")


@dataclass(frozen=True)
class CifarResNetSpec(ResNetSpec):
    """The CIFAR-10 ResNets of He et al. (2015), section 4.2: 6n+2 layers on 32x32 images.

    A 3x3 convolution with ``width`` (16) filters and no max pooling, three stages of ``n``
    basic blocks with ``width``, 2 x ``width`` and 4 x ``width`` filters (the first block of
    stages 2 and 3 has stride 2), global average pooling and a ``num_classes``-way linear layer.
    ``shortcut`` is the paper's option where a block changes shape: ``"A"`` subsamples with
    stride 2 and pads the new channels with zeros (no parameters; the paper's CIFAR choice),
    ``"B"`` projects with a strided 1x1 convolution and batch norm.

    A ``ResNetSpec`` whose ImageNet-only fields (``stride_in_1x1``, ``pool1``, ``conv1_bias``)
    keep their defaults, so code written for ResNets reads it as one.
    """

    block: str = "basic"
    layers: tuple[int, ...] = (3, 3, 3)
    width: int = 16
    num_classes: int = 10
    shortcut: str = "A"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block != "basic":
            raise ValueError(f"the CIFAR ResNets have basic blocks, not {self.block!r}")
        if self.shortcut not in CIFAR_SHORTCUTS:
            raise ValueError(f"shortcut must be one of {CIFAR_SHORTCUTS}, not {self.shortcut!r}")
        if (self.stride_in_1x1, self.pool1, self.conv1_bias) != (False, "torchvision", False):
            raise ValueError("stride_in_1x1, pool1 and conv1_bias describe ImageNet ResNets; "
                             "the CIFAR ResNets have no max pool and no conv1 bias")

    @property
    def depth(self) -> int:
        """Weighted layers: two per basic block, plus the first convolution and the head."""
        return 2 * sum(self.layers) + 2

    def to_dict(self) -> dict:
        return {"family": "resnet_cifar", "block": self.block, "layers": list(self.layers),
                "width": self.width, "num_classes": self.num_classes,
                "shortcut": self.shortcut, "bn_eps": self.bn_eps}


def cifar_resnet_spec(depth: int, **overrides) -> CifarResNetSpec:
    """The paper's 6n+2-layer network (20, 32, 44, 56, 110, 1202, ...): n blocks per stage."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has 6n+2 layers (20, 32, 44, 56, 110, ...), not {depth}")
    n = (depth - 2) // 6
    return CifarResNetSpec(layers=(n, n, n), **overrides)


# The depths of Table 6 of the paper that imagezoo names (resnet20_cifar ...).
CIFAR_DEPTHS = (20, 32, 44, 56, 110)


STANDARD_DEPTHS: dict[int, tuple[tuple[int, ...], str]] = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}


# One row per stage of EfficientNet-B0/Lite0: (repeats, kernel, stride, expand ratio, in, out).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class EfficientNetLiteSpec:
    stages: tuple[tuple[int, int, int, int, int, int], ...] = LITE0_STAGES
    stem_channels: int = 32
    head_channels: int = 1280
    num_classes: int = 1000
    bn_eps: float = 1e-3
    dropout: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(tuple(int(v) for v in row) for row in self.stages))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stages"] = [list(row) for row in self.stages]
        return {"family": "efficientnet_lite", **data}
