"""PyTorch state dicts: ``.pth``/``.pt`` (zip or legacy pickle) and ``.safetensors``.

Conventions of the torchvision/timm files this reads:

* tensors keyed by module path (``conv1.weight``, ``layer1.0.bn1.running_var``, ``fc.bias``);
  convolution weights are (Cout, Cin, kh, kw); batch norm keeps running mean/var, eps 1e-5;
* training checkpoints often wrap the state dict as ``{"state_dict": ...}`` or
  ``{"model": ...}`` and DataParallel prefixes every key with ``module.``: both are unwrapped;
* half-precision (and bfloat16) tensors are cast to float32 so outputs match float32 runs;
* the file is never unpickled with arbitrary code: ``torch.load(weights_only=True)`` refuses
  a pickle that asks to call anything but tensor constructors. This holds for both layouts
  ``torch.save`` writes: the zip archive (the default since PyTorch 1.6: ``<name>/data.pkl``
  plus one ``<name>/data/<key>`` record per storage) and the legacy stream
  (``_use_new_zipfile_serialization=False``: five pickles in a row, the magic number, the
  protocol version, ``sys_info``, the object and the storage keys, then each storage's raw
  bytes; ``torch/serialization.py``, ``_legacy_save``). The CIFAR ResNets of
  ``akamaster/pytorch_resnet_cifar10`` are legacy files of ``{'state_dict': ..., 'best_prec1':
  ...}`` with ``module.`` prefixes, and load so;
* that publisher names a ResNet's classifier ``linear`` (and an option-B projection shortcut
  ``layerN.M.shortcut.{0,1}``) where torchvision, and so imagezoo, say ``fc`` (and
  ``downsample``): a state dict with ``conv1.weight`` and ``linear.*`` but no ``fc.*`` is
  renamed on reading (``publisher_names``), detected from its keys alone;
* a truncated file is told apart from an unsafe one by its structure: a zip archive cut short
  has lost its central directory (it still starts with a local file header, ``PK\x03\x04``),
  and a legacy stream cut short ends inside one of its pickles or storages;
* a TorchScript archive (``torch.jit.save``: the same zip container, with ``<name>/code/``
  and ``<name>/constants.pkl``) is a program, not a state dict: ``is_torchscript_file`` tells
  it apart so that ``torch.load`` is never asked to read one (it would warn and refuse).
"""
from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError, WeightsMismatchError

# The facts about these files that need no PyTorch are kept in state_files, shared with
# numpy_state (which reads them without it), so that both readers name tensors the same way.
from .state_files import (  # noqa: E402,F401 (re-exported)
    LEGACY_PICKLES, OPTIONAL_SUFFIXES, PICKLE_PROTO, SAFETENSORS_SUFFIX, ZIP_LOCAL_HEADER,
    existing_weight_file, is_torchscript_file, looks_like_safetensors, looks_like_torch_file,
    publisher_names, state_dict_of,
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.safetensors`` file, unwrapped, in float32."""
    path = existing_weight_file(path)
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
    if is_torchscript_file(path):
        raise WeightsError(f"{path}: a TorchScript program (torch.jit.save, as imagezoo export "
                           f"--torchscript writes), not a state dict; run it with "
                           f"imagezoo.load_model(path) or --model {path.name}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as error:  # torch raises many types; sort them by what the file is
        truncation = truncation_reason(path)
        if truncation is not None:
            raise WeightsError(f"{path}: truncated or damaged PyTorch file ({truncation})") from None
        if isinstance(error, pickle.UnpicklingError):
            raise WeightsError(f"{path}: refused to load: the file holds pickled code or objects "
                               f"other than tensors, which imagezoo never runs "
                               f"({_unpickler_reason(error)})") from None
        # EOFError, struct.error, RuntimeError ("unexpected EOF", bad records), ...
        raise WeightsError(f"{path}: truncated or damaged PyTorch file "
                           f"({type(error).__name__}: {_first_line(error)})") from None
    return _unwrap(loaded, path)


def truncation_reason(path: Path) -> str | None:
    """Why ``path`` is an incomplete ``torch.save`` file, or None if its structure is whole.

    A zip archive must have its central directory; a legacy stream must hold its five
    pickles to their STOP opcodes (checked with ``pickletools``, which decodes opcodes and
    never builds objects). The storages' bytes after them are checked by ``torch.load``.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if data.startswith(ZIP_LOCAL_HEADER):
        if not zipfile.is_zipfile(io.BytesIO(data)):
            return "a zip archive without its central directory, cut short"
        return None
    if not data.startswith(PICKLE_PROTO):
        return None
    stream = io.BytesIO(data)
    for index in range(LEGACY_PICKLES):
        if stream.tell() == len(data):
            return f"the stream ends after {index} of the {LEGACY_PICKLES} pickles of a legacy file"
        try:
            for _opcode, _argument, _position in pickletools.genops(stream):
                pass
        except Exception as error:  # genops raises ValueError and friends on a cut opcode
            return f"pickle {index + 1} of {LEGACY_PICKLES} is cut short ({_first_line(error)})"
    return None


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The unpickler's first sentence (what it refused), without PyTorch's advice to load
    with ``weights_only=False`` or to allow-list the global."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line.removeprefix("WeightsUnpickler error:").strip() for line in lines
                   if line.startswith("WeightsUnpickler error:")), None)
    if reason is None:
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
    return reason.split(". ")[0].rstrip(".") or "unsafe pickle"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unwrap(loaded, path: Path) -> dict[str, torch.Tensor]:
    return state_dict_of(loaded, path, lambda value: isinstance(value, torch.Tensor))


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
