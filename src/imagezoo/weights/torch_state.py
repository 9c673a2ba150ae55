"""PyTorch state dicts: ``.pth``/``.pt`` (zip or legacy pickle) and ``.safetensors``.

Conventions of the torchvision/timm files this reads:

* tensors keyed by module path (``conv1.weight``, ``layer1.0.bn1.running_var``, ``fc.bias``);
  convolution weights are (Cout, Cin, kh, kw); batch norm keeps running mean/var, eps 1e-5;
* training checkpoints often wrap the state dict as ``{"state_dict": ...}`` or
  ``{"model": ...}`` and DataParallel prefixes every key with ``module.``: both are unwrapped;
* half-precision (and bfloat16) tensors are cast to float32 so outputs match float32 runs;
* the file is never unpickled with arbitrary code: ``torch.load(weights_only=True)`` refuses
  a pickle that asks to call anything but tensor constructors.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError, WeightsMismatchError

SAFETENSORS_SUFFIX = ".safetensors"
# Keys torchvision writes but a model may legitimately lack in another file (older
# checkpoints predate them); their absence never changes the outputs in eval mode.
OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def looks_like_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length followed by a JSON object."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (since 1.6) or, before that, a raw pickle stream."""
    if zipfile.is_zipfile(path):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(1) == b"\x80"  # pickle protocol 2+ opcode PROTO
    except OSError:
        return False


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.safetensors`` file, unwrapped, in float32."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weight file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weight file")
    if path.suffix == SAFETENSORS_SUFFIX or looks_like_safetensors(path):
        tensors = _read_safetensors(path)
    elif looks_like_torch_file(path):
        tensors = _read_torch_pickle(path)
    else:
        raise WeightsError(f"{path}: neither a PyTorch (.pth) nor a safetensors file")
    return {name: _as_float32(tensor) for name, tensor in tensors.items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path}: not a valid safetensors file ({error})") from None


def _read_torch_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe pickle"
        raise WeightsError(f"{path}: refused to load: the file holds pickled code or objects "
                           f"other than tensors, which imagezoo never runs ({first_line})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise WeightsError(f"{path}: not a readable PyTorch weight file ({error})") from None
    return _unwrap(loaded, path)


def _unwrap(loaded, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsError(f"{path}: holds no state dict (a dict of tensors)")
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors")
    if all(name.startswith("module.") for name in tensors):
        tensors = {name[len("module."):]: value for name, value in tensors.items()}
    return tensors


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        return tensor.to(torch.float32)
    return tensor


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``model``, or raise ``WeightsMismatchError`` naming every misfit."""
    expected = model.state_dict()
    missing = [name for name in expected
               if name not in tensors and not name.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [name for name in tensors if name not in expected]
    misshapen = [(name, tuple(tensors[name].shape), tuple(expected[name].shape))
                 for name in expected
                 if name in tensors and tensors[name].shape != expected[name].shape]
    if missing or unexpected or misshapen:
        raise WeightsMismatchError(source, missing, unexpected, misshapen)
    model.load_state_dict(tensors, strict=False)
