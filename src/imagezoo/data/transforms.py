"""Preprocessing as data: a spec read from the model card, applied to an RGB image.

The steps and their order follow torchvision's standard evaluation transform, because that
is what the published ResNet numbers were measured with:

1. ``Resize(resize)``: the shorter side becomes ``resize`` and the longer side
   ``int(resize * long / short)`` (truncated, as torchvision computes it), with Pillow's
   ``Image.resize`` and the named interpolation.
2. ``CenterCrop(crop)``: offsets ``int(round((size - crop) / 2))``; an image smaller than the
   crop is padded with zeros first, as torchvision does.
3. Pixel values as float32, multiplied by ``scale`` (``1/255`` gives torchvision's 0..1 range,
   ``1`` keeps Caffe's 0..255 range).
4. Channels reordered to ``channel_order`` (Caffe-derived models want BGR).
5. ``mean_image`` (H x W x C or 1 x 1 x C, in the model's channel order and scale) is
   subtracted, else ``mean``; then the result is divided by ``std``.

Other frameworks differ only in these numbers, so every model's difference lives in its card,
never in a code path keyed on a model name.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass
class Preprocess:
    """How raw RGB pixels become the model's input tensor (see the module docstring)."""

    resize: int | None = 256
    crop: int | None = 224
    interpolation: str = "bilinear"
    scale: float = 1.0 / 255.0
    channel_order: str = "RGB"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    mean_image: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; "
                             f"choose one of {', '.join(INTERPOLATIONS)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', not {self.channel_order!r}")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.mean_image is not None:
            self.mean_image = np.asarray(self.mean_image, dtype=np.float32)
            if self.mean_image.ndim != 3 or self.mean_image.shape[2] != 3:
                raise ValueError(f"mean_image must be H x W x 3, not {self.mean_image.shape}")

    @property
    def input_size(self) -> int | None:
        """Side of the square the model sees, when the spec fixes one."""
        return self.crop or self.resize

    def to_dict(self) -> dict:
        """JSON-ready form; a mean image is written as nested lists."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["mean_image"] = None if self.mean_image is None else self.mean_image.tolist()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(**data)


def resize_shorter_side(image: Image.Image, size: int, interpolation: str) -> Image.Image:
    """Scale so the shorter side is ``size``, keeping the aspect ratio as torchvision does."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), INTERPOLATIONS[interpolation])


def crop_box(width: int, height: int, crop: int, left_fraction: float = 0.5,
             top_fraction: float = 0.5) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a crop x crop window placed at the given fractions.

    0.5 / 0.5 is the centre crop with torchvision's rounding; 0 and 1 give the corners.
    """
    left = int(round((width - crop) * left_fraction))
    top = int(round((height - crop) * top_fraction))
    return left, top, left + crop, top + crop


def pad_to_crop(image: Image.Image, crop: int) -> Image.Image:
    """Zero-pad an image smaller than the crop, centred, like torchvision's CenterCrop."""
    width, height = image.size
    if width >= crop and height >= crop:
        return image
    new_width, new_height = max(width, crop), max(height, crop)
    canvas = Image.new("RGB", (new_width, new_height))
    canvas.paste(image, ((new_width - width) // 2, (new_height - height) // 2))
    return canvas


def resize_and_pad(image: Image.Image, spec: Preprocess) -> Image.Image:
    """The geometric part shared by single- and multi-crop prediction: resize, then pad."""
    if spec.resize is not None:
        image = resize_shorter_side(image, spec.resize, spec.interpolation)
    if spec.crop is not None:
        image = pad_to_crop(image, spec.crop)
    return image


def center_crop(image: Image.Image, crop: int | None) -> Image.Image:
    if crop is None:
        return image
    return image.crop(crop_box(*image.size, crop))


def to_array(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """Pixel values of an already cropped RGB image -> normalised 3 x H x W float32 array.

    NumPy alone (no PyTorch), and bit-for-bit what torchvision's ``ToTensor`` + ``Normalize``
    give: each step is one IEEE float32 operation, which NumPy and PyTorch round alike."""
    values = np.asarray(image, dtype=np.uint8).astype(np.float32)  # H x W x 3, RGB
    if spec.scale != 1.0:
        # torchvision's ToTensor divides by 255 rather than multiplying by 1/255; match it
        # so the result is bit-for-bit the same.
        if abs(spec.scale - 1.0 / 255.0) < 1e-12:
            values = values / np.float32(255.0)
        else:
            values = values * np.float32(spec.scale)
    if spec.channel_order == "BGR":
        values = values[..., ::-1]
    if spec.mean_image is not None:
        mean = spec.mean_image
        if tuple(mean.shape[:2]) not in ((1, 1), tuple(values.shape[:2])):
            raise ValueError(f"mean image of {tuple(mean.shape[:2])} does not match the "
                             f"{tuple(values.shape[:2])} crop")
        values = values - mean
    else:
        values = values - np.asarray(spec.mean, dtype=np.float32)
    values = values / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def to_tensor(image: Image.Image, spec: Preprocess) -> "torch.Tensor":
    """``to_array`` as a torch tensor."""
    import torch
    return torch.from_numpy(to_array(image, spec))


def preprocess_array(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """RGB PIL image -> 3 x H x W float32 array, single centre crop (no PyTorch)."""
    image = resize_and_pad(image, spec)
    return to_array(center_crop(image, spec.crop), spec)


def preprocess_image(image: Image.Image, spec: Preprocess) -> "torch.Tensor":
    """RGB PIL image -> 3 x H x W tensor, single centre crop."""
    import torch
    return torch.from_numpy(preprocess_array(image, spec))


# The placements of torchvision's FiveCrop, in its order: top-left, top-right, bottom-left,
# bottom-right, centre (as fractions of the free space left and above the crop).
FIVE_CROP_PLACES = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))


def ten_crop_images(image: Image.Image, crop: int) -> list[Image.Image]:
    """torchvision's TenCrop: the five crops of the image, then the five of its mirror image.

    The mirrored crops are taken from the flipped picture (so the flipped "top-left" mirrors
    the original top-right), exactly as ``torchvision.transforms.functional.ten_crop`` does.
    """
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crops = []
    for source in (image, mirrored):
        width, height = source.size
        for left, top in FIVE_CROP_PLACES:
            if (left, top) == (0.5, 0.5):
                crops.append(center_crop(source, crop))
            else:
                # Corner crops have no rounding: offsets are exactly 0 or size - crop.
                crops.append(source.crop(crop_box(width, height, crop, left, top)))
    return crops


def preprocess_ten_crop_array(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """RGB PIL image -> 10 x 3 x H x W float32 array: the card's resize, then the ten crops."""
    if spec.crop is None:
        raise ValueError("ten-crop prediction needs a crop size in the preprocessing spec")
    image = resize_and_pad(image, spec)
    return np.stack([to_array(crop, spec) for crop in ten_crop_images(image, spec.crop)])


def preprocess_ten_crop(image: Image.Image, spec: Preprocess) -> "torch.Tensor":
    """``preprocess_ten_crop_array`` as a torch tensor."""
    import torch
    return torch.from_numpy(preprocess_ten_crop_array(image, spec))
