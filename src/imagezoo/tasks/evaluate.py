"""Evaluation: top-1 / top-k accuracy of a model on a labelled image set.

The set's labels are the model's class indices. Accuracies are fractions in 0..1 (as
probabilities are in ``classify``'s JSON); ``format_report`` prints them as percentages.
Images are streamed through the batch loader, so a set of any size runs in constant memory:
only counts are kept (per class, and per confused pair of classes).

Besides image files, a set may be CIFAR-10 in its authors' own layouts (``cifar10:PATH``, a
tarball, folder or batch file of the binary or Python version; ``data/cifar10.py``): its
images are held in memory and preprocessed per the card like decoded files.
"""
from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..card import ModelCard
from ..data.batches import INFERENCE_BATCH, image_batches
from ..data.cifar10 import Cifar10Set, read_cifar10
from ..data.datasets import (
    LabelledSet, cifar10_path, class_folder_names, read_class_folders, read_classes_file,
    read_mapping_file,
)
from ..data.decode_guard import preprocess_reason
from ..data.transforms import Preprocess, preprocess_image, preprocess_ten_crop
from ..errors import DatasetError
from .classify import class_probabilities, image_dataset, resolve_device, show_progress

log = logging.getLogger(__name__)

# How many of the most frequent (true, predicted) mistakes an Evaluation keeps.
MAX_CONFUSIONS = 10


