"""MATLAB ``.mat`` files (v5 and v7.3) read into plain Python values, for the MatConvNet importer.

Conventions of the two layouts (MATLAB's "MAT-File Format" document; ``scipy.io`` and matio
for v7.3):

* v5: a 128-byte header starting with the text ``MATLAB 5.0 MAT-file``, then one data element
  per variable; ``scipy.io.loadmat`` reads it (and ``scipy.io.whosmat`` lists the variables
  with their MATLAB class without reading the data).
* v7.3 (``save -v7.3``): an HDF5 file behind a 512-byte text header (``MATLAB 7.3 MAT-file``)
  kept as the HDF5 user block. Arrays are stored in MATLAB's column-major order, so h5py
  sees every shape reversed; strings are uint16 ``char`` arrays; cell arrays and the fields of
  a struct array are datasets of object references into ``#refs#``. A struct array is a
  group whose fields are all reference datasets without a ``MATLAB_class`` attribute (matio's
  ``is_struct_matrix`` test; a scalar struct's cell field carries ``MATLAB_class = "cell"``).

Both readers give the same values, with MATLAB's shapes: struct -> dict, struct array ->
list of dicts (one element -> the dict), cell -> list, char -> str (a char matrix -> list of
str), numeric -> ndarray. A variable is named by a dotted path (``"params"``,
``"net.params"``): v7.3 reads only the node asked for; v5 reads the top-level variable and
walks into it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import WeightsError

V5_HEADER = b"MATLAB 5.0 MAT-file"
V73_HEADER = b"MATLAB 7.3 MAT-file"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
V73_USERBLOCK = 512           # MATLAB writes v7.3 files with a 512-byte header userblock
# Bits MATLAB's save -v7.3 stores beside the variables; never variables themselves.
HDF5_PRIVATE_GROUPS = ("#refs#", "#subsystem#")
MAX_NESTING = 32


def matlab_version(path: str | Path) -> str | None:
    """``"v5"``, ``"v7.3"``, or None for a file that is neither."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(V73_USERBLOCK + len(HDF5_SIGNATURE))
    except OSError:
        return None
    # A v7.3 header cut short of its HDF5 body still counts, so h5py reports the truncation.
    if head[V73_USERBLOCK:] == HDF5_SIGNATURE or head.startswith(V73_HEADER):
        return "v7.3"
    if head.startswith(V5_HEADER):
        return "v5"
    return None


def is_matlab_file(path: str | Path) -> bool:
    """True for a MATLAB v5 (text header) or v7.3 (HDF5 after a 512-byte header) file."""
    return matlab_version(Path(path)) is not None


def variable_classes(path: Path, version: str) -> dict[str, str]:
    """Top-level variable name -> MATLAB class (``struct``, ``cell``, ``single``, ...)."""
    if version == "v5":
        import scipy.io
        with _damage_reported(path, version):
            return {name: cls for name, _shape, cls in scipy.io.whosmat(str(path))}
    import h5py
    with _damage_reported(path, version), h5py.File(path, "r") as handle:
        return {name: _attribute_text(handle[name], "MATLAB_class")
                or ("struct" if isinstance(handle[name], h5py.Group) else "unknown")
                for name in handle if name not in HDF5_PRIVATE_GROUPS}


def field_class(path: Path, version: str, dotted: str) -> str | None:
    """The MATLAB class of a (possibly nested) variable, or None if it is absent.

    Tells a cell array from a struct array, which the converted values cannot (both become
    lists). A struct array found in a v5 file reports ``struct``.
    """
    top, *fields = dotted.split(".")
    if version == "v5":
        import scipy.io
        with _damage_reported(path, version):
            raw = scipy.io.loadmat(str(path), variable_names=(top,), squeeze_me=False,
                                   struct_as_record=True).get(top)
        for field in fields:
            if not isinstance(raw, np.ndarray) or not raw.dtype.names or field not in raw.dtype.names:
                return None
            raw = raw[field].ravel()[0] if raw.size else None
        if not isinstance(raw, np.ndarray):
            return None
        if raw.dtype.names:
            return "struct"
        if raw.dtype == object:
            return "cell"
        return "char" if raw.dtype.kind == "U" else raw.dtype.name
    import h5py
    with _damage_reported(path, version), h5py.File(path, "r") as handle:
        node = handle.get("/".join([top, *fields]))
        if node is None:
            return None
        found = _attribute_text(node, "MATLAB_class")
        if found is None and isinstance(node, h5py.Dataset) and h5py.check_dtype(ref=node.dtype):
            return "struct"          # a field of a struct array (reference dataset, no class)
        return found


def load_variables(path: Path, version: str, names: Iterable[str]) -> dict[str, Any]:
    """Dotted name -> converted value, for each of ``names`` present in the file."""
    names = list(dict.fromkeys(names))
    if version == "v5":
        return _load_v5(path, names)
    return _load_v73(path, names)


# ---------------------------------------------------------------------------------------------
#                                                                                  MATLAB v5

