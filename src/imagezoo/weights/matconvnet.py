"""MatConvNet DagNN ResNet files (``imagenet-resnet-50-dag.mat`` and its siblings).

Conventions of the source, and where each one comes from:

* The file is a MATLAB ``.mat`` file holding a DagNN saved as a plain struct
  (``matlab/+dagnn/@DagNN/saveobj.m``): ``params`` is a struct array with fields ``name`` and
  ``value`` (plus ``learningRate``/``weightDecay``, ignored here); ``layers``, ``vars`` and
  ``meta`` sit beside it. Only ``params`` and ``meta`` are read: the network is inferred from
  the parameter names, so files whose ``layers``/``vars`` are empty load too (as the fixture's).
* Where the struct sits: the published models (``imagenet-resnet-50-dag.mat``) keep its
  fields as top-level variables; ``cnn_train_dag`` checkpoints keep it whole in one variable
  ``net`` (``examples/cnn_train_dag.m``: ``saveState`` does ``net = net_.saveobj() ;
  save(fileName, 'net', 'state')``, ``saveStats`` appends ``stats``), as does any
  ``save(file, 'net')``. Both are read, in v5 and v7.3, and give the same tensors and card;
  ``state`` and ``stats`` are ignored.
* A SimpleNN network (``vl_simplenn``; ``examples/cnn_train.m`` saves it as ``net`` with
  ``save(fileName, 'net', 'state')`` too, and the published ``imagenet-vgg-f.mat`` has its
  fields at top level) keeps ``layers`` as a *cell array* of structs with ``type`` and
  ``weights`` and has no ``params``. SimpleNN is a chain without branches, so it cannot hold
  a ResNet: such a file gets its own message.
* The published files are MATLAB v5 (``utils/import-caffe.py`` writes them with
  ``scipy.io.savemat``); a file re-saved with ``save -v7.3`` is HDF5. ``weights.matlab_file``
  reads both layouts into the same Python values.
* Parameter names follow the Caffe ResNet prototxt (``utils/import-caffe.py`` turns Caffe
  layer ``x`` into ``x_filter``/``x_bias`` and a BatchNorm+Scale pair into ``x_mult``,
  ``x_bias``, ``x_moments``): ``conv1``, ``bn_conv1``, ``res{stage}{block}_branch{1,2a,2b,2c}``,
  ``bn{stage}{block}_branch...``, ``fc1000``. Stages are 2..5; the first block of a stage is
  ``a``, later ones ``b``, ``c``, … (ResNet-50) or ``b1``, ``b2``, … (ResNet-101/152, e.g.
  ``res4b22``, ``res4b35``) (fixtures README).
* Filters are H x W x Cin x Cout (``vl_nnconv``: height, width, depth, number of filters);
  ``fc1000_filter`` is a 1 x 1 x Cin x classes filter bank, because ``import-caffe.py``
  turns an inner product into a convolution over the pooled 1 x 1 map.
* Batch norm in test mode calls ``vl_nnbnorm`` with given ``moments``, a C x 2 array
  ``[mu, sigma]``; the CPU kernel (``bnorm_cpu.cpp``, ``forward_given_moments``) computes
  ``mult / sigma * (x - mu) + bias`` and never adds an epsilon: sigma already includes it
  (``import-caffe.py`` stores ``sqrt(variance + eps)``).
* The network is the original MSRA ResNet ("v1"): the stride-2 sits in ``branch2a`` and
  ``branch1``; pool1 is 3x3 stride 2 with Caffe's ceil rounding (MatConvNet pad ``[0 1 0 1]``);
  conv1 has a bias (fixtures README, DESIGN fidelity table).
* Input: RGB in 0..255 minus ``meta.normalization.averageImage`` (H x W x 3, or 1 x 1 x 3),
  at ``meta.normalization.imageSize`` (224); class names are ``meta.classes.description``
  (``meta.classes.name`` holds WordNet ids) (fixtures README, ``import-caffe.py``).

Batch-norm epsilon: imagezoo's model computes ``(x - mean) / sqrt(var + eps)`` (PyTorch, in
float32). The card sets ``bn_eps = 0`` and ``running_var = sigma ** 2`` (squared in float64,
rounded once to float32). With IEEE round-to-nearest, ``sqrt(fl(s * s)) == s`` for every
float32 ``s`` away from overflow and underflow, so PyTorch recovers MatConvNet's sigma
bit-for-bit. The alternative, ``eps = 1e-5`` and ``running_var = sigma ** 2 - 1e-5``, needs
two more roundings (the subtraction, then PyTorch's ``var + eps``) and is off by one ulp in
about 5 % of channels (measured over a million log-uniform sigmas; ``bn_eps = 0`` left about
one in 10^5). Either error is far below the fixture tolerance, but the exact choice costs
nothing in evaluation. The one caveat: a model trained further *with batch norm in training
mode* would divide by the batch's own variance with no epsilon; set ``bn_eps`` before that.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..card import ModelCard
from ..data.transforms import Preprocess
from ..errors import WeightsError
from ..models.resnet import ResNetSpec
from .matlab_file import (  # noqa: F401  (is_matlab_file: part of this module's API)
    field_class, is_matlab_file, load_variables, matlab_version, variable_classes,
)
from .store import sha256_of

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 224
# Where a DagNN struct's fields can be: top-level variables, or the fields of one variable.
NETWORK_VARIABLE = "net"

_RESIDUAL_PARAM = re.compile(
    r"^(?P<kind>res|bn)(?P<stage>\d+)(?P<block>[a-z]\d*)_branch(?P<branch>1|2[abc])_"
    r"(?P<part>filter|bias|mult|moments)$")
_NUMBERED_BLOCK = re.compile(r"^b(\d+)$")


# ---------------------------------------------------------------------------------------------
#                                                                                     public API
# ---------------------------------------------------------------------------------------------

def read_matconvnet(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Tensors in imagezoo's (torchvision) naming and the card of a MatConvNet DagNN ResNet,
    stored at top level or under ``net`` (a ``cnn_train_dag`` checkpoint), in v5 or v7.3."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weight file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weight file")
    version = matlab_version(path)
    if version is None:
        raise WeightsError(f"{path}: not a MATLAB .mat file (neither the v5 text header nor a "
                           f"v7.3 HDF5 body); MatConvNet models are .mat files")
    raw_params, meta = _dagnn_variables(path, version)
    params = _parameter_arrays(raw_params, path)
    spec, layout = _infer_network(params, path)
    tensors = _convert(params, layout, path)
    card = ModelCard(
        name=path.stem,
        architecture=spec.to_dict(),
        preprocess=_preprocess(meta, path),
        labels=_labels(meta, spec.num_classes, path),
        source=path.name,
        source_format="matconvnet",
        sha256=sha256_of(path),
        license=None,
    )
    return tensors, card


# ---------------------------------------------------------------------------------------------
#                                                    where the network is in the .mat file
# ---------------------------------------------------------------------------------------------

def _dagnn_variables(path: Path, version: str) -> tuple[Any, dict]:
    """``params`` and ``meta`` of the DagNN struct, wherever the file keeps it; a
    ``WeightsError`` saying what the file holds instead."""
    classes = variable_classes(path, version)
    if "params" in classes:
        prefix = ""
    elif NETWORK_VARIABLE in classes:
        if classes[NETWORK_VARIABLE] != "struct":
            raise WeightsError(
                f"{path}: 'net' is a MATLAB {classes[NETWORK_VARIABLE]}, not a struct; save "
                f"the DagNN as a struct, as cnn_train_dag does: net = net.saveobj() ; "
                f"save(file, 'net')")
        prefix = NETWORK_VARIABLE + "."
    else:
        prefix = None
    if prefix is not None:
        values = load_variables(path, version, [prefix + "params", prefix + "meta"])
        if prefix + "params" in values:
            meta = values.get(prefix + "meta")
            return values[prefix + "params"], meta if isinstance(meta, dict) else {}
    for layers in ("layers", NETWORK_VARIABLE + ".layers"):
        if field_class(path, version, layers) == "cell":
            raise WeightsError(
                f"{path}: a MatConvNet SimpleNN network ({layers} as a cell array), not a "
                f"DagNN ResNet; imagezoo reads DagNN ResNets (a 'params' struct array of name "
                f"and value, at top level as in imagenet-resnet-50-dag.mat or under 'net' as "
                f"cnn_train_dag saves it), and a SimpleNN chain has no branches, so it cannot "
                f"hold a ResNet")
    found = ", ".join(sorted(classes)) or "none"
    raise WeightsError(f"{path}: has no 'params' variable (nor 'net.params'), so it is not a "
                       f"MatConvNet DagNN model (variables: {found})")


# ---------------------------------------------------------------------------------------------
#                                                               params -> network structure
# ---------------------------------------------------------------------------------------------

def _parameter_arrays(raw: Any, path: Path) -> dict[str, np.ndarray]:
    records = [raw] if isinstance(raw, dict) else raw
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise WeightsError(f"{path}: 'params' is not a struct array with fields name and value")
    params: dict[str, np.ndarray] = {}
    for index, record in enumerate(records):
        if "name" not in record or "value" not in record:
            raise WeightsError(f"{path}: 'params' lacks the fields name and value "
                               f"(has: {', '.join(sorted(record)) or 'none'})")
        name, value = record["name"], record["value"]
        if not isinstance(name, str) or not name:
            raise WeightsError(f"{path}: params({index + 1}).name is not a text name")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            raise WeightsError(f"{path}: parameter {name} does not hold a real numeric array")
        if name in params:
            raise WeightsError(f"{path}: parameter {name} appears twice")
        if value.size == 0:
            # DagNN keeps declared-but-unused parameters (a bias a layer does not use) empty.
            log.debug("%s: parameter %s is empty; ignored", path, name)
            continue
        params[name] = value
    return params


@dataclass(frozen=True)
class _Slot:
    """One MatConvNet parameter and the imagezoo tensor(s) it becomes."""

    source: str          # MatConvNet name, e.g. "res3b_branch2a_filter"
    target: str          # imagezoo module path, e.g. "layer2.1.conv1"
    kind: str            # "filter", "conv_bias", "bn_mult", "bn_bias", "bn_moments", "fc_filter", "fc_bias"
    shape: tuple[int, ...]


def _infer_network(params: dict[str, np.ndarray], path: Path) -> tuple[ResNetSpec, list[_Slot]]:
    filt = _require(params, "conv1_filter", path)
    if filt.ndim != 4 or filt.shape[:3] != (7, 7, 3):
        raise WeightsError(f"{path}: parameter conv1_filter has shape {_fmt(filt.shape)}; "
                           f"expected 7x7x3xC (a ResNet's first convolution)")
    width = int(filt.shape[3])
    stages = _residual_blocks(params, path)
    block = "bottleneck" if any("_branch2c_" in name for name in params) else "basic"
    fc_name = _fc_name(params, path)
    fc_filter = _as_4d(params[f"{fc_name}_filter"])
    if fc_filter is None or fc_filter.shape[:2] != (1, 1):
        raise WeightsError(f"{path}: parameter {fc_name}_filter has shape "
                           f"{_fmt(params[fc_name + '_filter'].shape)}; expected 1x1xCxK")
    spec = ResNetSpec(block=block, layers=tuple(len(names) for names in stages), width=width,
                      num_classes=int(fc_filter.shape[3]), stride_in_1x1=True, pool1="caffe",
                      conv1_bias="conv1_bias" in params, bn_eps=0.0)
    layout = _layout(spec, stages, fc_name)
    expected = {slot.source for slot in layout}
    unexpected = sorted(set(params) - expected)
    if unexpected:
        raise WeightsError(f"{path}: parameter(s) that a {block} ResNet with blocks "
                           f"{spec.layers} does not have: {_shorten(unexpected)}")
    missing = [slot.source for slot in layout if slot.source not in params]
    if missing:
        raise WeightsError(f"{path}: missing parameter(s) {_shorten(missing)} "
                           f"(inferred a {block} ResNet with blocks {spec.layers})")
    return spec, layout


def _residual_blocks(params: dict[str, np.ndarray], path: Path) -> list[list[str]]:
    """Block names per stage, in order: [["2a", "2b", "2c"], ["3a", "3b1", ...], ...]."""
    found: dict[int, dict[int, str]] = {}
    for name in params:
        match = _RESIDUAL_PARAM.match(name)
        if not match:
            continue
        stage, suffix = int(match["stage"]), match["block"]
        found.setdefault(stage, {})
        index = _block_index(suffix)
        if index is None:
            raise WeightsError(f"{path}: parameter {name}: block name {stage}{suffix} is neither "
                               f"a letter (res2c) nor b and a number (res4b22)")
        other = found[stage].get(index)
        if other is not None and other != suffix:
            raise WeightsError(f"{path}: stage res{stage} names block {index + 1} both "
                               f"{stage}{other} and {stage}{suffix}")
        found[stage][index] = suffix
    if not found:
        raise WeightsError(f"{path}: no residual block parameters (res2a_branch2a_filter, …): "
                           f"not a MatConvNet ResNet")
    first, last = min(found), max(found)
    if first != 2 or sorted(found) != list(range(first, last + 1)):
        raise WeightsError(f"{path}: residual stages {sorted(found)} are not res2, res3, … "
                           f"without gaps")
    stages = []
    for stage in range(first, last + 1):
        suffixes = found[stage]
        numbered = any(_NUMBERED_BLOCK.match(s) for s in suffixes.values())
        lettered = any(len(s) == 1 and s != "a" for s in suffixes.values())
        if numbered and lettered:
            raise WeightsError(f"{path}: stage res{stage} mixes block names "
                               f"{', '.join(f'res{stage}{s}' for s in sorted(suffixes.values()))}")
        count = max(suffixes) + 1
        stages.append([f"{stage}{_block_suffix(i, numbered)}" for i in range(count)])
    return stages


def _block_index(suffix: str) -> int | None:
    if len(suffix) == 1:
        return ord(suffix) - ord("a")
    match = _NUMBERED_BLOCK.match(suffix)
    return int(match[1]) if match and int(match[1]) >= 1 else None


def _block_suffix(index: int, numbered: bool) -> str:
    if index == 0:
        return "a"
    return f"b{index}" if numbered else chr(ord("a") + index)


def _fc_name(params: dict[str, np.ndarray], path: Path) -> str:
    if "fc1000_filter" in params:
        return "fc1000"
    candidates = sorted(name[: -len("_filter")] for name in params
                        if name.startswith("fc") and name.endswith("_filter"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise WeightsError(f"{path}: missing parameter fc1000_filter (the classifier)")
    raise WeightsError(f"{path}: several classifier layers ({', '.join(candidates)}); "
                       f"expected one, fc1000")


def _layout(spec: ResNetSpec, stages: list[list[str]], fc_name: str) -> list[_Slot]:
    """Every parameter the inferred network needs, with its MATLAB shape and imagezoo name."""
    slots = [_Slot("conv1_filter", "conv1", "filter", (7, 7, 3, spec.width))]
    if spec.conv1_bias:
        slots.append(_Slot("conv1_bias", "conv1", "conv_bias", (spec.width,)))
    slots += _bn_slots("bn_conv1", "bn1", spec.width)
    expansion = 4 if spec.block == "bottleneck" else 1
    in_channels = spec.width
    for stage_index, blocks in enumerate(stages):
        planes = spec.width * 2 ** stage_index
        out_channels = planes * expansion
        for block_index, block_name in enumerate(blocks):
            target = f"layer{stage_index + 1}.{block_index}"
            block_in = in_channels if block_index == 0 else out_channels
            if spec.block == "bottleneck":
                convs = [("2a", "conv1", "bn1", 1, block_in, planes),
                         ("2b", "conv2", "bn2", 3, planes, planes),
                         ("2c", "conv3", "bn3", 1, planes, out_channels)]
            else:
                convs = [("2a", "conv1", "bn1", 3, block_in, planes),
                         ("2b", "conv2", "bn2", 3, planes, planes)]
            stride = 2 if stage_index > 0 and block_index == 0 else 1
            if block_index == 0 and (stride != 1 or block_in != out_channels):
                convs.append(("1", "downsample.0", "downsample.1", 1, block_in, out_channels))
            for branch, conv, bn, size, cin, cout in convs:
                slots.append(_Slot(f"res{block_name}_branch{branch}_filter", f"{target}.{conv}",
                                   "filter", (size, size, cin, cout)))
                slots += _bn_slots(f"bn{block_name}_branch{branch}", f"{target}.{bn}", cout)
        in_channels = out_channels
    slots.append(_Slot(f"{fc_name}_filter", "fc", "fc_filter", (1, 1, in_channels, spec.num_classes)))
    slots.append(_Slot(f"{fc_name}_bias", "fc", "fc_bias", (spec.num_classes,)))
    return slots


def _bn_slots(prefix: str, target: str, channels: int) -> list[_Slot]:
    return [_Slot(f"{prefix}_mult", target, "bn_mult", (channels,)),
            _Slot(f"{prefix}_bias", target, "bn_bias", (channels,)),
            _Slot(f"{prefix}_moments", target, "bn_moments", (channels, 2))]


# ---------------------------------------------------------------------------------------------
#                                                                     MATLAB arrays -> tensors
# ---------------------------------------------------------------------------------------------

def _convert(params: dict[str, np.ndarray], layout: list[_Slot], path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for slot in layout:
        value = params[slot.source]
        if slot.kind in ("filter", "fc_filter"):
            array = _as_4d(value)
            if array is None or array.shape != slot.shape:
                raise _shape_error(path, slot, value.shape)
            if slot.kind == "filter":           # H x W x Cin x Cout -> Cout x Cin x H x W
                tensors[f"{slot.target}.weight"] = _tensor(array.transpose(3, 2, 0, 1))
            else:                               # 1 x 1 x Cin x K -> K x Cin
                tensors["fc.weight"] = _tensor(array[0, 0].T)
        elif slot.kind in ("conv_bias", "fc_bias", "bn_bias", "bn_mult"):
            if not _is_vector(value, slot.shape[0]):
                raise _shape_error(path, slot, value.shape)
            suffix = "weight" if slot.kind == "bn_mult" else "bias"
            tensors[f"{slot.target}.{suffix}"] = _tensor(value.ravel())
        else:                                   # bn_moments: C x 2 [mean, sigma]
            if value.shape != slot.shape:
                raise _shape_error(path, slot, value.shape)
            mean, sigma = value[:, 0].astype(np.float64), value[:, 1].astype(np.float64)
            variance = sigma * sigma
            tiny = np.finfo(np.float32).tiny
            bad = ~(np.isfinite(mean) & np.isfinite(sigma) & (sigma > 0)
                    & (variance >= tiny) & (variance <= np.finfo(np.float32).max))
            if bad.any():
                channel = int(np.flatnonzero(bad)[0])
                raise WeightsError(f"{path}: parameter {slot.source}: channel {channel + 1} has "
                                   f"mean {mean[channel]:g} and sigma {sigma[channel]:g}; sigma "
                                   f"must be a positive, finite standard deviation")
            # bn_eps is 0, so sqrt(running_var) gives sigma back exactly (module docstring).
            tensors[f"{slot.target}.running_mean"] = _tensor(mean)
            tensors[f"{slot.target}.running_var"] = _tensor(variance)
    return tensors


def _as_4d(value: np.ndarray) -> np.ndarray | None:
    """MATLAB drops trailing singleton dimensions (a 1x1xCx1 filter is saved as 1x1xC)."""
    if value.ndim > 4:
        return None
    return value.reshape(value.shape + (1,) * (4 - value.ndim))


def _is_vector(value: np.ndarray, length: int) -> bool:
    return value.size == length and sum(n != 1 for n in value.shape) <= 1


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _shape_error(path: Path, slot: _Slot, shape: tuple[int, ...]) -> WeightsError:
    return WeightsError(f"{path}: parameter {slot.source} has shape {_fmt(shape)}; the inferred "
                        f"network needs {_fmt(slot.shape)}")


def _require(params: dict[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    if name not in params:
        raise WeightsError(f"{path}: missing parameter {name}: not a MatConvNet ResNet")
    return params[name]


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(n)) for n in shape) if len(shape) else "scalar"


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------
#                                                                       meta -> card fields
# ---------------------------------------------------------------------------------------------

def _preprocess(meta: dict, path: Path) -> Preprocess:
    normalization = meta.get("normalization")
    normalization = normalization if isinstance(normalization, dict) else {}
    mean_image = _mean_image(normalization.get("averageImage"), path)
    size = _image_size(normalization.get("imageSize"), mean_image)
    if mean_image is not None and mean_image.shape[0] != 1 and mean_image.shape[:2] != (size, size):
        raise WeightsError(f"{path}: meta.normalization.averageImage is "
                           f"{_fmt(mean_image.shape)} but the network input is {size}x{size}")
    return Preprocess(resize=size, crop=size, interpolation="bilinear", scale=1.0,
                      channel_order="RGB", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                      mean_image=mean_image,
                      follows="MatConvNet's DagNN evaluation as the Knet ResNet notebook runs it: "
                              "shorter side to meta.normalization.imageSize, centre crop, RGB "
                              "0..255 minus meta.normalization.averageImage")


def _mean_image(value: Any, path: Path) -> np.ndarray | None:
    if not isinstance(value, np.ndarray) or value.size == 0:
        log.warning("%s: no meta.normalization.averageImage; nothing is subtracted", path)
        return None
    if value.dtype.kind not in "fiu":
        raise WeightsError(f"{path}: meta.normalization.averageImage is not numeric")
    if value.size == 3:
        return value.reshape(1, 1, 3).astype(np.float32)
    if value.ndim == 3 and value.shape[2] == 3:
        return value.astype(np.float32)
    if not value.any():
        # import-caffe.py writes [0 0] when a Caffe model came without a mean.
        return None
    raise WeightsError(f"{path}: meta.normalization.averageImage has shape "
                       f"{_fmt(value.shape)}; expected HxWx3 or three channel means")


def _image_size(value: Any, mean_image: np.ndarray | None) -> int:
    if isinstance(value, np.ndarray) and value.size >= 2:
        height, width = (float(n) for n in value.ravel()[:2])
        if height == width and height >= 1 and height.is_integer():
            return int(height)
    if mean_image is not None and mean_image.shape[0] > 1 and mean_image.shape[0] == mean_image.shape[1]:
        return int(mean_image.shape[0])
    return DEFAULT_INPUT_SIZE


def _labels(meta: dict, num_classes: int, path: Path) -> list[str]:
    classes = meta.get("classes")
    classes = classes if isinstance(classes, dict) else {}
    for field in ("description", "name"):
        names = _texts(classes.get(field))
        if names is None:
            continue
        if len(names) == num_classes:
            return names
        log.warning("%s: meta.classes.%s has %d entries for %d classes; not used",
                    path, field, len(names), num_classes)
    return [f"class {i}" for i in range(num_classes)]


def _texts(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value] if value else None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


__all__ = ["is_matlab_file", "read_matconvnet"]
