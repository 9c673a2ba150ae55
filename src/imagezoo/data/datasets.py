"""Labelled image sets: (image path, label index) pairs read from a mapping file or class folders.

Shared by evaluation and fine-tuning. Everything about the set is checked here, before any
image is decoded, so a typo on line 40 000 stops the run at once with the file and line named
instead of after an hour of work. Whether an image *decodes* is not checked here: a file that
exists but is broken is reported in its place by the batch loader, and the run goes on.

Two layouts are read:

**Mapping file** (CNTK's image-reader format): one image per line, ``path<TAB>label``.

* ``label`` is a class index, a non-negative integer (``0``, ``17``; not ``3.0`` or ``cat``).
* Columns are separated by tabs, the standard (a run of tabs counts as one). CNTK's optional
  third form, ``key<TAB>path<TAB>label`` (a sequence key first, ignored here), is accepted. A line
  without any tab may instead separate the two columns with any run of spaces, which only
  works when the path has no spaces: ``my cat.jpg 3`` is refused (use a tab).
* Leading and trailing spaces around each column are dropped; a path cannot start or end
  with a space.
* Relative paths are relative to the mapping file's folder, so the file travels with its
  images; absolute paths are kept. URLs are not accepted.
* Blank lines and lines whose first non-blank character is ``#`` are skipped, so a path
  cannot start with ``#``. Line numbers in messages count every line, from 1, as an editor
  does. A UTF-8 byte-order mark is ignored.

**Classes file**: the first line names class 0, the second class 1, and so on. When a line
holds several whitespace-separated tokens, as ImageNet's ``LOC_synset_mapping.txt`` does
(``n01440764 tench, Tinca tinca``), the first token is the name. Blank lines at the end are
ignored; a blank line before the last name would shift every later class and is an error.

**Class folders** (torchvision's ``ImageFolder`` layout): one subfolder per class below the
root, each holding that class's images at any depth (files with an image extension; see
``sources.image_extensions()``, every format the installed Pillow decodes). Without a class list, the sorted folder names become label
indices 0, 1, 2 …; with one, each folder name is looked up in it. Hidden folders (names
starting with ``.``, e.g. ``.ipynb_checkpoints``) are not classes, and images lying directly
in the root are ignored with a warning. A class folder without images keeps its index (so the
indices of the others do not shift, and a test split may lack a class) and is logged as a
warning; a set with no images at all is an error.

**CIFAR-10's own files** (``cifar10:PATH``): the binary or Python version, a tarball or its
folder, read into memory by ``data/cifar10.py``; ``evaluate`` takes them as they are.
``cifar10_path`` recognises the form; ``read_labelled_set`` (which lists image files)
points to ``cifar10.export_class_folders`` for the tasks that need files.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from .sources import image_extensions, images_in_folder

log = logging.getLogger(__name__)

# How many problems a single DatasetError spells out; the rest are counted.
MAX_PROBLEMS_SHOWN = 5

_INTEGER = re.compile(r"[+-]?[0-9]+")

# ``cifar10:PATH``: a CIFAR-10 tarball, folder or batch file in its authors' layouts.
CIFAR10_PREFIX = "cifar10:"


def cifar10_path(dataset) -> Path | None:
    """The PATH of a ``cifar10:PATH`` dataset argument, or None for any other form."""
    if isinstance(dataset, str) and dataset.startswith(CIFAR10_PREFIX):
        path = dataset[len(CIFAR10_PREFIX):]
        if not path:
            raise DatasetError("cifar10: needs a path, e.g. cifar10:cifar-10-binary.tar.gz")
        return Path(path)
    return None


@dataclass
class LabelledSet:
    """Images with their label indices, the class names, and where each item was read."""

    items: list[tuple[str, int]]        # (image path, label index)
    classes: list[str]                  # name of each label index
    source: str                         # the mapping file or root folder read
    lines: list[int | None] = field(default_factory=list)  # mapping-file line of each item

    def __post_init__(self) -> None:
        if not self.lines:
            self.lines = [None] * len(self.items)
        if len(self.lines) != len(self.items):
            raise ValueError(f"{len(self.lines)} line numbers for {len(self.items)} items")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.items]

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self, index: int) -> str:
        """Where item ``index`` came from, for messages: ``map.txt line 7`` or its image path."""
        line = self.lines[index]
        if line is None:
            return self.items[index][0]
        return f"{self.source} line {line}"


def read_labelled_set(path: str | os.PathLike, classes_file: str | os.PathLike | None = None,
                      classes: list[str] | None = None,
                      num_classes: int | None = None) -> LabelledSet:
    """A folder is read as class folders, a file as a mapping file.

    ``classes`` (names) or ``classes_file`` (one name per line) give the class names and, for
    folders, map folder names to indices; ``num_classes`` bounds the labels of a mapping file
    and must equal the class count when names are given too.
    """
    if classes is not None and classes_file is not None:
        raise DatasetError("give the class names as a list or as a classes file, not both")
    if cifar10_path(path) is not None:
        raise DatasetError(f"{path}: CIFAR-10's own files are read by evaluate; for a set of "
                           f"image files, write them out once as class folders with "
                           f"imagezoo.data.cifar10.export_class_folders(read_cifar10(PATH), "
                           f"FOLDER)")
    path = Path(path)
    if path.is_dir():
        if classes_file is not None:
            classes = read_classes_file(classes_file)
        labelled = read_class_folders(path, classes)
        if num_classes is not None and labelled.num_classes != num_classes:
            raise DatasetError(f"{path}: {labelled.num_classes} classes, but {num_classes} are "
                               f"expected")
        return labelled
    if path.is_file():
        return read_mapping_file(path, classes_file, num_classes, classes=classes)
    raise DatasetError(f"{path}: no such mapping file or folder")


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (line i names label i); the first token of each line."""
    path = Path(path)
    lines = _read_lines(path, "classes file")
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            raise DatasetError(f"{path} line {number}: blank line in a classes file (line i "
                               f"names class i, so a blank line would shift every later class)")
        names.append(tokens[0])
    if not names:
        raise DatasetError(f"{path}: the classes file names no classes")
    return names


