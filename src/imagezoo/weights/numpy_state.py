"""PyTorch weight files read into NumPy arrays, without importing PyTorch.

``read_arrays(path)`` gives what ``torch_state.read_state_dict`` gives, as NumPy arrays: the
same tensors, unwrapped and renamed the same way, floating point cast to float32. It lets a
command that runs a model in ONNX Runtime (``engine/light.py``) fill a graph with the weights
of a ``.pth`` file without paying for importing PyTorch (about 0.6 s here).

What ``torch.save`` writes (``torch/serialization.py``), and how it is read here:

* the zip archive (the default since PyTorch 1.6): ``<name>/data.pkl`` holds the object,
  ``<name>/data/<key>`` the raw bytes of each storage, ``<name>/byteorder`` their byte order
  (``little`` when absent, as in the oldest zip files). Each storage is named in the pickle by a
  persistent id ``('storage', <storage class>, key, location, numel)``;
* the legacy stream (``_use_new_zipfile_serialization=False``, and every file before 1.6):
  five pickles in a row (the magic number ``0x1950a86a20f9469cfc6c``, the protocol version
  1001, ``sys_info``, the object, the sorted storage keys), then each storage in the order of
  those keys as an 8-byte little-endian element count and its raw bytes, little-endian
  (``THPStorage_writeFileRaw`` swaps on big-endian machines). Persistent ids are
  ``('storage', <storage class>, root key, location, numel, view)`` with ``view`` None or
  ``(view key, offset, numel)``;
* a tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
  backward_hooks[, metadata])`` (older files: ``_rebuild_tensor``; a storage of another dtype:
  ``_rebuild_tensor_v3``; an ``nn.Parameter``: ``_rebuild_parameter`` around one), its
  elements ``storage[offset + sum(i_k * stride_k)]``.

The pickles are read by an unpickler whose allow-list mirrors ``torch.load(weights_only=True)``
for state dicts: ``collections.OrderedDict``, the tensor rebuild functions above, the storage
classes (``torch.FloatStorage`` ... and ``torch.UntypedStorage``) and the ``torch.<dtype>``
names. Any other global is refused (a ``WeightsError`` naming it) before anything is called,
so a file that asks to run code never runs it. ``.safetensors`` files are read by the
safetensors library (its byte-level parser), dtype by dtype.

What a file is and how its state dict is unwrapped and named are ``state_files.py``'s,
shared with ``torch_state``, so that both readers name tensors the same way.
"""
from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import WeightsError
from .state_files import (  # noqa: F401 (re-exported: the reader's callers ask it)
    LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, OPTIONAL_SUFFIXES, SAFETENSORS_SUFFIX,
    ZIP_LOCAL_HEADER, existing_weight_file, is_torchscript_file, looks_like_safetensors,
    looks_like_torch_file, publisher_names, state_dict_kind, state_dict_of,
)


def read_arrays(path: str | Path, data: bytes | None = None) -> dict[str, np.ndarray]:
    """The tensors of a ``.pth``/``.pt``/``.th`` (zip or legacy) or ``.safetensors`` file as
    contiguous NumPy arrays, unwrapped and renamed as ``torch_state.read_state_dict`` does,
    floating point in float32. Raises ``WeightsError`` for anything else, for a damaged file
    and for a pickle that names anything but tensors. ``data``: the file's bytes, when the
    caller has read them already (to hash them, say)."""
    path = existing_weight_file(path)
    if path.suffix == SAFETENSORS_SUFFIX or looks_like_safetensors(path):
        arrays = _read_safetensors(path, data)
    elif is_torchscript_file(path):
        raise WeightsError(f"{path}: a TorchScript program (torch.jit.save), not a state dict")
    elif looks_like_torch_file(path):
        arrays = _read_torch_file(path, data)
    else:
        raise WeightsError(f"{path}: neither a PyTorch (.pth) nor a safetensors file")
    return {name: _as_float32(array) for name, array in arrays.items()}


def _as_float32(array: np.ndarray) -> np.ndarray:
    # read_state_dict casts every floating dtype but float32 (half, bfloat16, double).
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array


