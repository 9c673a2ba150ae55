"""Input normalisation as a module: raw RGB pixels in, the model's input tensor out.

``InputNormalization`` does to a batch of pixels exactly what ``data.transforms.to_tensor``
does to one cropped picture (scale, channel order, mean image or mean, std), in the same
order and with the same float32 operations, so its output equals ``to_tensor``'s. Putting it
in front of a network (``NormalizedModel``) gives a module whose input is plain pixels: what
an exported ONNX or TorchScript file needs so that its users do not have to know the
source framework's conventions.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..data.transforms import Preprocess

# torchvision's ToTensor divides by 255; to_tensor matches it, and so must we.
_DIVIDE_BY_255 = 1.0 / 255.0


class InputNormalization(nn.Module):
    """N x 3 x H x W float32 RGB pixels in 0..255 -> what ``to_tensor`` gives for them.

    The steps, in ``to_tensor``'s order: multiply by ``scale`` (divide by 255 when the scale
    is 1/255), reverse the channels when the model wants BGR, subtract the mean image
    (stored as a 1 x C x H x W buffer) or the per-channel mean, divide by the std. Steps that
    change nothing (scale 1, mean 0, std 1, RGB) are left out of the graph.
    """

    def __init__(self, spec: Preprocess):
        super().__init__()
        self.divide_by_255 = abs(spec.scale - _DIVIDE_BY_255) < 1e-12
        self.scale = float(spec.scale)
        self.flip_to_bgr = spec.channel_order == "BGR"
        if spec.mean_image is not None:
            mean_image = torch.as_tensor(spec.mean_image, dtype=torch.float32)  # H x W x C
            if (spec.crop is not None
                    and tuple(mean_image.shape[:2]) not in ((1, 1), (spec.crop, spec.crop))):
                raise ValueError(f"mean image of {tuple(mean_image.shape[:2])} does not match "
                                 f"the {spec.crop} x {spec.crop} crop")
            mean = mean_image.permute(2, 0, 1).unsqueeze(0).contiguous()      # 1 x C x H x W
        else:
            mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.subtract_mean = bool(mean.ne(0).any())
        self.divide_by_std = bool(std.ne(1).any())
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        values = pixels
        if self.divide_by_255:
            values = values / 255.0
        elif self.scale != 1.0:
            values = values * self.scale
        if self.flip_to_bgr:
            values = values.flip(1)
        if self.subtract_mean:
            values = values - self.mean
        if self.divide_by_std:
            values = values / self.std
        return values

    def extra_repr(self) -> str:
        scale = "1/255" if self.divide_by_255 else f"{self.scale:g}"
        order = "BGR" if self.flip_to_bgr else "RGB"
        mean = ("image " + "x".join(str(s) for s in self.mean.shape[2:])
                if self.mean.shape[2:] != (1, 1) else "per channel")
        return f"scale={scale}, channels={order}, mean={mean}"


def raw_pixel_preprocess(spec: Preprocess) -> Preprocess:
    """The same geometry (resize, crop, interpolation, crop fraction, antialiasing) with no
    normalisation at all: the preprocessing of a model whose input is raw 0..255 RGB pixels
    (a ``NormalizedModel``)."""
    return replace(spec, scale=1.0, channel_order="RGB", mean=(0.0, 0.0, 0.0),
                   std=(1.0, 1.0, 1.0), mean_image=None)


def is_raw_pixel_preprocess(spec: Preprocess) -> bool:
    return (spec.scale == 1.0 and spec.channel_order == "RGB" and spec.mean_image is None
            and all(v == 0 for v in spec.mean) and all(v == 1 for v in spec.std))


class NormalizedModel(nn.Module):
    """``model`` behind its own input normalisation: forward(raw RGB pixels) -> logits.

    ``preprocess`` defaults to ``model.card.preprocess``. When the model has a card, this
    module gets a copy with the raw-pixel preprocessing (``raw_pixel_preprocess``), so
    ``imagezoo.classify(NormalizedModel(model), ...)`` gives the same results as the model.
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess | None = None):
        super().__init__()
        card = getattr(model, "card", None)
        if preprocess is None:
            if card is None:
                raise ValueError("the model has no card; pass its preprocessing spec")
            preprocess = card.preprocess
        self.normalize = InputNormalization(preprocess)
        self.model = model
        if card is not None:
            self.card = replace(card, preprocess=raw_pixel_preprocess(preprocess))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(pixels))


__all__ = ["InputNormalization", "NormalizedModel", "is_raw_pixel_preprocess",
           "raw_pixel_preprocess"]