def read_mapping_file(path: str | os.PathLike, classes_file: str | os.PathLike | None = None,
                      num_classes: int | None = None,
                      classes: list[str] | None = None) -> LabelledSet:
    """Read and check a CNTK-style mapping file (see the module docstring).

    Labels must lie in ``0 .. num_classes - 1``, where the class count comes from
    ``num_classes``, the classes file or the ``classes`` list (which must agree when several
    are given). Without any of them the classes are ``"0" .. "<largest label>"``. Every line
    is checked before anything is returned; a ``DatasetError`` names the file and line of the
    first problems (wrong column count, a label that is not an integer, negative or out of
    range, an image that does not exist) or says that the file lists no images.
    """
    path = Path(path)
    if classes is not None and classes_file is not None:
        raise DatasetError("give the class names as a list or as a classes file, not both")
    if classes_file is not None:
        classes = read_classes_file(classes_file)
        names_from = f"classes file {classes_file}"
    else:
        names_from = "the class list"
    if classes is not None:
        if num_classes is not None and len(classes) != num_classes:
            raise DatasetError(f"{names_from} has {len(classes)} names, but {num_classes} "
                               f"classes are expected")
        num_classes = len(classes)

    items: list[tuple[str, int]] = []
    numbers: list[int] = []
    problems: list[str] = []
    for number, line in enumerate(_read_lines(path, "mapping file"), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path} line {number}"
        try:
            entry, label = _parse_mapping_line(line, num_classes)
        except ValueError as problem:
            problems.append(f"{where}: {problem}")
            continue
        image = entry if Path(entry).is_absolute() else str(path.parent / entry)
        if not Path(image).is_file():
            problems.append(f"{where}: image {entry} not found"
                            + ("" if image == entry else f" ({image})"))
            continue
        items.append((image, label))
        numbers.append(number)

    if problems:
        raise DatasetError(_summarise(problems))
    if not items:
        raise DatasetError(f"{path}: the mapping file lists no images")
    if classes is None:
        count = num_classes if num_classes is not None else max(label for _, label in items) + 1
        classes = [str(index) for index in range(count)]
    return LabelledSet(items, list(classes), str(path), numbers)


