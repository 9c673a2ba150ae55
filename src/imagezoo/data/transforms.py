"""Preprocessing as data: a spec read from the model card, applied to an RGB image.

Two geometries give the single centre crop a model sees, each the evaluation transform of the
framework its weights come from:

* torchvision's (the default; the published ResNet numbers were measured with it):

  1. ``Resize(resize)``: the shorter side becomes ``resize`` and the longer side
     ``int(resize * long / short)`` (truncated, as torchvision computes it), with Pillow's
     ``Image.resize`` and the named interpolation.
  2. ``CenterCrop(crop)``: offsets ``int(round((size - crop) / 2))``; an image smaller than the
     crop is padded with zeros first, as torchvision does.

* TensorFlow's (``crop_fraction`` set; the EfficientNet eval code of tensorflow/tpu,
  ``preprocessing._decode_and_center_crop``): a centre square of side
  ``int(crop_fraction * shorter side)`` (computed in float32, then truncated, as ``tf.cast``
  does) at offsets ``((size - side) + 1) // 2``, then resized to ``crop`` x ``crop``.

``antialias`` says how a resize samples. ``True``: Pillow's filters, which widen with the
scale factor when shrinking (what torchvision does to PIL images). ``False``: plain bilinear
interpolation between the 2 x 2 nearest pixels, TensorFlow's ``resize_bilinear`` kernel done
in float32 NumPy and kept unrounded, as TensorFlow keeps it (only ``"bilinear"`` has this
form). ``half_pixel_centers`` picks its grid, as the kernel's attribute of that name does:
``True`` maps output pixel ``x`` to source position ``(x + 0.5) * in / out - 0.5``
(TensorFlow 2's ``tf.image.resize``, PyTorch's ``align_corners=False``); ``False`` maps it to
``x * in / out`` (TensorFlow 1's ``tf.image.resize_images``, which is also
``tf.compat.v1.image.resize`` and what code written for TensorFlow 1 runs).

Then, for either geometry:

3. Pixel values as float32, multiplied by ``scale`` (``1/255`` gives torchvision's 0..1 range,
   ``1`` keeps Caffe's 0..255 range).
4. Channels reordered to ``channel_order`` (Caffe-derived models want BGR).
5. ``mean_image`` (H x W x C or 1 x 1 x C, in the model's channel order and scale) is
   subtracted, else ``mean``; then the result is divided by ``std``.

Ten crops and training crops always start from the ``resize`` step (torchvision's TenCrop
after ``Resize``), so a TensorFlow-geometry card keeps a ``resize`` for them too; ten crops
sample as ``antialias`` says, training crops (``augment.py``) always with Pillow.

Other frameworks differ only in these numbers, so every model's difference lives in its card,
never in a code path keyed on a model name; ``follows`` says in words whose transform a card
reproduces.
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
    crop_fraction: float | None = None   # set: TensorFlow's centre square, then resize to crop
    antialias: bool = True               # False: TensorFlow's bilinear, no antialiasing
    half_pixel_centers: bool = True      # with antialias=False: TF2's grid (True) or TF1's
    follows: str | None = None           # whose evaluation transform this reproduces

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; "
                             f"choose one of {', '.join(INTERPOLATIONS)}")
        if not self.antialias and self.interpolation != "bilinear":
            raise ValueError(f"antialias=False is defined for bilinear interpolation only, "
                             f"not {self.interpolation!r}")
        if self.antialias and not self.half_pixel_centers:
            raise ValueError("half_pixel_centers=False describes TensorFlow 1's bilinear grid, "
                             "which needs antialias=False (Pillow samples pixel centres)")
        if self.crop_fraction is not None:
            self.crop_fraction = float(self.crop_fraction)
            if not 0.0 < self.crop_fraction <= 1.0:
                raise ValueError(f"crop_fraction must be in (0, 1], not {self.crop_fraction}")
            if self.crop is None:
                raise ValueError("crop_fraction needs a crop size: the square is resized to it")
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

    def describe(self) -> str:
        """The geometry in words: ``shorter side to 256 (bilinear), centre 224x224``."""
        sampling = self.interpolation
        if not self.antialias:
            sampling += (", no antialias" if self.half_pixel_centers
                         else ", no antialias, TensorFlow 1 grid")
        if self.crop_fraction is not None:
            return (f"centre square of {self.crop_fraction:g} x the shorter side, resized to "
                    f"{self.crop}x{self.crop} ({sampling})")
        steps = []
        if self.resize is not None:
            steps.append(f"shorter side to {self.resize} ({sampling})")
        if self.crop is not None:
            steps.append(f"centre {self.crop}x{self.crop}")
        return ", ".join(steps) or "as it is"

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
    new_width, new_height = shorter_side_size(width, height, size)
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
    return normalise(np.asarray(image, dtype=np.uint8), spec)


def normalise(pixels: np.ndarray, spec: Preprocess) -> np.ndarray:
    """H x W x 3 RGB pixel values (uint8, or float32 in 0..255) -> 3 x H x W float32, scaled,
    reordered and normalised per ``spec`` (steps 3-5 of the module docstring)."""
    values = pixels.astype(np.float32)  # H x W x 3, RGB
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
    if spec.crop_fraction is not None or not spec.antialias:
        return normalise(geometry_array(image, spec), spec)
    image = resize_and_pad(image, spec)
    return to_array(center_crop(image, spec.crop), spec)


def geometry_array(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """The pixels of the single centre crop, before any scaling: H x W x 3, uint8 when every
    value is a source pixel (Pillow's resize, plain crops), else float32 in 0..255."""
    if spec.crop_fraction is not None:
        square = image.crop(tensorflow_crop_box(*image.size, spec.crop_fraction))
        return resized_pixels(square, spec.crop, spec.crop, spec)
    pixels = np.asarray(image, dtype=np.uint8)
    if spec.resize is not None:
        width, height = shorter_side_size(*image.size, spec.resize)
        pixels = resized_pixels(image, width, height, spec)
    if spec.crop is None:
        return pixels
    pixels = pad_pixels_to_crop(pixels, spec.crop)
    height, width = pixels.shape[:2]
    left, top, right, bottom = crop_box(width, height, spec.crop)
    return pixels[top:bottom, left:right]


def tensorflow_crop_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """TensorFlow's centre square (tensorflow/tpu efficientnet ``_decode_and_center_crop``):
    side ``int(fraction * min(height, width))`` in float32, offsets ``((size - side) + 1) // 2``."""
    side = int(np.float32(fraction) * np.float32(min(width, height)))
    side = max(side, 1)
    top = ((height - side) + 1) // 2
    left = ((width - side) + 1) // 2
    return left, top, left + side, top + side


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(size)``: the longer side truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resized_pixels(image: Image.Image, width: int, height: int, spec: Preprocess) -> np.ndarray:
    """``image`` resized to width x height as ``spec`` samples: Pillow (uint8) when
    ``antialias``, else TensorFlow's bilinear kernel (float32)."""
    if image.size == (width, height):
        return np.asarray(image, dtype=np.uint8)
    if spec.antialias:
        return np.asarray(image.resize((width, height), INTERPOLATIONS[spec.interpolation]),
                          dtype=np.uint8)
    return bilinear_resize(np.asarray(image, dtype=np.uint8), height, width,
                           spec.half_pixel_centers)


def bilinear_resize(pixels: np.ndarray, height: int, width: int,
                    half_pixel_centers: bool = True) -> np.ndarray:
    """H x W x C -> height x width x C float32, bilinear without antialiasing.

    The arithmetic of TensorFlow's ``resize_bilinear`` kernel, step for step in float32:
    source coordinate ``(x + 0.5) * (in / out) - 0.5`` with ``half_pixel_centers`` (TF2's
    ``tf.image.resize``), else ``x * (in / out)`` (TF1's ``resize_images``); neighbours
    ``max(floor, 0)`` and ``min(ceil, in - 1)``, weight ``x - floor(x)``; then
    ``top = tl + (tr - tl) * wx``, ``bottom = bl + (br - bl) * wx``,
    ``top + (bottom - top) * wy``. Bit-for-bit TensorFlow's output on the photos tested
    (tests/fixtures/tf_lite_eval/).
    """
    rows_low, rows_high, row_weight = _bilinear_taps(pixels.shape[0], height, half_pixel_centers)
    cols_low, cols_high, col_weight = _bilinear_taps(pixels.shape[1], width, half_pixel_centers)
    col_weight = col_weight[None, :, None]

    def gather(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return pixels[rows[:, None], cols[None, :]].astype(np.float32)

    top_left, top_right = gather(rows_low, cols_low), gather(rows_low, cols_high)
    bottom_left, bottom_right = gather(rows_high, cols_low), gather(rows_high, cols_high)
    top = top_left + (top_right - top_left) * col_weight
    bottom = bottom_left + (bottom_right - bottom_left) * col_weight
    return top + (bottom - top) * row_weight[:, None, None]


def _bilinear_taps(in_size: int, out_size: int, half_pixel_centers: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(in_size) / np.float32(out_size)
    if half_pixel_centers:
        position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale \
            - np.float32(0.5)
    else:
        position = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(position)
    low = np.maximum(floor, 0).astype(np.intp)
    high = np.minimum(np.ceil(position), in_size - 1).astype(np.intp)
    return low, high, (position - floor).astype(np.float32)


def pad_pixels_to_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """``pad_to_crop`` for arrays: zeros around an image smaller than the crop, centred."""
    height, width = pixels.shape[:2]
    if width >= crop and height >= crop:
        return pixels
    new_height, new_width = max(height, crop), max(width, crop)
    canvas = np.zeros((new_height, new_width, pixels.shape[2]), dtype=pixels.dtype)
    top, left = (new_height - height) // 2, (new_width - width) // 2
    canvas[top:top + height, left:left + width] = pixels
    return canvas


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
    if spec.antialias:
        image = resize_and_pad(image, spec)
        return np.stack([to_array(crop, spec) for crop in ten_crop_images(image, spec.crop)])
    pixels = np.asarray(image, dtype=np.uint8)
    if spec.resize is not None:
        pixels = resized_pixels(image, *shorter_side_size(*image.size, spec.resize), spec)
    pixels = pad_pixels_to_crop(pixels, spec.crop)
    return np.stack([normalise(crop, spec) for crop in ten_crop_arrays(pixels, spec.crop)])


def ten_crop_arrays(pixels: np.ndarray, crop: int) -> list[np.ndarray]:
    """``ten_crop_images`` for H x W x C arrays (the same boxes, in the same order)."""
    crops = []
    for source in (pixels, pixels[:, ::-1]):
        height, width = source.shape[:2]
        for left_fraction, top_fraction in FIVE_CROP_PLACES:
            left, top, right, bottom = crop_box(width, height, crop, left_fraction, top_fraction)
            crops.append(source[top:bottom, left:right])
    return crops


def preprocess_ten_crop(image: Image.Image, spec: Preprocess) -> "torch.Tensor":
    """``preprocess_ten_crop_array`` as a torch tensor."""
    import torch
    return torch.from_numpy(preprocess_ten_crop_array(image, spec))
