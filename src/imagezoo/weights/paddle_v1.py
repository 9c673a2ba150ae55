"""PaddlePaddle v1 parameter folders (the v1 model zoo's ``resnet_50/``, ``resnet_101/``, ...).

Conventions of the source, each checked against PaddlePaddle's own code and documents:

* One file per parameter, named ``_<layer>.w<i>`` or ``_<layer>.wbias``; a folder is one
  saved model (a pass directory). Each file starts with a 16-byte header, the
  ``Parameter::Header`` struct of ``paddle/parameter/Parameter.h`` (PaddlePaddle/Paddle, v1
  branch): ``int32 format`` (0 = ``PARAM_FORMAT_ORIGINAL``; 1 is the MKL-DNN layout, not
  supported here), ``uint32 valueSize`` (``sizeof(real)``, 4 for the float32 builds that
  published the models) and ``uint64 size`` (the element count); then the raw values,
  little-endian on every machine Paddle v1 ran on. The file carries no shape: shapes follow
  from the network configuration, so this reader infers the configuration from the names
  and element counts and checks every file against it.
* Layer names are those of the model zoo's configuration ``demo/model_zoo/resnet/resnet.py``
  (PaddlePaddle/Paddle): ``conv_bn_layer(name)`` makes ``<name>_conv`` (no bias) and
  ``<name>_bn``; the stem is ``conv1``, stage ``s`` (2..5) block ``i`` (from 1) is
  ``res<s>_<i>`` with ``branch2a``/``branch2b``/``branch2c`` and, in the first block of a
  stage, the projection shortcut ``branch1``; the classifier is the ``fc_layer`` ``output``.
  A basic-block net (ResNet-18/34 style, not in the v1 zoo) is read with the same names and
  ``branch2a``/``branch2b`` only; like torchvision it has no ``branch1`` where the shortcut
  keeps its width and resolution (``res2_1``).
* The stride-2 of a down-sampling bottleneck sits in the first 1x1 convolution (``branch2a``,
  and in ``branch1``): ``mid_projection`` in the same ``resnet.py`` ("v1", as in the
  original Caffe models they were converted from), so the card asks for ``stride_in_1x1``.
* ``pool1`` is ``img_pool_layer(pool_size=3, stride=2)`` with no padding; v1 pooling rounds the
  output size up (``parse_pool`` in ``python/paddle/trainer/config_parser.py`` calls
  ``cnn_output_size(..., caffe_mode=not ceil_mode)`` with ``ceil_mode`` true by default), which
  is Caffe's rounding: the card asks for ``pool1="caffe"``.
* Batch norm (``doc/tutorials/imagenet_model/resnet_model_en.md``, "Parameter Info"):
  ``.w0`` gamma, ``.w1`` running mean, ``.w2`` running variance, ``.wbias`` beta; Paddle's
  ``batch_norm_layer`` default epsilon is 1e-5.
* Convolution weights are Caffe blobs (Cout, Cin, kh, kw) flattened row-major: the
  ``caffe2paddle`` converter (PaddlePaddle/models, ``image_classification/caffe2paddle/
  caffe2paddle.py``) writes ``blob.data.flatten()`` unchanged. (The tutorial's wording
  "(Co, ky, kx, Ci)" does not match what the converter writes; the reference outputs in the
  tests confirm (Cout, Cin, kh, kw).) A conv1 bias, if a converted file has one, is
  ``_conv1_conv.wbias``.
* The fully connected weight is (input size, output size) row-major (the tutorial, and the
  converter transposes Caffe's (out, in) before writing), so it is transposed into
  ``fc.weight``.
* Input: BGR, 0..255, minus the per-channel means 103.939, 116.779, 123.68 (B, G, R), shorter
  side 256 and a 224 centre crop (the tutorial: "channel order of BGR ... single scale with
  the shorter side of 256 and single crop"; the means are those the tutorial gives as the
  alternative to its 3 x 224 x 224 mean file, and ``demo/model_zoo/resnet/classify.py``
  subtracts them after swapping the channels to B, G, R). The card resizes bilinearly, as
  torchvision does; the zoo's own ``classify.py`` uses PIL's ANTIALIAS (Lanczos) filter
  (``paddle.utils.image_util.resize_image``, which also rounds rather than truncates the
  long side) for its ten crops, and for a single crop squeezes the whole picture to
  224 x 224 without keeping the aspect ratio.
* The ``caffe2paddle`` converter writes Caffe's BatchNorm mean and variance blobs multiplied
  by the moving-average-factor blob, where Caffe divides by it; the factor is 1 in the MSRA
  ResNet files, so their statistics arrive unchanged. Files converted from other Caffe
  models may carry scaled statistics; nothing in the folder tells, so they are read as is.

* A PaddlePaddle v2 model (``parameters.to_tar``, unpacked; the tarball itself is read by
  ``weights.paddle_v2``) has the same files plus a ``<file>.protobuf`` sidecar each, a
  serialised ``ParameterConfig`` (``weights.paddle_config``). Sidecars are never parameters.
  Where one is present its ``name`` and ``size`` must agree with the file, and its ``dims``
  give the stored shape the 16-byte header leaves open: the fully connected weight's
  ``[input size, output size]`` is checked against the inferred network before it is
  transposed (``dims`` of other parameters must hold the file's element count).

A folder has no single file to checksum, so the card's ``sha256`` is the SHA-256 of, for each
parameter file and sidecar in sorted name order, the UTF-8 name, a NUL byte, the content
length as an 8-byte little-endian integer and the content (see ``folder_sha256``). Renaming or
moving the folder keeps the digest; changing, adding or removing any such file changes it.
"""
from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np
import torch