def class_folder_names(folder: str | os.PathLike) -> list[str]:
    """The class subfolders of ``folder``, sorted by name (hidden folders are not classes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    try:
        return sorted(entry.name for entry in folder.iterdir()
                      if entry.is_dir() and not entry.name.startswith("."))
    except OSError as error:
        raise DatasetError(f"{folder}: cannot list the folder ({error.strerror})") from None


def read_class_folders(folder: str | os.PathLike, classes: list[str] | None = None) -> LabelledSet:
    """Read one-subfolder-per-class images (see the module docstring).

    Without ``classes``, the sorted folder names are the classes, as in torchvision's
    ``ImageFolder``. With ``classes`` (e.g. read from a classes file or a model's labels) each
    folder's label is the index of its name in that list, and the set's classes are that
    whole list; a folder name missing from it, or found at two indices, is a ``DatasetError``.
    """
    folder = Path(folder)
    names = class_folder_names(folder)
    if not names:
        loose = _images_directly_in(folder)
        hint = (f" ({loose} images lie directly in it; put each class's images in a subfolder "
                f"named after the class)") if loose else ""
        raise DatasetError(f"{folder}: no class subfolders{hint}")
    if classes is None:
        classes = names
        index_of = {name: index for index, name in enumerate(names)}
    else:
        classes = list(classes)
        index_of = _folder_indices(folder, names, classes)

    loose = _images_directly_in(folder)
    if loose:
        log.warning("%s: ignoring %d image(s) that are not in a class subfolder", folder, loose)
    items: list[tuple[str, int]] = []
    for name in names:
        images = images_in_folder(folder / name)
        if not images:
            log.warning("%s: class folder %r holds no images", folder, name)
        items.extend((image, index_of[name]) for image in images)
    if not items:
        raise DatasetError(f"{folder}: no images in its class folders "
                           f"({', '.join(names[:MAX_PROBLEMS_SHOWN])}"
                           f"{', …' if len(names) > MAX_PROBLEMS_SHOWN else ''}); image files "
                           f"end in .jpg, .png, .webp, .tif, … (the {len(image_extensions())} "
                           f"extensions Pillow decodes here)")
    return LabelledSet(items, classes, str(folder), [None] * len(items))


def check_trainable(labelled_set: LabelledSet) -> None:
    """Raise ``DatasetError`` unless the set has images of at least two classes."""
    present = sorted(set(labelled_set.labels))
    if len(present) < 2:
        names = [labelled_set.classes[label] if label < labelled_set.num_classes else str(label)
                 for label in present]
        what = f"only class {names[0]!r}" if names else "no images"
        raise DatasetError(f"{labelled_set.source}: {what}; training a classifier needs images "
                           f"of at least two classes")


def _parse_mapping_line(line: str, num_classes: int | None) -> tuple[str, int]:
    """``path<TAB>label`` (or ``key<TAB>path<TAB>label``, or ``path label``) -> (path, label)."""
    if "\t" in line:
        # Empty columns (two tabs in a row, a trailing tab) are dropped: a path is never empty.
        columns = [column.strip() for column in line.split("\t") if column.strip()]
        if len(columns) == 3:
            columns = columns[1:]      # CNTK's sequence key: not needed to read the set
        if len(columns) != 2:
            raise ValueError(f"expected 2 tab-separated columns (path, label), found "
                             f"{len(columns)}")
    else:
        columns = line.split()
        if len(columns) != 2:
            raise ValueError(f"expected 2 columns (path, label), found {len(columns)}"
                             + ("; separate them with a tab when the path holds spaces"
                                if len(columns) > 2 else ""))
    entry, text = columns
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"label {text!r} is not an integer class index")
    label = int(text)
    if label < 0:
        raise ValueError(f"label {label} is negative")
    if num_classes is not None and label >= num_classes:
        raise ValueError(f"label {label} is out of range (0..{num_classes - 1} for "
                         f"{num_classes} classes)")
    return entry, label


def _folder_indices(folder: Path, names: list[str], classes: list[str]) -> dict[str, int]:
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(classes):
        positions.setdefault(name, []).append(index)
    unknown = [name for name in names if name not in positions]
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:MAX_PROBLEMS_SHOWN])
        more = f" and {len(unknown) - MAX_PROBLEMS_SHOWN} more" if len(unknown) > MAX_PROBLEMS_SHOWN else ""
        raise DatasetError(f"{folder}: class folder(s) {shown}{more} not among the "
                           f"{len(classes)} class names given")
    ambiguous = [name for name in names if len(positions[name]) > 1]
    if ambiguous:
        name = ambiguous[0]
        raise DatasetError(f"{folder}: class folder {name!r} matches classes "
                           f"{', '.join(map(str, positions[name]))}; class names must be unique")
    return {name: positions[name][0] for name in names}


def _images_directly_in(folder: Path) -> int:
    return sum(1 for entry in folder.iterdir()
               if entry.is_file() and entry.suffix.lower() in image_extensions())


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise DatasetError(f"{path} line {line}: not UTF-8 text") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the {what} ({error.strerror})") from None
    # Split on newlines only: str.splitlines() would also split on form feeds and other
    # separators, and the line numbers would then disagree with the user's editor.
    return [line.removesuffix("\r") for line in text.split("\n")]


def _summarise(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    if len(problems) > MAX_PROBLEMS_SHOWN:
        shown += f"; … and {len(problems) - MAX_PROBLEMS_SHOWN} more problem(s)"
    return shown
