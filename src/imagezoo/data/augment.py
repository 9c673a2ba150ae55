"""Training-time augmentation, reproducible: every draw comes from a generator the caller seeds
(from the run's seed, the epoch and the image's index), never from global random state, so a
resumed or distributed run sees exactly the crops an uninterrupted single process would."""
from __future__ import annotations

import math

import torch
from PIL import Image

from .transforms import Preprocess, resize_and_pad, to_tensor

SCALE = (0.35, 1.0)          # fraction of the resized picture's area a crop covers
RATIO = (3 / 4, 4 / 3)       # its aspect ratio


def augmented_tensor(image: Image.Image, spec: Preprocess, generator: torch.Generator) -> torch.Tensor:
    """The card's resize, then a random resized crop back to the crop size and a random
    horizontal flip (the usual ImageNet training augmentation, milder in scale)."""
    image = resize_and_pad(image, spec)
    size = spec.crop or min(image.size)
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * _uniform(generator, *SCALE)
        ratio = math.exp(_uniform(generator, math.log(RATIO[0]), math.log(RATIO[1])))
        crop_w = int(round(math.sqrt(target * ratio)))
        crop_h = int(round(math.sqrt(target / ratio)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            break
    else:  # no valid draw: the largest centred square
        crop_w = crop_h = min(width, height)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
    image = image.resize((size, size), Image.Resampling.BILINEAR,
                         box=(left, top, left + crop_w, top + crop_h))
    if _uniform(generator, 0.0, 1.0) < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(image, spec)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))