from ..card import ModelCard, imagenet_labels
from ..data.transforms import Preprocess
from ..errors import WeightsError
from ..models.resnet import ResNetSpec
from .paddle_config import ParameterConfig, parse_parameter_config

HEADER = struct.Struct("<iIQ")  # int32 format, uint32 value size, uint64 element count
FORMAT_ORIGINAL = 0
FLOAT32_SIZE = 4
CONV1_FILE = "_conv1_conv.w0"
CONV1_BIAS_FILE = "_conv1_conv.wbias"
OUTPUT_WEIGHT_FILE = "_output.w0"
OUTPUT_BIAS_FILE = "_output.wbias"
CONV1_VALUES_PER_CHANNEL = 3 * 7 * 7
FIRST_STAGE = 2  # the zoo numbers stages res2..res5, after conv1
BLOCK_NAME = re.compile(r"^_res(\d+)_(\d+)_branch")
BN_SUFFIXES = {"w0": "weight", "w1": "running_mean", "w2": "running_var", "wbias": "bias"}
BN_MEANING = {"w0": "gamma", "w1": "running mean", "w2": "running variance", "wbias": "beta"}
BRANCH_MODULES = {"2a": "1", "2b": "2", "2c": "3"}
BGR_MEANS = (103.939, 116.779, 123.68)
SIDECAR_SUFFIX = ".protobuf"


def paddle_v1_preprocess() -> Preprocess:
    """The v1 model zoo's evaluation input: BGR 0..255 minus the channel means, 256 -> 224."""
    return Preprocess(resize=256, crop=224, interpolation="bilinear", scale=1.0,
                      channel_order="BGR", mean=BGR_MEANS, std=(1.0, 1.0, 1.0),
                      follows="PaddlePaddle v1 model zoo tutorial's single-crop evaluation: "
                              "shorter side 256, centre 224, BGR 0..255 minus the channel means")


def is_paddle_v1_folder(path: str | Path) -> bool:
    """True for a folder holding Paddle v1 weight files (``_<layer>.w0``)."""
    path = Path(path)
    try:
        return path.is_dir() and any(child.is_file() for child in path.glob("_*.w0"))
    except OSError:
        return False


@dataclass(frozen=True)
class _Entry:
    """One expected parameter file: where it goes and what shape it has there."""

    file: str
    tensor: str
    shape: tuple[int, ...]
    transpose: bool = False  # stored (in, out), wanted (out, in)


