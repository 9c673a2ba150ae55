"""CIFAR-10 in the layouts its authors distribute (Krizhevsky 2009, www.cs.toronto.edu/~kriz/cifar.html).

``read_cifar10(path, split="test") -> Cifar10Set`` reads the images and labels into memory
(10,000 test images are 30 MB); ``evaluate("cifar10:PATH")`` runs on them. ``path`` is any of

* ``cifar-10-binary.tar.gz`` or its unpacked folder ``cifar-10-batches-bin/`` (or the folder
  holding it): ``test_batch.bin`` and ``data_batch_1.bin`` .. ``data_batch_5.bin``, each a run
  of 3073-byte records: one label byte (0-9), then the 32x32 image channel-major, 1024 red,
  1024 green and 1024 blue bytes, each plane row by row; ``batches.meta.txt`` names the
  classes, one per line;
* ``cifar-10-python.tar.gz`` or its folder ``cifar-10-batches-py/``: ``test_batch`` and
  ``data_batch_1`` .. ``data_batch_5``, each a pickled dict (written by Python 2) with
  ``data``, a 10000 x 3072 uint8 array in the same channel-major order, ``labels``, a list of
  ints, ``filenames`` and ``batch_label``; ``batches.meta`` holds ``label_names``;
* one batch file of either kind (``test_batch.bin``, ``test_batch``).

A tarball is read in place (members looked up by file name, never extracted). When both
layouts are present the binary one is read.

Pickles are read without running code: ``BatchUnpickler`` admits only what a batch holds
(ints, strings, bytes, lists, dicts, and numeric NumPy arrays rebuilt by
``numpy.core.multiarray._reconstruct`` or, in protocol 5, ``numpy.core.numeric._frombuffer``
with a ``numpy.dtype``, and ``_codecs.encode(text, 'latin1')``, which Python 3 writes for
bytes in protocol 2) and refuses any other global
before anything is called: a batch that names ``os.system`` or a class of its own is a
``DatasetError``, its code never run.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DatasetError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
SIDE = 32
PIXELS = 3 * SIDE * SIDE               # 3072 bytes of a channel-major image
RECORD = 1 + PIXELS                    # a binary record: the label byte, then the image
SPLITS = ("test", "train")
BINARY_BATCHES = {"test": ("test_batch.bin",),
                  "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6))}
PYTHON_BATCHES = {"test": ("test_batch",),
                  "train": tuple(f"data_batch_{i}" for i in range(1, 6))}
BINARY_META, PYTHON_META = "batches.meta.txt", "batches.meta"
# A member or file larger than this is not a CIFAR batch (one is 30 MB): refuse it before
# reading it into memory.
MAX_BATCH_BYTES = 256 << 20


@dataclass
class Cifar10Set:
    """Images (N x 32 x 32 x 3 uint8, RGB, row-major as PIL expects) with their labels."""

    images: np.ndarray
    labels: np.ndarray                  # N label indices (int64) into ``classes``
    classes: list[str]
    source: str                         # what was read: "cifar-10-binary.tar.gz: test_batch.bin"
    layout: str                         # "binary" or "python"

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        """Where image ``index`` came from, for messages."""
        return f"{self.source} image {index}"


def read_cifar10(path: str | os.PathLike, split: str = "test") -> Cifar10Set:
    """The ``split`` (``"test"``: 10,000 images; ``"train"``: 50,000) of a CIFAR-10 copy in
    either of its authors' layouts (see the module docstring). Raises ``DatasetError`` for a
    path that holds neither, a damaged file, or a pickle that asks to run anything."""
    if split not in SPLITS:
        raise DatasetError(f"CIFAR-10 split must be one of {', '.join(SPLITS)}, not {split!r}")
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such CIFAR-10 file or folder")
    try:
        if path.is_file() and not tarfile.is_tarfile(path):
            return _read_single_batch(path)
        with _open_container(path) as container:
            return _read_container(container, split)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DatasetError(f"{path}: cannot read the CIFAR-10 files ({error})") from None


def to_records(images: np.ndarray, labels) -> bytes:
    """Images (N x 32 x 32 x 3 uint8) and labels as the binary version's 3073-byte records."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (SIDE, SIDE, 3):
        raise ValueError(f"images must be N x {SIDE} x {SIDE} x 3, not {images.shape}")
    records = np.empty((len(images), RECORD), dtype=np.uint8)
    records[:, 0] = np.asarray(labels, dtype=np.uint8)
    records[:, 1:] = channel_major(images)
    return records.tobytes()


