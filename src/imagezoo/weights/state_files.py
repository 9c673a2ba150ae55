"""What a PyTorch weight file is, told without PyTorch: its layout from its first bytes, the
checkpoint wrappers around a state dict, and the names other publishers give tensors.

Both readers use these (``torch_state`` with PyTorch, ``numpy_state`` without), so that they
unwrap and name tensors the same way.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Callable

from ..errors import WeightsError

SAFETENSORS_SUFFIX = ".safetensors"
# Keys torchvision writes but a model may legitimately lack in another file (older
# checkpoints predate them); their absence never changes the outputs in eval mode.
OPTIONAL_SUFFIXES = (".num_batches_tracked",)
ZIP_LOCAL_HEADER = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"          # pickle protocol 2+ opens with the PROTO opcode
LEGACY_PICKLES = 5              # magic number, protocol, sys_info, object, storage keys
LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001


# --- what a file is -------------------------------------------------------------------------

def looks_like_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length followed by a JSON object."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (since 1.6) or, before that, a raw pickle stream; a
    zip cut short has no central directory left, but still starts with a local file header."""
    if zipfile.is_zipfile(path):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(ZIP_LOCAL_HEADER))
    except OSError:
        return False
    return head.startswith(ZIP_LOCAL_HEADER) or head[:1] == PICKLE_PROTO


def is_torchscript_file(path: str | Path) -> bool:
    """A ``torch.jit.save`` archive: a zip with ``<name>/constants.pkl`` or ``<name>/code/``
    records (what ``torch.load`` itself checks before it dispatches to ``torch.jit.load``)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def state_dict_kind(path: str | Path) -> str | None:
    """``"safetensors"`` or ``"torch"`` for a file ``weights.formats.detect_format`` calls so,
    None for anything else (a folder, MATLAB, a PaddlePaddle tarball, TorchScript)."""
    from .matlab_file import is_matlab_file
    path = Path(path)
    if not path.is_file() or is_matlab_file(path):
        return None
    if looks_like_safetensors(path):
        return "safetensors"
    if is_torchscript_file(path) or not looks_like_torch_file(path):
        return None  # a PaddlePaddle v2 tarball is neither a zip nor a pickle
    return "torch"


# --- names ------------------------------------------------------------------------------------

def state_dict_of(loaded, path: Path, is_tensor: Callable[[object], bool]) -> dict:
    """The tensors of a loaded checkpoint in imagezoo's names: ``{"state_dict": ...}``,
    ``{"model": ...}`` and ``{"model_state_dict": ...}`` unwrapped, DataParallel's
    ``module.`` prefix dropped, a publisher's names renamed (``publisher_names``)."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsError(f"{path}: holds no state dict (a dict of tensors)")
    tensors = {str(k): v for k, v in loaded.items() if is_tensor(v)}
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors")
    if all(name.startswith("module.") for name in tensors):
        tensors = {name[len("module."):]: value for name, value in tensors.items()}
    return publisher_names(tensors)


_SHORTCUT = re.compile(r"^(layer\d+\.\d+\.)shortcut\.(\d+\.)")


def publisher_names(tensors: dict) -> dict:
    """A ResNet state dict in akamaster/pytorch_resnet_cifar10's names (head ``linear``,
    projection shortcuts ``shortcut.0``/``shortcut.1``) in imagezoo's (``fc``,
    ``downsample.0``/``downsample.1``); any other state dict is returned as it is."""
    if not ("conv1.weight" in tensors and "linear.weight" in tensors
            and not any(name.startswith("fc.") for name in tensors)):
        return tensors
    renamed = {}
    for name, value in tensors.items():
        if name.startswith("linear."):
            name = "fc." + name[len("linear."):]
        name = _SHORTCUT.sub(r"\1downsample.\2", name)
        renamed[name] = value
    return renamed


# --- reading ----------------------------------------------------------------------------------


def existing_weight_file(path: str | Path) -> Path:
    """``path`` as a ``Path``, or a ``WeightsError`` when it is missing or a folder."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weight file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weight file")
    return path