def read_paddle_v1(folder: str | Path) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Tensors in torchvision naming and the card of a Paddle v1 ResNet parameter folder (or
    of an unpacked v2 ``parameters.to_tar`` tarball: the same files with sidecars).

    Raises ``WeightsError`` naming the file at fault when the folder is not one, a header or
    file size is wrong, a parameter is missing or unexpected, or an element count does not
    fit the architecture inferred from the folder.
    """
    source = FolderSource(Path(folder))
    tensors, spec = read_parameters(source)
    name = source.folder.resolve().name
    return tensors, paddle_card(spec, name=name, source=name, digest=folder_sha256(source.folder),
                                source_format=source.source_format)


def paddle_card(spec: ResNetSpec, name: str, source: str, digest: str,
                source_format: str) -> ModelCard:
    """The card of a Paddle ResNet: the v1 model zoo's preprocessing and ImageNet labels."""
    return ModelCard(
        name=name,
        architecture=spec.to_dict(),
        preprocess=paddle_v1_preprocess(),
        labels=(imagenet_labels() if spec.num_classes == 1000
                else [f"class {i}" for i in range(spec.num_classes)]),
        source=source,
        source_format=source_format,
        sha256=digest,
        license=None,
    )


def read_parameters(source: "ParameterSource") -> tuple[dict[str, torch.Tensor], ResNetSpec]:
    """Infer the ResNet from ``source``'s names and counts, check every file, build tensors."""
    reader = _Reader(source)
    spec = _infer_spec(reader)
    entries = _expected_entries(spec)
    _check_file_set(source, entries)
    tensors = {}
    for entry in entries:
        values = reader.values(entry.file)
        if values.size != prod(entry.shape):
            raise WeightsError(
                f"{source.where(entry.file)}: holds {values.size} values, but {entry.tensor} of "
                f"the {_describe(spec)} inferred from the {source.kind} needs {prod(entry.shape)} "
                f"({' x '.join(map(str, entry.shape))})")
        if entry.transpose:
            stored = entry.shape[::-1]                      # (input size, output size)
            dims = reader.dims(entry.file)
            if len(dims) == 2 and dims != stored:
                raise WeightsError(
                    f"{source.where(entry.file)}: its sidecar gives dims "
                    f"{' x '.join(map(str, dims))}, but {entry.tensor} of the {_describe(spec)} "
                    f"is stored as {' x '.join(map(str, stored))} (input size x output size)")
            tensor = torch.from_numpy(values.reshape(stored).T.copy())
        else:
            tensor = torch.from_numpy(values.reshape(entry.shape).copy())
        tensors[entry.tensor] = tensor
    return tensors, spec


def folder_sha256(folder: str | Path, names: list[str] | None = None) -> str:
    """SHA-256 over the parameter files and sidecars (sorted names: name, NUL, 8-byte length,
    content)."""
    folder = Path(folder)
    if names is None:
        source = FolderSource(folder)
        names = [*source.files, *source.sidecars]
    digest = hashlib.sha256()
    for name in sorted(names):
        content = (folder / name).read_bytes()
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    return digest.hexdigest()


class ParameterSource:
    """The parameter files of one saved model, by name: ``files`` (parameters) and
    ``sidecars`` (``<file>.protobuf``); ``read`` gives a file's bytes, ``where`` the name to
    show for it in messages."""

    kind = "folder"
    files: set[str]
    sidecars: set[str]

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def where(self, name: str) -> str:
        raise NotImplementedError

    @property
    def source_format(self) -> str:
        return "paddle_v2" if self.sidecars else "paddle_v1"


class FolderSource(ParameterSource):
    """A folder of parameter files: every regular file whose name starts with ``_``."""

    def __init__(self, folder: Path):
        self.folder = folder
        if not folder.exists():
            raise WeightsError(f"{folder}: no such Paddle v1 parameter folder")
        if not folder.is_dir():
            raise WeightsError(f"{folder}: not a folder; a Paddle v1 model is a folder of "
                               f"parameter files (_conv1_conv.w0, ...)")
        try:
            names = {child.name for child in folder.iterdir()
                     if child.name.startswith("_") and child.is_file()}
        except OSError as error:
            raise WeightsError(f"{folder}: cannot list the folder ({error})") from None
        self.files, self.sidecars = split_sidecars(names)
        if not any(name.endswith(".w0") for name in self.files):
            raise WeightsError(f"{folder}: holds no Paddle v1 parameter files (_<layer>.w0)")

    def read(self, name: str) -> bytes:
        try:
            return (self.folder / name).read_bytes()
        except OSError as error:
            raise WeightsError(f"{self.where(name)}: cannot read ({error})") from None

    def where(self, name: str) -> str:
        return str(self.folder / name)


def split_sidecars(names: set[str]) -> tuple[set[str], set[str]]:
    """(parameter files, ``.protobuf`` sidecars) among ``names``."""
    sidecars = {name for name in names if name.endswith(SIDECAR_SUFFIX)}
    return names - sidecars, sidecars


