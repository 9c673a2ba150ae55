"""Classification: image sources -> the top-k classes with probabilities, one result per input."""
from __future__ import annotations

import logging
import os
import sys
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..card import ModelCard
from .results import Prediction, Predictions, Ranked, capped_top  # noqa: F401 (re-exported)
from ..errors import ImageDecodeError, ImagezooError
from ..data.decode_guard import preprocess_reason
from ..data.batches import INFERENCE_BATCH, ImageDataset, image_batches
from ..data.images import load_image, to_rgb
from ..data.items import draft_size  # noqa: F401 (re-exported)
from ..data.sources import expand_sources
from ..data.transforms import preprocess_image, preprocess_ten_crop

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (a GPU when there is one, else the CPU), or the device named, which must be
    there: asking for a GPU on a machine without one is an ``ImagezooError``, not a crash
    half-way through the run."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ImagezooError(f"unknown device {device!r} ({error})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ImagezooError(f"device {device!r} is not available: this PyTorch sees no CUDA GPU "
                            f"(use --device cpu or auto)")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ImagezooError(f"device {device!r} is not available: this machine has "
                            f"{torch.cuda.device_count()} CUDA GPU(s)")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ImagezooError(f"device {device!r} is not available on this machine")
    return chosen


def preprocess(image: str | os.PathLike | Image.Image | np.ndarray, card: ModelCard,
               ten_crop: bool = False) -> torch.Tensor:
    """One image (path, URL, PIL image or H x W x 3 uint8 array) -> 1 x 3 x H x W model input
    (1 x 10 x 3 x H x W with ``ten_crop``)."""
    name = "image" if isinstance(image, (np.ndarray, Image.Image)) else str(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        image = to_rgb(image)
    else:
        image = load_image(image)
    transform = preprocess_ten_crop if ten_crop else preprocess_image
    try:
        return transform(image, card.preprocess).unsqueeze(0)
    except Exception as error:  # noqa: BLE001 - an odd image is its own error, never a crash
        raise ImageDecodeError(f"{name}: {preprocess_reason(error)}") from None


def show_progress(requested: bool) -> bool:
    """A bar when asked for, or when stderr is a terminal; pipes stay quiet."""
    return requested or sys.stderr.isatty()


def image_dataset(sources: list[str], card: ModelCard, ten_crop: bool = False,
                  draft: bool = False) -> ImageDataset:
    """Images decoded and preprocessed per the card: one crop (3xHxW) or ten (10x3xHxW).

    ``draft`` lets libjpeg decode big JPEGs at a reduced scale that still covers the card's
    resize (much faster; about one grey level from a full decode), for ``--precision fast``."""
    return ImageDataset(sources, card.preprocess,
                        transform=preprocess_ten_crop if ten_crop else preprocess_image,
                        draft_size=draft_size(card, draft))


def class_probabilities(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes, N x C; a batch of crops (N x K x 3 x H x W) is run as one
    batch of N*K and the K probability vectors of each image are averaged."""
    if batch.dim() == 5:
        images, crops = batch.shape[:2]
        logits = model(batch.flatten(0, 1))
        return torch.softmax(logits.float(), dim=1).view(images, crops, -1).mean(dim=1)
    return torch.softmax(model(batch).float(), dim=1)


def top_classes(probabilities: torch.Tensor, card: ModelCard, k: int) -> list[list[Ranked]]:
    """Each row of an N x C probability matrix -> its ``k`` most likely classes, best first."""
    values, classes = probabilities.topk(capped_top(k, card), dim=1)
    return [[Ranked(rank + 1, int(c), card.labels[int(c)], float(p))
             for rank, (p, c) in enumerate(zip(value_row, class_row))]
            for value_row, class_row in zip(values, classes)]


def classify(model: nn.Module, inputs: str | os.PathLike | Iterable[str | os.PathLike], top: int = 5,
             batch_size: int = INFERENCE_BATCH, workers: int | None = None, device: str = "auto",
             progress: bool = False, ten_crop: bool = False, draft: bool = False,
             all_files: bool = False) -> Predictions:
    """Classify every image named by ``inputs`` (files, folders, list files, URLs).

    Returns one ``Prediction`` per image in input order; an image that cannot be read gets
    its error instead of predictions (with the reason in words), and the others are
    classified all the same. What a decoder said about an image is in its ``notes``.
    Folders are walked by extension (every format the installed Pillow decodes), or by
    content with ``all_files``; the files left out are in the result's ``skipped``.
    ``top`` above the model's class count ranks every class (see ``capped_top``).
    ``ten_crop`` averages the probabilities of torchvision's ten crops (four corners and the
    centre, and their mirror images) taken after the card's resize.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    sources = expand_sources(inputs, all_files)
    card: ModelCard = model.card
    capped_top(top, card)
    target = resolve_device(device)
    model = model.to(target).eval()
    results = Predictions([None] * len(sources), sources.skipped)
    dataset = image_dataset(sources, card, ten_crop, draft)
    bar = tqdm(total=len(sources), unit="img", file=sys.stderr, disable=not show_progress(progress))
    with torch.inference_mode(), bar:
        for batch in image_batches(dataset, batch_size=batch_size, workers=workers):
            for index, message in batch.failures:
                log.debug("skipping %s", message)
                results[index] = Prediction(sources[index], error=message)
            if batch.tensor is not None:
                probabilities = class_probabilities(model, batch.tensor.to(target)).cpu()
                for index, ranked in zip(batch.indices, top_classes(probabilities, card, top)):
                    results[index] = Prediction(sources[index], predictions=ranked)
            for index, note in batch.notes:
                results[index].notes.append(note)
            bar.update(len(batch.indices) + len(batch.failures))
    return results


def classify_input(model: nn.Module, batch: torch.Tensor, top: int = 5) -> list[list[Ranked]]:
    """A preprocessed batch (from ``preprocess``) -> each image's top
    classes. The model stays on its device; the batch goes there."""
    parameter = next(model.parameters(), None)
    if parameter is not None:
        batch = batch.to(parameter.device)
    with torch.inference_mode():
        probabilities = class_probabilities(model, batch).cpu()
    return top_classes(probabilities, model.card, top)