# safetensors dtype -> (NumPy dtype of the stored elements, whether they are bfloat16 bits)
_SAFETENSORS_DTYPES = {
    "F64": ("<f8", False), "F32": ("<f4", False), "F16": ("<f2", False), "BF16": ("<u2", True),
    "I64": ("<i8", False), "U64": ("<u8", False), "I32": ("<i4", False), "U32": ("<u4", False),
    "I16": ("<i2", False), "U16": ("<u2", False), "I8": ("i1", False), "U8": ("u1", False),
    "BOOL": ("?", False), "C64": ("<c8", False),
}


def _read_safetensors(path: Path, data: bytes | None = None) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, deserialize
    try:
        entries = deserialize(path.read_bytes() if data is None else data)
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path}: not a valid safetensors file ({error})") from None
    arrays = {}
    for name, entry in entries:
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise WeightsError(f"{path}: tensor {name} has dtype {entry['dtype']}, which "
                               f"imagezoo does not read")
        dtype, bf16 = _SAFETENSORS_DTYPES[entry["dtype"]]
        array = np.frombuffer(entry["data"], dtype=dtype).reshape(entry["shape"])
        arrays[name] = _bfloat16_to_float32(array) if bf16 else array.copy()
    return arrays


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the upper half of a float32: widen the bits, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# PyTorch storage class -> the NumPy dtype of its elements (little-endian), or "bfloat16".
STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "i8", "IntStorage": "i4",
    "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "ComplexFloatStorage": "c8", "ComplexDoubleStorage": "c16", "UntypedStorage": "u1",
}
# torch.<dtype> names a pickle may mention (``_rebuild_tensor_v3``'s dtype argument).
TORCH_DTYPES = {
    "float32": "f4", "float": "f4", "float64": "f8", "double": "f8", "float16": "f2",
    "half": "f2", "bfloat16": "bfloat16", "int64": "i8", "long": "i8", "int32": "i4",
    "int": "i4", "int16": "i2", "short": "i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "complex64": "c8", "cfloat": "c8", "complex128": "c16", "cdouble": "c16",
}


class _StorageType:
    """A storage class (``torch.FloatStorage``) or dtype (``torch.float16``) named in a pickle:
    plain data, never called."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype

    def __setstate__(self, state):   # BUILD could otherwise rewrite the dtype
        raise pickle.UnpicklingError("state set on a storage class or dtype")


class _Storage:
    """A storage's bytes (filled in when the file's layout gives them) and element dtype."""

    __slots__ = ("dtype", "numel", "data")

    def __init__(self, dtype: str, numel: int, data: memoryview | None = None):
        self.dtype, self.numel, self.data = dtype, numel, data

    def __setstate__(self, state):
        raise pickle.UnpicklingError("state set on a storage")


class _TensorRef:
    """A tensor to be built once every storage is read: storage, offset, size, stride."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype=None):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("a tensor whose storage is not a storage")
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.dtype = dtype or storage.dtype

    def __setstate__(self, state):
        raise pickle.UnpicklingError("state set on a tensor")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _StorageType) or dtype.name not in TORCH_DTYPES:
        raise pickle.UnpicklingError("a tensor whose dtype is not a torch dtype")
    return _TensorRef(storage, storage_offset, size, stride, TORCH_DTYPES[dtype.name])


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("a parameter that wraps no tensor")
    return data


def _encode(text, encoding="latin1"):
    # How protocol 2 pickles bytes under Python 3: _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode other than of a str to latin1")
    return text.encode("latin1")


class _Allowed:
    """An allowed function as the pickle sees it: callable, but with no state of its own for a
    BUILD opcode to change (the function itself would take new ``__defaults__``)."""

    __slots__ = ("function",)

    def __init__(self, function: Callable):
        self.function = function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("state set on a function")