@dataclass
class Evaluation:
    """Accuracy over the images that could be read; the others are listed in ``failed``.

    ``top1`` and ``topk`` are fractions in 0..1, or ``None`` when no image could be read.
    ``per_class`` maps a class name to ``{"accuracy": top-1 fraction, "count": images}`` for
    the classes that occur, in class-index order. ``confusions`` holds the most frequent
    mistakes as (true class, predicted class, images), most frequent first. Class names are
    the model's labels; a name the model uses twice is suffixed with its index, ``"crane (134)"``.
    """

    top1: float | None
    topk: float | None
    k: int
    count: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    per_class: dict[str, dict] = field(default_factory=dict)
    confusions: list[tuple[str, str, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """``{"top1", "top<k>", "count", "per_class", "failed", "confusions"}``, JSON-ready."""
        return {
            "top1": self.top1,
            f"top{self.k}": self.topk,
            "count": self.count,
            "per_class": {name: dict(entry) for name, entry in self.per_class.items()},
            "failed": [{"input": source, "error": error} for source, error in self.failed],
            "confusions": [{"true": true, "predicted": predicted, "count": count}
                           for true, predicted, count in self.confusions],
        }


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
    inputs, labels, sources = _inputs_for_model(dataset, card, classes_file, ten_crop)
    if workers is None and isinstance(inputs, ArrayImages):
        workers = 0   # nothing to decode: preprocessing a 32x32 array costs less than a worker
    k = min(top, card.num_classes)
    names = distinct_names(card.labels)

    target = resolve_device(device)
    model = model.to(target).eval()
    images = Counter()           # label -> images
    correct = Counter()          # label -> top-1 hits
    mistakes = Counter()         # (true, predicted) -> images, off the diagonal only
    hits_top1 = hits_topk = 0
    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(sources), unit="img", desc="evaluate", file=sys.stderr,
               disable=not show_progress(progress))
    with torch.inference_mode(), bar:
        for batch in image_batches(inputs, batch_size=batch_size, workers=workers):
            for index, message in batch.failures:
                log.debug("skipping %s", message)
                failed.append((sources[index], message))
            if batch.tensor is not None:
                probabilities = class_probabilities(model, batch.tensor.to(target))
                ranked = probabilities.topk(k, dim=1).indices.cpu().tolist()
                for index, best in zip(batch.indices, ranked):
                    true, predicted = labels[index], best[0]
                    images[true] += 1
                    if predicted == true:
                        correct[true] += 1
                        hits_top1 += 1
                    else:
                        mistakes[true, predicted] += 1
                    hits_topk += true in best
            bar.update(len(batch.indices) + len(batch.failures))

    count = sum(images.values())
    per_class = {names[label]: {"accuracy": correct[label] / images[label], "count": images[label]}
                 for label in sorted(images)}
    worst = sorted(mistakes.items(), key=lambda item: (-item[1], item[0]))[:MAX_CONFUSIONS]
    return Evaluation(
        top1=hits_top1 / count if count else None,
        topk=hits_topk / count if count else None,
        k=k, count=count, failed=failed, per_class=per_class,
        confusions=[(names[true], names[predicted], n) for (true, predicted), n in worst])


def distinct_names(labels: list[str]) -> list[str]:
    """The labels, with a name that occurs more than once suffixed by its index."""
    seen = Counter(labels)
    return [name if seen[name] == 1 else f"{name} ({index})" for index, name in enumerate(labels)]


def format_report(evaluation: Evaluation) -> str:
    """A plain-text report: accuracies, counts, failures, a per-class table, the worst mix-ups."""
    e = evaluation
    lines = []
    if e.count:
        top1_hits = round(e.top1 * e.count)
        topk_hits = round(e.topk * e.count)
        lines.append(f"top-1 accuracy  {_percent(e.top1)}  ({top1_hits} of {e.count})")
        if e.k != 1:
            lines.append(f"top-{e.k} accuracy  {_percent(e.topk)}  ({topk_hits} of {e.count})")
    else:
        lines.append("no image could be evaluated")
    failures = f", {len(e.failed)} could not be read" if e.failed else ""
    lines.append(f"images          {e.count} evaluated{failures}")
    for source, error in e.failed[:MAX_CONFUSIONS]:
        lines.append(f"  {error if error.startswith(source) else f'{source}: {error}'}")
    if len(e.failed) > MAX_CONFUSIONS:
        lines.append(f"  … and {len(e.failed) - MAX_CONFUSIONS} more")

    if e.per_class:
        lines += ["", "per class:"]
        width = max(len("images"), *(len(str(entry["count"])) for entry in e.per_class.values()))
        lines.append(f"  {'accuracy':>8}  {'images':>{width}}  class")
        for name, entry in e.per_class.items():
            lines.append(f"  {_percent(entry['accuracy']):>8}  {entry['count']:>{width}}  {name}")
    if e.confusions:
        lines += ["", "most confused (true -> predicted):"]
        width = max(len("images"), *(len(str(n)) for _, _, n in e.confusions))
        lines.append(f"  {'images':>{width}}  true -> predicted")
        for true, predicted, n in e.confusions:
            lines.append(f"  {n:>{width}}  {true} -> {predicted}")
    return "\n".join(lines)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


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


def _inputs_for_model(dataset, card: ModelCard, classes_file, ten_crop: bool
                      ) -> tuple[Dataset, list[int], list[str]]:
    """The dataset to batch, the label of each item as a model class index, and each item's
    name for messages."""
    path = cifar10_path(dataset)
    if path is not None:
        dataset = read_cifar10(path)
    if isinstance(dataset, Cifar10Set):
        if classes_file is not None:
            raise DatasetError("a classes file is for mapping files and class folders; "
                               "CIFAR-10's files name their own classes")
        labels = _cifar10_labels_for_model(dataset, card)
        names = [dataset.describe(index) for index in range(len(dataset))]
        return ArrayImages(dataset.images, names, card.preprocess, ten_crop), labels, names
    labelled = _labelled_set_for_model(dataset, card, classes_file)
    return image_dataset(labelled.paths, card, ten_crop), labelled.labels, labelled.paths


def _cifar10_labels_for_model(dataset: Cifar10Set, card: ModelCard) -> list[int]:
    """CIFAR-10 label indices -> the model's: by class name, else as they are for a model
    with as many classes."""
    if set(dataset.classes) <= set(card.labels):
        mapping = [card.labels.index(name) for name in dataset.classes]
        return [mapping[label] for label in dataset.labels.tolist()]
    if card.num_classes == len(dataset.classes):
        log.info("%s: the model's labels are not CIFAR-10's class names; taking CIFAR-10's "
                 "label i as model class i", dataset.source)
        return dataset.labels.tolist()
    raise DatasetError(f"{dataset.source}: CIFAR-10's {len(dataset.classes)} classes "
                       f"({', '.join(dataset.classes[:3])}, ...) are not among the model's "
                       f"{card.num_classes} labels")


def _labelled_set_for_model(dataset: str | os.PathLike | LabelledSet, card: ModelCard,
                            classes_file: str | os.PathLike | None) -> LabelledSet:
    """Read ``dataset`` with labels that are ``card``'s class indices, or explain why not."""
    num_classes = card.num_classes
    if isinstance(dataset, LabelledSet):
        for index, (_, label) in enumerate(dataset.items):
            if not 0 <= label < num_classes:
                raise DatasetError(f"{dataset.describe(index)}: label {label} is out of range "
                                   f"for a model with {num_classes} classes")
        return dataset
    path = Path(dataset)
    if path.is_file():
        return read_mapping_file(path, classes_file, num_classes=num_classes)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such mapping file or folder")

    if classes_file is not None:
        classes = read_classes_file(classes_file)
        if len(classes) != num_classes:
            raise DatasetError(f"classes file {classes_file} names {len(classes)} classes, but "
                               f"the model has {num_classes}; its line i must be the folder "
                               f"name of model class i")
        return read_class_folders(path, classes)
    folders = class_folder_names(path)
    if folders and set(folders) <= set(card.labels):
        return read_class_folders(path, list(card.labels))
    if folders and all(_is_index(name) for name in folders):
        classes = [str(index) for index in range(num_classes)]
        for name in folders:
            label = int(name)
            if label >= num_classes:
                raise DatasetError(f"{path / name}: class index {label} is out of range for a "
                                   f"model with {num_classes} classes")
            if classes[label] in folders and classes[label] != name:
                raise DatasetError(f"{path}: folders {classes[label]!r} and {name!r} are both "
                                   f"class {label}")
            classes[label] = name
        return read_class_folders(path, classes)
    if not folders:
        return read_class_folders(path)   # raises the "no class subfolders" error
    strangers = [name for name in folders if name not in set(card.labels)]
    shown = ", ".join(repr(name) for name in strangers[:3]) + (", …" if len(strangers) > 3 else "")
    verb = "is not one" if len(strangers) == 1 else "are not"
    raise DatasetError(
        f"{path}: cannot tell which model class each folder holds ({shown} {verb} of the "
        f"model's labels). Either give a classes file whose line i is the folder name of model "
        f"class i, or name each folder after a model label (e.g. {card.labels[0]!r}), or name "
        f"each folder by its class index (0..{num_classes - 1})")


def _is_index(name: str) -> bool:
    return name.isascii() and name.isdigit()