class _Reader:
    """Reads and checks parameter files on demand, each at most once."""

    def __init__(self, source: ParameterSource):
        self.source = source
        self.files = source.files
        self._cache: dict[str, np.ndarray] = {}
        self._configs: dict[str, ParameterConfig | None] = {}

    def has(self, name: str) -> bool:
        return name in self.files

    def require(self, name: str, meaning: str) -> None:
        if name not in self.files:
            raise WeightsError(f"{self.source.where(name)}: missing ({meaning})")

    def values(self, name: str) -> np.ndarray:
        if name not in self._cache:
            values = parse_parameter_file(self.source.read(name), self.source.where(name))
            self._check_sidecar(name, values.size)
            self._cache[name] = values
        return self._cache[name]

    def dims(self, name: str) -> tuple[int, ...]:
        self.values(name)
        config = self._configs.get(name)
        return config.dims if config is not None else ()

    def _check_sidecar(self, name: str, count: int) -> None:
        sidecar = name + SIDECAR_SUFFIX
        if sidecar not in self.source.sidecars:
            self._configs[name] = None
            return
        where = self.source.where(sidecar)
        try:
            config = parse_parameter_config(self.source.read(sidecar))
        except ValueError as error:
            raise WeightsError(f"{where}: not a PaddlePaddle ParameterConfig message "
                               f"({error})") from None
        if config.name is not None and config.name != name:
            raise WeightsError(f"{where}: describes parameter {config.name!r}, not {name!r}")
        if config.size is not None and config.size != count:
            raise WeightsError(f"{self.source.where(name)}: holds {count} values, but its "
                               f"sidecar gives size {config.size}")
        if config.dims and prod(config.dims) != count:
            raise WeightsError(f"{self.source.where(name)}: holds {count} values, but its "
                               f"sidecar gives dims {' x '.join(map(str, config.dims))}")
        self._configs[name] = config


def parse_parameter_file(data: bytes, where: str) -> np.ndarray:
    """The float32 values of one file, after checking its header against its size."""
    if len(data) < HEADER.size:
        raise WeightsError(f"{where}: {len(data)} bytes, shorter than the 16-byte Paddle v1 "
                           f"parameter header")
    file_format, value_size, count = HEADER.unpack_from(data)
    if file_format != FORMAT_ORIGINAL:
        raise WeightsError(f"{where}: header format {file_format}; only format 0 (Paddle's "
                           f"original dense layout) is supported")
    if value_size != FLOAT32_SIZE:
        raise WeightsError(f"{where}: header value size {value_size}; only 4 (float32) is "
                           f"supported")
    expected = HEADER.size + FLOAT32_SIZE * count
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise WeightsError(f"{where}: {problem}: the header announces {count} float32 values "
                           f"({expected} bytes with the header), the file has {len(data)} bytes")
    return np.frombuffer(data, dtype="<f4", offset=HEADER.size).astype(np.float32)


def _infer_spec(reader: _Reader) -> ResNetSpec:
    """Block type, blocks per stage, width, classes and conv1 bias from names and counts."""
    where = reader.source.where
    reader.require(CONV1_FILE, "the conv1 weight")
    conv1_count = reader.values(CONV1_FILE).size
    if conv1_count == 0 or conv1_count % CONV1_VALUES_PER_CHANNEL:
        raise WeightsError(f"{where(CONV1_FILE)}: holds {conv1_count} values, not a multiple "
                           f"of 3 x 7 x 7 = {CONV1_VALUES_PER_CHANNEL} (conv1 is 7x7 over 3 "
                           f"channels)")
    width = conv1_count // CONV1_VALUES_PER_CHANNEL

    blocks: dict[int, int] = {}
    for name in reader.files:
        match = BLOCK_NAME.match(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block)
    if not blocks:
        raise WeightsError(f"{where('_res2_1_branch2a_conv.w0')}: missing (no residual "
                           f"block files _res<stage>_<block>_branch... in the "
                           f"{reader.source.kind})")
    stages = sorted(blocks)
    for expected, stage in enumerate(stages, start=FIRST_STAGE):
        if stage != expected:
            raise WeightsError(f"{where(f'_res{expected}_1_branch2a_conv.w0')}: missing "
                               f"(stage res{expected} is absent but res{stage} is present)")
    block_type = ("bottleneck" if any("_branch2c_" in name for name in reader.files)
                  else "basic")

    reader.require(OUTPUT_BIAS_FILE, "the classifier bias, which gives the number of classes")
    num_classes = reader.values(OUTPUT_BIAS_FILE).size
    if num_classes == 0:
        raise WeightsError(f"{where(OUTPUT_BIAS_FILE)}: holds no values")

    return ResNetSpec(block=block_type, layers=tuple(blocks[s] for s in stages), width=width,
                      num_classes=num_classes, stride_in_1x1=True, pool1="caffe",
                      conv1_bias=reader.has(CONV1_BIAS_FILE), bn_eps=1e-5)