_REBUILDERS = {
    "_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3, "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class _StateDictUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a state dict needs (see the module
    docstring) and turns storage ids into ``_Storage`` objects via ``storage_for``."""

    def __init__(self, file, storage_for: Callable[[tuple], _Storage]):
        super().__init__(file, encoding="utf-8")
        self._storage_for = storage_for

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in _REBUILDERS:
            return _Allowed(_REBUILDERS[name])
        if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return _StorageType(name, TORCH_DTYPES[name])
        if module == "_codecs" and name == "encode":
            return _Allowed(_encode)
        raise RefusedGlobal(f"global {module}.{name}")

    def persistent_load(self, pid):
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        if kind not in ("storage", b"storage"):
            # ("module", class, source file, source): a pickled nn.Module, i.e. code
            raise RefusedGlobal(f"persistent id {kind!r}")
        return self._storage_for(pid[1:])


def _storage_type(value) -> str:
    if not isinstance(value, _StorageType) or value.name not in STORAGE_DTYPES:
        raise pickle.UnpicklingError("a storage whose class is not a storage class")
    return STORAGE_DTYPES[value.name]   # by name: the object's own fields are not trusted


def _read_torch_file(path: Path, data: bytes | None = None) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes() if data is None else data
    except OSError as error:
        raise WeightsError(f"{path}: cannot read ({error})") from None
    try:
        if data.startswith(ZIP_LOCAL_HEADER):
            loaded, byteorder = _load_zip(data, path)
        else:
            loaded, byteorder = _load_legacy(data, path), "little"
        tensors = state_dict_of(loaded, path, lambda value: isinstance(value, _TensorRef))
        return {name: _materialize(ref, byteorder) for name, ref in tensors.items()}
    except RefusedGlobal as error:
        raise WeightsError(f"{path}: refused to load: the file holds pickled code or objects "
                           f"other than tensors, which imagezoo never runs ({error})") from None
    except WeightsError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged file raises many kinds
        raise WeightsError(f"{path}: truncated or damaged PyTorch file "
                           f"({type(error).__name__}: {_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_zip(data: bytes, path: Path):
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise WeightsError(f"{path}: truncated or damaged PyTorch file (a zip archive without "
                           f"its central directory, cut short)") from None
    names = archive.namelist()
    if len(set(names)) != len(names):   # zipfile reads the last copy, PyTorch may read the first
        raise WeightsError(f"{path}: a zip archive that names a record twice")

    def record(name: str, size: int | None = None) -> bytes:
        """A record as torch.save writes it: stored, not compressed (a compressed one could
        inflate without bound); at most ``size`` bytes of it."""
        info = archive.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            raise WeightsError(f"{path}: record {name} is compressed; torch.save stores them")
        with archive.open(info) as handle:
            return handle.read(size if size is not None else info.file_size)
    pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise WeightsError(f"{path}: a zip archive without the data.pkl of torch.save")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
        byteorder = record(f"{prefix}byteorder", 16).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise WeightsError(f"{path}: unknown byte order {byteorder!r}")
    storages: dict[str, _Storage] = {}

    def storage_for(fields: tuple) -> _Storage:
        storage_class, key, _location, numel = fields[:4]
        key = str(key)
        if key not in storages:
            dtype = _storage_type(storage_class)
            if not isinstance(numel, int) or numel < 0:
                raise WeightsError(f"{path}: storage {key} has an invalid size")
            nbytes = numel * _itemsize(dtype)
            raw = record(f"{prefix}data/{key}", nbytes)
            if len(raw) < nbytes:
                raise WeightsError(f"{path}: storage {key} holds {len(raw)} bytes, "
                                   f"{nbytes} expected")
            storages[key] = _Storage(dtype, int(numel), memoryview(raw)[:nbytes])
        return storages[key]

    loaded = _StateDictUnpickler(io.BytesIO(record(pickles[0])), storage_for).load()
    return loaded, byteorder


def _load_legacy(data: bytes, path: Path):
    stream = io.BytesIO(data)

    def no_storage(fields):
        raise pickle.UnpicklingError("a storage outside the object")

    if _StateDictUnpickler(stream, no_storage).load() != LEGACY_MAGIC_NUMBER:
        raise WeightsError(f"{path}: not a torch.save file (wrong magic number)")
    if _StateDictUnpickler(stream, no_storage).load() != LEGACY_PROTOCOL_VERSION:
        raise WeightsError(f"{path}: an unknown torch.save protocol version")
    _StateDictUnpickler(stream, no_storage).load()  # sys_info: storages are little-endian anyway
    roots: dict[str, _Storage] = {}

    def storage_for(fields: tuple) -> _Storage:
        storage_class, root_key, _location, numel, view = fields[:5]
        root_key = str(root_key)
        dtype = _storage_type(storage_class)
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("a storage with an invalid size")
        if root_key not in roots:
            roots[root_key] = _Storage(dtype, int(numel))
        if view is None:
            return roots[root_key]
        _view_key, offset, view_numel = view
        return _ViewStorage(roots[root_key], int(offset), int(view_numel))

    loaded = _StateDictUnpickler(stream, storage_for).load()
    keys = _StateDictUnpickler(stream, no_storage).load()
    if not isinstance(keys, list):
        raise WeightsError(f"{path}: the storage keys of a legacy torch.save file are missing")
    view = memoryview(data)
    position = stream.tell()
    for key in keys:
        storage = roots.get(str(key))
        if storage is None:
            raise WeightsError(f"{path}: storage {key} is listed but never used")
        if position + 8 > len(data):
            raise WeightsError(f"{path}: truncated: storage {key} is missing")
        (numel,) = struct.unpack_from("<q", data, position)
        nbytes = numel * _itemsize(storage.dtype)
        if numel < 0 or numel != storage.numel or position + 8 + nbytes > len(data):
            raise WeightsError(f"{path}: truncated or damaged: storage {key} should hold "
                               f"{storage.numel} elements")
        storage.data = view[position + 8:position + 8 + nbytes]
        position += 8 + nbytes
    return loaded


class _ViewStorage(_Storage):
    """A slice of a legacy root storage (``view_metadata``), resolved once the root is read."""

    __slots__ = ("root", "start")

    def __init__(self, root: _Storage, start: int, numel: int):
        super().__init__(root.dtype, numel)
        self.root, self.start = root, start

    def resolved(self) -> memoryview:
        size = _itemsize(self.dtype)
        if self.root.data is None or self.start < 0 or self.start + self.numel > self.root.numel:
            raise WeightsError("a storage view outside its storage")
        return self.root.data[self.start * size:(self.start + self.numel) * size]


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _materialize(ref: _TensorRef, byteorder: str) -> np.ndarray:
    """The tensor's elements as a contiguous array, after checking that every element it
    addresses lies inside its storage (a hostile file could point anywhere)."""
    storage = ref.storage
    data = storage.resolved() if isinstance(storage, _ViewStorage) else storage.data
    if data is None:
        raise WeightsError("a tensor whose storage was never written")
    dtype = ref.dtype
    bfloat16 = dtype == "bfloat16"
    element = np.dtype("u2" if bfloat16 else dtype).newbyteorder("<" if byteorder == "little" else ">")
    if not (isinstance(ref.offset, int) and len(ref.size) == len(ref.stride)
            and all(isinstance(v, int) and v >= 0 for v in (*ref.size, *ref.stride))
            and ref.offset >= 0):
        raise WeightsError("a tensor with an invalid offset, size or stride")
    count = len(data) // element.itemsize
    if math.prod(ref.size) > count:
        # Only a broadcast view (stride 0) addresses more elements than its storage holds; a
        # state dict has none, and a small file must not make a huge array.
        raise WeightsError("a tensor with more elements than its storage")
    if 0 in ref.size:
        array = np.zeros(ref.size, dtype=element)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= count:
            raise WeightsError("a tensor that reaches past the end of its storage")
        flat = np.frombuffer(data, dtype=element, count=count)[ref.offset:]
        if ref.size:
            array = np.lib.stride_tricks.as_strided(
                flat, shape=ref.size, strides=tuple(s * element.itemsize for s in ref.stride),
                writeable=False)
        else:  # a 0-d tensor (as_strided reads an empty shape as "keep the array's own")
            array = flat[:1].reshape(())
    array = np.array(array, dtype=element.newbyteorder("="), order="C", copy=True)
    return _bfloat16_to_float32(array) if bfloat16 else array


__all__ = ["OPTIONAL_SUFFIXES", "SAFETENSORS_SUFFIX", "is_torchscript_file",
           "looks_like_safetensors", "looks_like_torch_file", "publisher_names", "read_arrays",
           "state_dict_kind", "state_dict_of"]
