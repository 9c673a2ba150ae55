"""Writing features to files: one record per image (its input, then one array per layer).

Formats, chosen by ``--format`` or the file's extension:

* ``npz`` (``.npz``): ``inputs`` (the images of the rows), one array per layer (rows in the
  same order), ``failed_inputs`` and ``failed_errors``. Held in memory, written at the end.
* ``safetensors`` (``.safetensors``): one tensor per layer; the metadata holds ``inputs`` and
  ``failed`` as JSON. Held in memory, written at the end.
* ``hdf5`` (``.h5``, ``.hdf5``): ``/features/<layer>`` datasets, ``/inputs``, and
  ``/failed/inputs`` + ``/failed/errors``; every batch is appended to resizable chunked
  datasets as it arrives, so memory stays flat for any number of images.
* ``text`` (``.txt``): PaddlePaddle's feature layout, as its ``load_feature_c`` reads it: one
  line per image, the layers separated by ``;``, the values of a layer by spaces. The line
  carries no name, so ``FILE.index.tsv`` beside it lists each line's input, then every failed
  input with its error. Streamed like HDF5.

Every format is written to a temporary file in the same folder and renamed when complete, so
an interrupted run never leaves a file that looks finished.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ImagezooError
from ..fileio import atomic_path

FORMATS = {".npz": "npz", ".safetensors": "safetensors", ".h5": "hdf5", ".hdf5": "hdf5",
           ".txt": "text"}


def format_for(path: str | os.PathLike, requested: str | None = None) -> str:
    if requested:
        return requested
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ImagezooError(f"cannot tell the feature file format from {Path(path).name!r}; use "
                         f"an extension ({', '.join(FORMATS)}) or --format")
    return FORMATS[suffix]


class FeatureWriter:
    """Collects (inputs, features) batches and failures; ``close()`` makes the file appear."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self.failures: list[tuple[str, str]] = []
        self._atomic = atomic_path(self.path)
        self.temporary = self._atomic.__enter__()

    def add(self, inputs: list[str], features: dict[str, torch.Tensor]) -> None:
        if inputs:
            self._add({name: value.numpy() for name, value in features.items()}, inputs)
            self.count += len(inputs)

    def fail(self, source: str, error: str) -> None:
        self.failures.append((source, error))

    def close(self) -> None:
        self._finish()
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _add(self, arrays: dict[str, np.ndarray], inputs: list[str]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError


class InMemoryWriter(FeatureWriter):
    """npz and safetensors: small sets, gathered and written in one go."""

    def __init__(self, path, kind: str):
        super().__init__(path)
        self.kind = kind
        self.inputs: list[str] = []
        self.chunks: dict[str, list[np.ndarray]] = {}

    def _add(self, arrays, inputs):
        self.inputs.extend(inputs)
        for name, array in arrays.items():
            self.chunks.setdefault(name, []).append(array)

    def _finish(self):
        arrays = {name: np.concatenate(parts) for name, parts in self.chunks.items()}
        if self.kind == "npz":
            with open(self.temporary, "wb") as handle:
                np.savez(handle, inputs=np.array(self.inputs, dtype=str), **arrays,
                         failed_inputs=np.array([s for s, _ in self.failures], dtype=str),
                         failed_errors=np.array([e for _, e in self.failures], dtype=str))
        else:
            from safetensors.numpy import save_file
            metadata = {"inputs": json.dumps(self.inputs),
                        "failed": json.dumps([list(f) for f in self.failures])}
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                      str(self.temporary), metadata=metadata)


class Hdf5Writer(FeatureWriter):
    """Appends every batch to resizable datasets: memory holds one batch at a time."""

    def __init__(self, path):
        super().__init__(path)
        import h5py
        self.file = h5py.File(self.temporary, "w")
        self.string = h5py.string_dtype("utf-8")
        self.inputs = self.file.create_dataset("inputs", (0,), maxshape=(None,), dtype=self.string,
                                               chunks=(1024,))
        self.group = self.file.create_group("features")

    def _add(self, arrays, inputs):
        start, stop = self.count, self.count + len(inputs)
        for name, array in arrays.items():
            if name not in self.group:
                self.group.create_dataset(name, (0, *array.shape[1:]), dtype=array.dtype,
                                          maxshape=(None, *array.shape[1:]),
                                          chunks=(max(1, len(inputs)), *array.shape[1:]))
            dataset = self.group[name]
            dataset.resize(stop, axis=0)
            dataset[start:stop] = array
        self.inputs.resize(stop, axis=0)
        self.inputs[start:stop] = inputs
        self.file.flush()

    def _finish(self):
        failed = self.file.create_group("failed")
        failed.create_dataset("inputs", data=[s for s, _ in self.failures], dtype=self.string)
        failed.create_dataset("errors", data=[e for _, e in self.failures], dtype=self.string)
        self.file.close()

    def abort(self):
        self.file.close()
        super().abort()


class TextWriter(FeatureWriter):
    """PaddlePaddle's text layout, streamed; inputs and failures go to ``FILE.index.tsv``."""

    def __init__(self, path):
        super().__init__(path)
        self.handle = open(self.temporary, "w", encoding="utf-8")
        self.index_path = self.path.with_name(self.path.name + ".index.tsv")
        self._index_atomic = atomic_path(self.index_path)
        self.index = open(self._index_atomic.__enter__(), "w", encoding="utf-8")

    def _add(self, arrays, inputs):
        for row, source in enumerate(inputs):
            slots = [" ".join(f"{v:.9g}" for v in arrays[name][row].ravel()) for name in arrays]
            self.handle.write(";".join(slots) + "\n")
            self.index.write(f"{source}\tok\n")

    def _finish(self):
        for source, error in self.failures:
            self.index.write(f"{source}\terror: {error}\n")
        self.handle.close()
        self.index.close()
        self._index_atomic.__exit__(None, None, None)

    def abort(self):
        self.handle.close()
        self.index.close()
        self._index_atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
        super().abort()


def open_writer(path: str | os.PathLike, kind: str | None = None) -> FeatureWriter:
    kind = format_for(path, kind)
    if kind in ("npz", "safetensors"):
        return InMemoryWriter(path, kind)
    if kind == "hdf5":
        return Hdf5Writer(path)
    if kind == "text":
        return TextWriter(path)
    raise ValueError(f"unknown feature file format {kind!r}")