def _load_v5(path: Path, names: list[str]) -> dict[str, Any]:
    import scipy.io
    tops = tuple(dict.fromkeys(name.split(".")[0] for name in names))
    with _damage_reported(path, "v5"):
        raw = scipy.io.loadmat(str(path), variable_names=tops, squeeze_me=False,
                               struct_as_record=True, chars_as_strings=True)
        converted = {top: _from_scipy(raw[top], 0) for top in tops if top in raw}
    found = {}
    for name in names:
        top, *fields = name.split(".")
        value = converted.get(top, _ABSENT)
        for field in fields:
            value = value.get(field, _ABSENT) if isinstance(value, dict) else _ABSENT
        if value is not _ABSENT:
            found[name] = value
    return found


_ABSENT = object()


def _from_scipy(value: Any, depth: int) -> Any:
    if depth > MAX_NESTING:
        raise ValueError("structs nested too deeply")
    if not isinstance(value, np.ndarray):
        return value
    if value.dtype.names:                                      # struct (array)
        records = [{field: _from_scipy(record[field], depth + 1) for field in value.dtype.names}
                   for record in value.ravel(order="F")]
        return records[0] if len(records) == 1 else records
    if value.dtype == object:                                  # cell array
        return [_from_scipy(item, depth + 1) for item in value.ravel(order="F")]
    if value.dtype.kind == "U":                                # char, rows joined into strings
        rows = [str(row).rstrip() for row in value.ravel(order="F")]
        return "" if not rows else rows[0] if len(rows) == 1 else rows
    return value


# ---------------------------------------------------------------------------------------------
#                                                                           MATLAB v7.3 (HDF5)

def _load_v73(path: Path, names: list[str]) -> dict[str, Any]:
    import h5py
    with _damage_reported(path, "v7.3"), h5py.File(path, "r") as handle:
        found = {}
        for name in names:
            node = handle.get(name.replace(".", "/"))
            if node is not None:
                found[name] = _from_hdf5(node, handle, 0)
        return found


def _from_hdf5(node, handle, depth: int) -> Any:
    import h5py
    if depth > MAX_NESTING:
        raise ValueError("structs nested too deeply")
    matlab_class = _attribute_text(node, "MATLAB_class")
    if isinstance(node, h5py.Group):
        if matlab_class not in (None, "struct"):
            return None                                        # sparse, objects: not needed here
        fields = {name: node[name] for name in node if name not in HDF5_PRIVATE_GROUPS}
        if fields and all(_is_struct_array_field(field) for field in fields.values()):
            # A struct array: one reference per element in each field, all of one shape.
            columns = {name: field[()].ravel() for name, field in fields.items()}
            counts = {len(refs) for refs in columns.values()}
            if len(counts) != 1:
                raise ValueError(f"struct array {node.name} has fields of different sizes")
            records = [{name: _dereference(refs[i], handle, depth) for name, refs in columns.items()}
                       for i in range(counts.pop())]
            return records[0] if len(records) == 1 else records
        return {name: _from_hdf5(field, handle, depth + 1) for name, field in fields.items()}
    if _is_true(node.attrs.get("MATLAB_empty")):
        if matlab_class == "char":
            return ""
        if matlab_class in ("cell", "struct"):
            return []
        return np.zeros([int(n) for n in np.asarray(node[()]).ravel()], dtype=np.float32)
    data = node[()]
    if h5py.check_dtype(ref=node.dtype) is not None:           # cell array
        return [_dereference(ref, handle, depth) for ref in np.asarray(data).ravel()]
    data = np.asarray(data)
    if matlab_class == "char":
        rows = np.atleast_2d(data.T)                           # MATLAB rows are strings
        texts = [row.astype("<u2").tobytes().decode("utf-16-le", "replace").rstrip()
                 for row in rows]
        return texts[0] if len(texts) == 1 else texts
    if data.dtype.names and {"real", "imag"} <= set(data.dtype.names):
        data = data["real"] + 1j * data["imag"]
    if matlab_class == "logical":
        data = data.astype(bool)
    return data.T                                              # back to MATLAB's order


def _is_struct_array_field(node) -> bool:
    import h5py
    return (isinstance(node, h5py.Dataset) and h5py.check_dtype(ref=node.dtype) is not None
            and "MATLAB_class" not in node.attrs)


def _dereference(ref, handle, depth: int) -> Any:
    if not ref:
        return None
    return _from_hdf5(handle[ref], handle, depth + 1)


def _attribute_text(node, name: str) -> str | None:
    value = node.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else b""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _is_true(value: Any) -> bool:
    return value is not None and bool(np.asarray(value).ravel().any())


# ---------------------------------------------------------------------------------------------

class _damage_reported:
    """Turn whatever scipy or h5py raise for a damaged file into one ``WeightsError``."""

    def __init__(self, path: Path, version: str):
        self.path, self.version = path, version

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _traceback):
        if error is None or isinstance(error, (MemoryError, WeightsError)) or kind is None:
            return False
        if not isinstance(error, Exception):
            return False
        layout = "MATLAB v5" if self.version == "v5" else "MATLAB v7.3 (HDF5)"
        raise WeightsError(f"{self.path}: unreadable {layout} file, truncated or damaged "
                           f"({type(error).__name__}: {_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


__all__ = ["field_class", "is_matlab_file", "load_variables", "matlab_version",
           "variable_classes"]
