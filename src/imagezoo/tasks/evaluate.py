"""Evaluation: top-1 / top-k accuracy of a model on a labelled image set, with PyTorch.

The set's labels are the model's class indices. Accuracies are fractions in 0..1 (as
probabilities are in ``classify``'s JSON); ``format_report`` prints them as percentages.
Images are streamed through the batch loader, so a set of any size runs in constant memory.
What an evaluation is (the set matched to the model, the tally, the report) lives in the
PyTorch-free ``evaluation.py``, shared with ``light_evaluate.py`` (a cached ONNX Runtime engine
without PyTorch) and Ray.

Besides image files, a set may be CIFAR-10 in its authors' own layouts (``cifar10:PATH``, a
tarball, folder or batch file of the binary or Python version; ``data/cifar10.py``): its
images are held in memory and preprocessed per the card like decoded files.
"""
from __future__ import annotations

import os
import sys

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..card import ModelCard
from ..data.batches import INFERENCE_BATCH, image_batches
from ..data.cifar10 import Cifar10Set
from ..data.datasets import LabelledSet
from ..data.decode_guard import preprocess_reason
from ..data.transforms import Preprocess, preprocess_image, preprocess_ten_crop
from .classify import class_probabilities, image_dataset, resolve_device, show_progress
from .evaluation import (  # noqa: F401 (the public names stay importable from here)
    MAX_CONFUSIONS, Evaluation, Tally, distinct_names, format_report, labelled_inputs,
    labelled_set_for_model,
)


def evaluate(model: nn.Module, dataset: str | os.PathLike | LabelledSet | Cifar10Set, top: int = 5,
             ten_crop: bool = False, batch_size: int = INFERENCE_BATCH, workers: int | None = None,
             device: str = "auto", progress: bool = False,
             classes_file: str | os.PathLike | None = None) -> Evaluation:
    """Measure top-1 and top-``top`` accuracy of ``model`` on a labelled set.

    ``dataset`` is a mapping file (``path<TAB>label``, labels are the model's class indices),
    a folder with one subfolder per class, a ``LabelledSet`` whose labels are the model's
    class indices, or CIFAR-10's test batch in its authors' layouts: ``"cifar10:PATH"``
    (``cifar-10-binary.tar.gz``, ``cifar-10-python.tar.gz``, their folders or a batch file)
    or a ``Cifar10Set`` already read (``data.cifar10.read_cifar10``). CIFAR-10's classes are
    matched to the model's labels by name, else taken as its class indices when the model has
    ten. Class folders are matched to the model's classes, in this order:

    1. through ``classes_file``, whose line i is the folder name of model class i (the first
       token of each line, so ImageNet's ``LOC_synset_mapping.txt`` works for synset folders);
    2. through the model's labels, when every folder is named after one of them (as the
       folders of a set a model was fine-tuned on are);
    3. as class indices, when every folder name is an integer (``0``, ``17``, ``999``).

    For a mapping file, a ``classes_file`` must name as many classes as the model has.
    ``k`` is ``min(top, number of classes)``. ``ten_crop`` averages the probabilities of the
    ten crops. An image that cannot be decoded is listed in ``failed`` and left out of the
    accuracies. Raises ``DatasetError`` for a set that does not fit the model.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")
    card: ModelCard = model.card
    labelled = labelled_inputs(dataset, card, classes_file)
    if labelled.images is not None:
        inputs = ArrayImages(labelled.images, labelled.names, card.preprocess, ten_crop)
        if workers is None:
            workers = 0   # nothing to decode: preprocessing a 32x32 array costs less than a worker
    else:
        inputs = image_dataset(labelled.paths, card, ten_crop)
    k = min(top, card.num_classes)
    tally = Tally(card.labels, k)
    target = resolve_device(device)
    model = model.to(target).eval()
    bar = tqdm(total=len(labelled), unit="img", desc="evaluate", file=sys.stderr,
               disable=not show_progress(progress))
    with torch.inference_mode(), bar:
        for batch in image_batches(inputs, batch_size=batch_size, workers=workers):
            for index, message in batch.failures:
                tally.fail(labelled.names[index], message)
            if batch.tensor is not None:
                probabilities = class_probabilities(model, batch.tensor.to(target))
                ranked = probabilities.topk(k, dim=1).indices.cpu().tolist()
                for index, best in zip(batch.indices, ranked):
                    tally.add(labelled.labels[index], best)
            bar.update(len(batch.indices) + len(batch.failures))
    return tally.result()


class ArrayImages(Dataset):
    """In-memory RGB images (N x H x W x 3 uint8) as ``image_batches`` takes them: item ``i``
    is (i, preprocessed tensor or None, error or None, notes), like ``ImageDataset``'s."""

    def __init__(self, images, names: list[str], spec: Preprocess, ten_crop: bool = False):
        self.images, self.names, self.spec = images, names, spec
        self.transform = preprocess_ten_crop if ten_crop else preprocess_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(Image.fromarray(self.images[index]), self.spec), None, []
        except Exception as error:  # noqa: BLE001 - one input's problem, never the run's
            return index, None, f"{self.names[index]}: {preprocess_reason(error)}", []