def _expected_entries(spec: ResNetSpec) -> list[_Entry]:
    """Every parameter file the architecture needs, in network order.

    Mirrors ``models.resnet``: a projection shortcut wherever a stage's first block changes
    the resolution or the width.
    """
    expansion = 4 if spec.block == "bottleneck" else 1
    entries = [_Entry(CONV1_FILE, "conv1.weight", (spec.width, 3, 7, 7))]
    if spec.conv1_bias:
        entries.append(_Entry(CONV1_BIAS_FILE, "conv1.bias", (spec.width,)))
    entries += _bn_entries("_conv1_bn", "bn1", spec.width)
    in_channels = spec.width
    for stage_index, blocks in enumerate(spec.layers):
        planes = spec.width * 2 ** stage_index
        out_channels = planes * expansion
        for block_index in range(blocks):
            paddle = f"_res{stage_index + FIRST_STAGE}_{block_index + 1}_branch"
            torch_name = f"layer{stage_index + 1}.{block_index}"
            block_in = in_channels if block_index == 0 else out_channels
            if spec.block == "bottleneck":
                convs = [("2a", (planes, block_in, 1, 1)), ("2b", (planes, planes, 3, 3)),
                         ("2c", (out_channels, planes, 1, 1))]
            else:
                convs = [("2a", (planes, block_in, 3, 3)), ("2b", (planes, planes, 3, 3))]
            for branch, shape in convs:
                module = BRANCH_MODULES[branch]
                entries.append(_Entry(f"{paddle}{branch}_conv.w0",
                                      f"{torch_name}.conv{module}.weight", shape))
                entries += _bn_entries(f"{paddle}{branch}_bn", f"{torch_name}.bn{module}",
                                       shape[0])
            if block_index == 0 and (stage_index > 0 or block_in != out_channels):
                entries.append(_Entry(f"{paddle}1_conv.w0", f"{torch_name}.downsample.0.weight",
                                      (out_channels, block_in, 1, 1)))
                entries += _bn_entries(f"{paddle}1_bn", f"{torch_name}.downsample.1",
                                       out_channels)
        in_channels = out_channels
    entries.append(_Entry(OUTPUT_WEIGHT_FILE, "fc.weight", (spec.num_classes, in_channels),
                          transpose=True))
    entries.append(_Entry(OUTPUT_BIAS_FILE, "fc.bias", (spec.num_classes,)))
    return entries


def _bn_entries(paddle_layer: str, torch_module: str, channels: int) -> list[_Entry]:
    return [_Entry(f"{paddle_layer}.{suffix}", f"{torch_module}.{field}", (channels,))
            for suffix, field in BN_SUFFIXES.items()]


def _check_file_set(source: ParameterSource, entries: list[_Entry]) -> None:
    """Every expected file present, no parameter file left over."""
    for entry in entries:
        if entry.file not in source.files:
            meaning = entry.tensor
            suffix = entry.file.rsplit(".", 1)[1]
            if entry.file.split(".")[0].endswith("_bn"):
                meaning = f"{BN_MEANING[suffix]}, {entry.tensor}"
            raise WeightsError(f"{source.where(entry.file)}: missing ({meaning})")
    unexpected = sorted(source.files - {entry.file for entry in entries})
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f", … ({len(unexpected) - 5} more)"
                                             if len(unexpected) > 5 else "")
        raise WeightsError(f"{source.where(unexpected[0])}: unexpected parameter file(s) for "
                           f"the ResNet inferred from the {source.kind}: {shown}")


def _describe(spec: ResNetSpec) -> str:
    return (f"{spec.block} ResNet (width {spec.width}, blocks {list(spec.layers)}, "
            f"{spec.num_classes} classes)")