def channel_major(images: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 -> N x 3072: all red values, then green, then blue, each row by row."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), PIXELS)


def from_channel_major(rows: np.ndarray) -> np.ndarray:
    """N x 3072 channel-major rows -> N x 32 x 32 x 3 RGB images."""
    return np.ascontiguousarray(rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


def export_class_folders(dataset: Cifar10Set, folder: str | os.PathLike) -> Path:
    """Write the images as lossless PNGs in one folder per class (``folder/cat/00003.png``),
    the layout ``finetune`` and ``evaluate`` read as class folders. Returns ``folder``."""
    from PIL import Image

    from ..fileio import atomic_path
    folder = Path(folder)
    for index, (pixels, label) in enumerate(zip(dataset.images, dataset.labels)):
        target = folder / dataset.classes[int(label)] / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            Image.fromarray(pixels).save(temporary, format="PNG")
    return folder


# ------------------------------------------------------------------------------------------
# Where the batches are: a folder (and the folder below it) or a tarball's members


class _Container:
    """Batch files by name, from a folder tree or a tarball."""

    def __init__(self, label: str):
        self.label = label
        self.files: dict[str, list] = {}   # file name -> where it is (paths or members)

    def add(self, name: str, where) -> None:
        self.files.setdefault(name, []).append(where)

    def has(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str) -> bytes:
        places = self.files[name]
        if len(places) > 1:
            raise DatasetError(f"{self.label}: holds {len(places)} files named {name} "
                               f"({', '.join(self.where(p) for p in places[:3])}); point to "
                               f"the folder of one of them")
        return self._read(places[0])

    def where(self, place) -> str:
        raise NotImplementedError

    def _read(self, place) -> bytes:
        raise NotImplementedError

    def __enter__(self) -> "_Container":
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Folder(_Container):
    WANTED = {*BINARY_BATCHES["test"], *BINARY_BATCHES["train"], *PYTHON_BATCHES["test"],
              *PYTHON_BATCHES["train"], BINARY_META, PYTHON_META}

    def __init__(self, folder: Path):
        super().__init__(str(folder))
        # The folder itself and the one below it (cifar-10-batches-bin/ inside a download).
        for place in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
            for name in sorted(self.WANTED):
                if (place / name).is_file():
                    self.add(name, place / name)

    def where(self, place: Path) -> str:
        return str(place)

    def _read(self, place: Path) -> bytes:
        return _read_bounded_file(place)


class _Tarball(_Container):
    def __init__(self, path: Path):
        super().__init__(path.name)
        self.tar = tarfile.open(path, "r:*")
        for member in self.tar.getmembers():
            if member.isfile() and PurePosixPath(member.name).name in _Folder.WANTED:
                self.add(PurePosixPath(member.name).name, member)

    def where(self, member: tarfile.TarInfo) -> str:
        return member.name

    def _read(self, member: tarfile.TarInfo) -> bytes:
        if member.size > MAX_BATCH_BYTES:
            raise DatasetError(f"{self.label}: {member.name} is {member.size} bytes, too large "
                               f"for a CIFAR-10 batch")
        handle = self.tar.extractfile(member)
        data = handle.read() if handle is not None else b""
        if len(data) != member.size:
            raise DatasetError(f"{self.label}: {member.name} is cut short")
        return data

    def __exit__(self, *exc) -> None:
        self.tar.close()


def _open_container(path: Path) -> _Container:
    return _Folder(path) if path.is_dir() else _Tarball(path)


def _read_container(container: _Container, split: str) -> Cifar10Set:
    if all(container.has(name) for name in BINARY_BATCHES[split]):
        classes = (_binary_classes(container.read(BINARY_META), container.label)
                   if container.has(BINARY_META) else list(CIFAR10_CLASSES))
        parts = [_parse_binary(container.read(name), f"{container.label}: {name}", classes)
                 for name in BINARY_BATCHES[split]]
        layout, names = "binary", BINARY_BATCHES[split]
    elif all(container.has(name) for name in PYTHON_BATCHES[split]):
        classes = (_python_classes(container.read(PYTHON_META), container.label)
                   if container.has(PYTHON_META) else list(CIFAR10_CLASSES))
        parts = [_parse_python(container.read(name), f"{container.label}: {name}", classes)
                 for name in PYTHON_BATCHES[split]]
        layout, names = "python", PYTHON_BATCHES[split]
    else:
        wanted = " or ".join(", ".join(batches[split]) for batches in (BINARY_BATCHES, PYTHON_BATCHES))
        raise DatasetError(f"{container.label}: no CIFAR-10 {split} batches in it (looked for "
                           f"{wanted}, as cifar-10-binary.tar.gz and cifar-10-python.tar.gz "
                           f"hold them)")
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    source = f"{container.label}: {names[0]}" if len(names) == 1 else \
        f"{container.label}: {names[0]} .. {names[-1]}"
    return Cifar10Set(images, labels, classes, source, layout)


def _read_single_batch(path: Path) -> Cifar10Set:
    data = _read_bounded_file(path)
    if path.suffix == ".bin":
        meta = path.with_name(BINARY_META)
        classes = (_binary_classes(_read_bounded_file(meta), str(meta)) if meta.is_file()
                   else list(CIFAR10_CLASSES))
        images, labels = _parse_binary(data, str(path), classes)
        return Cifar10Set(images, labels, classes, str(path), "binary")
    meta = path.with_name(PYTHON_META)
    classes = (_python_classes(_read_bounded_file(meta), str(meta)) if meta.is_file()
               else list(CIFAR10_CLASSES))
    images, labels = _parse_python(data, str(path), classes)
    return Cifar10Set(images, labels, classes, str(path), "python")


def _read_bounded_file(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_BATCH_BYTES:
        raise DatasetError(f"{path}: {size} bytes, too large for a CIFAR-10 batch")
    return path.read_bytes()


# ------------------------------------------------------------------------------------------
# The binary version


def _parse_binary(data: bytes, where: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if not data or len(data) % RECORD:
        raise DatasetError(f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte "
                           f"records (1 label byte + {PIXELS} pixel bytes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, where, classes)
    return from_channel_major(records[:, 1:]), labels


def _binary_classes(data: bytes, where: str) -> list[str]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DatasetError(f"{where}: {BINARY_META} is not ASCII text") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        raise DatasetError(f"{where}: {BINARY_META} must name one class per line")
    return names


def _check_labels(labels: np.ndarray, where: str, classes: list[str]) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        bad = int(labels.max() if labels.max() >= len(classes) else labels.min())
        raise DatasetError(f"{where}: label {bad} is out of range for {len(classes)} classes")


# ------------------------------------------------------------------------------------------
# The Python version: pickles read without running code


class _NdarrayType:
    """What ``numpy.ndarray`` unpickles to: a token ``_reconstruct`` accepts, not the class
    (which a pickle could otherwise call with arguments of its choosing)."""


_NDARRAY = _NdarrayType()
_ARRAY_KINDS = "biuf"      # booleans, integers, floats: no objects, strings or records


def _reconstruct(subtype, shape, dtype_code):
    """``numpy.core.multiarray._reconstruct`` for plain ndarrays only: an empty array that
    the pickle's BUILD then fills with its shape, dtype and bytes (``ndarray.__setstate__``)."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("refused to rebuild an array of a subclass")
    del shape, dtype_code  # placeholders: __setstate__ sets the real ones
    return np.empty(0, dtype=np.uint8)


def _dtype(spec, align=False, copy=False):
    """``numpy.dtype`` for plain numeric types only: an object dtype would let an array hold
    anything, so it is refused, as are strings and structured records."""
    del align, copy
    if isinstance(spec, bytes):
        spec = spec.decode("ascii")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refused a dtype built from {type(spec).__name__}")
    try:
        dtype = np.dtype(spec)
    except TypeError as error:
        raise pickle.UnpicklingError(f"refused dtype {spec!r} ({error})") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"refused dtype {spec!r}: a CIFAR batch holds numbers only")
    return dtype


def _frombuffer(buffer, dtype, shape, order):
    """``numpy.core.numeric._frombuffer`` (protocol 5's arrays) for numeric dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
        raise pickle.UnpicklingError("refused an array buffer that is not plain numbers")
    if not isinstance(buffer, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise pickle.UnpicklingError(f"refused an array buffer of {type(buffer).__name__}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text, encoding="utf-8"):
    """``_codecs.encode``, which Python 3's protocol 2 writes for ``bytes``, with latin-1 only."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError("refused _codecs.encode other than text to latin-1 bytes")
    return text.encode("latin-1")


ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,   # pickled by NumPy 2
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,         # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that admits only ``ALLOWED_GLOBALS``: numbers, strings, lists, dicts and
    numeric arrays come back; any other global (a function, a class) is refused by
    ``find_class`` before it can be called. ``encoding="bytes"`` reads Python 2's strings as
    bytes, as the dataset's own loading code does."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="bytes")

    def find_class(self, module: str, name: str):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refused the global {module}.{name}: a CIFAR-10 "
                                         f"batch holds only numbers, strings, lists, dicts and "
                                         f"arrays, so it is not unpickled")
        return allowed

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id: a CIFAR-10 batch has none")


def load_batch_pickle(data: bytes, where: str) -> dict:
    """A batch's dict with ``str`` keys, unpickled by ``BatchUnpickler``."""
    try:
        loaded = BatchUnpickler(data).load()
    except pickle.UnpicklingError as error:
        raise DatasetError(f"{where}: refused to unpickle: {error}") from None
    except Exception as error:  # noqa: BLE001 - a damaged pickle fails in many ways
        raise DatasetError(f"{where}: not a readable CIFAR-10 batch pickle "
                           f"({type(error).__name__}: {error})") from None
    if not isinstance(loaded, dict):
        raise DatasetError(f"{where}: holds a {type(loaded).__name__}, not a CIFAR-10 batch dict")
    return {_text(key): value for key, value in loaded.items()}


def _parse_python(data: bytes, where: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    batch = load_batch_pickle(data, where)
    pixels, labels = batch.get("data"), batch.get("labels")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 \
            or pixels.shape[1] != PIXELS:
        shape = getattr(pixels, "shape", None)
        raise DatasetError(f"{where}: 'data' must be an N x {PIXELS} uint8 array, not "
                           f"{type(pixels).__name__} {shape or ''}".rstrip())
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise DatasetError(f"{where}: 'labels' must be a list of integers")
    if len(labels) != len(pixels):
        raise DatasetError(f"{where}: {len(labels)} labels for {len(pixels)} images")
    labels = np.asarray(labels, dtype=np.int64)
    _check_labels(labels, where, classes)
    return from_channel_major(pixels), labels


def _python_classes(data: bytes, where: str) -> list[str]:
    names = load_batch_pickle(data, where).get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DatasetError(f"{where}: 'label_names' must be a list of class names")
    return [_text(name) for name in names]


def _text(value) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
