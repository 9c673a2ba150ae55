"""What an evaluation is, without PyTorch: the labelled inputs matched to a model's classes,
the running tally of hits and mistakes, the ``Evaluation`` it gives and its report.

Every evaluation path shares these: the PyTorch loop (``evaluate.py``), the one that runs a
cached ONNX Runtime engine without PyTorch (``light_evaluate.py``) and Ray's rows
(``ray/commands.py``), so their figures cannot drift apart. Only counts are kept (per class,
and per confused pair of classes), so a set of any size is tallied in constant memory.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..card import ModelCard
from ..data.cifar10 import Cifar10Set, read_cifar10
from ..data.datasets import (
    LabelledSet, cifar10_path, class_folder_names, read_class_folders, read_classes_file,
    read_mapping_file,
)
from ..errors import DatasetError

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


class Tally:
    """Hits and mistakes so far; ``result()`` is the ``Evaluation``."""

    def __init__(self, labels: list[str], k: int):
        self.names, self.k = distinct_names(labels), k
        self.images = Counter()      # label -> images
        self.correct = Counter()     # label -> top-1 hits
        self.mistakes = Counter()    # (true, predicted) -> images, off the diagonal only
        self.hits_top1 = self.hits_topk = 0
        self.failed: list[tuple[str, str]] = []

    def add(self, true: int, best: Sequence[int]) -> None:
        """One image of class ``true`` whose ``k`` most likely classes are ``best``."""
        self.images[true] += 1
        if best[0] == true:
            self.correct[true] += 1
            self.hits_top1 += 1
        else:
            self.mistakes[true, best[0]] += 1
        self.hits_topk += true in best

    def fail(self, source: str, error: str) -> None:
        log.debug("skipping %s", error)
        self.failed.append((source, error))

    def result(self) -> Evaluation:
        count = sum(self.images.values())
        names = self.names
        per_class = {names[label]: {"accuracy": self.correct[label] / self.images[label],
                                    "count": self.images[label]} for label in sorted(self.images)}
        worst = sorted(self.mistakes.items(), key=lambda item: (-item[1], item[0]))[:MAX_CONFUSIONS]
        return Evaluation(
            top1=self.hits_top1 / count if count else None,
            topk=self.hits_topk / count if count else None,
            k=self.k, count=count, failed=self.failed, per_class=per_class,
            confusions=[(names[true], names[predicted], n) for (true, predicted), n in worst])


def top_indices(probabilities: np.ndarray, k: int) -> list[list[int]]:
    """Each row's ``k`` most likely class indices, best first; ties in class-index order, as
    ``torch.topk`` on the CPU gives them."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k].tolist()


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


@dataclass
class LabelledInputs:
    """A set matched to a model: image files (``paths``) or in-memory RGB images (``images``,
    N x H x W x 3 uint8, CIFAR-10's), each item's label as a model class index, and each
    item's name for messages."""

    labels: list[int]
    names: list[str]
    paths: list[str] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def labelled_inputs(dataset, card: ModelCard, classes_file=None) -> LabelledInputs:
    """``dataset`` (see ``evaluate``) with labels that are ``card``'s class indices; a
    ``LabelledInputs`` already matched is returned as it is."""
    if isinstance(dataset, LabelledInputs):
        return dataset
    path = cifar10_path(dataset)
    if path is not None:
        dataset = read_cifar10(path)
    if isinstance(dataset, Cifar10Set):
        if classes_file is not None:
            raise DatasetError("a classes file is for mapping files and class folders; "
                               "CIFAR-10's files name their own classes")
        labels = _cifar10_labels_for_model(dataset, card)
        names = [dataset.describe(index) for index in range(len(dataset))]
        return LabelledInputs(labels, names, images=dataset.images)
    labelled = labelled_set_for_model(dataset, card, classes_file)
    return LabelledInputs(list(labelled.labels), list(labelled.paths), paths=list(labelled.paths))


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


def labelled_set_for_model(dataset: str | os.PathLike | LabelledSet, card: ModelCard,
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
