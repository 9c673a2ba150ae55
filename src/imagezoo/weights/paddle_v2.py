"""PaddlePaddle v2 parameter tarballs (``parameters.to_tar``), read as they are.

Conventions of the source, from ``python/paddle/v2/parameters.py`` (PaddlePaddle/Paddle):

* ``Parameters.to_tar(f)`` opens ``tarfile.TarFile(fileobj=f, mode='w')`` (a plain,
  uncompressed tar; users often gzip it, which ``tarfile`` reads as well) and adds, for each
  parameter name ``nm``, a member named ``nm`` holding ``serialize(nm)`` and a member named
  ``nm + ".protobuf"`` holding ``ParameterConfig.SerializeToString()``. Members sit at the top
  level, without folders.
* ``serialize`` writes ``struct.pack("IIQ", 0, 4, size)`` (format 0, value size 4, element
  count: the v1 file header, see ``weights.paddle_v1``) and then the float32 values, so each
  parameter member is exactly a v1 parameter file.
* ``from_tar`` first reads every ``*.protobuf`` member as a ``ParameterConfig`` and then each
  parameter by name, reshaped to ``get_shape``: ``dims`` when the config has them, else
  ``(1, size)`` (``weights.paddle_config``).

Parameter names are those the network configuration gave its layers; the ResNet is inferred
from the v1 model zoo's names (``_conv1_conv.w0``, ``_res2_1_branch2a_bn.w1``, ``_output.w0``,
...), exactly as for a v1 folder, and the card assumes the zoo's preprocessing (BGR, 0..255,
channel means): the tarball records no preprocessing.

Safety: the archive is never extracted. Members are read into memory with
``TarFile.extractfile``; a member whose name is absolute or climbs out with ``..`` makes the
whole file refused, as does a parameter-named member that is not a regular file (a link,
device or folder); other members (folders, files below a folder, names not starting with
``_``) are ignored. The card's ``sha256`` is the SHA-256 of the tarball file.
"""
from __future__ import annotations

import logging
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import torch

from ..card import ModelCard
from ..errors import WeightsError
from .paddle_v1 import ParameterSource, paddle_card, read_parameters, split_sidecars
from .store import sha256_of

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")
# What tarfile and the decompressors raise for a damaged or truncated archive.
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


def is_paddle_v2_tarball(path: str | os.PathLike) -> bool:
    """True for a tar archive (plain or compressed) with a top-level ``_<layer>.w0`` file."""
    path = Path(path)
    try:
        if not path.is_file() or not tarfile.is_tarfile(path):
            return False
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = _member_name(member.name)
                if member.isreg() and _is_parameter_name(name) and name.endswith(".w0"):
                    return True
    except _ARCHIVE_ERRORS:
        return False
    return False


def read_paddle_v2_tar(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Tensors in torchvision naming and the card of a v2 ``parameters.to_tar`` tarball."""
    source = TarSource(Path(path))
    tensors, spec = read_parameters(source)
    name = _stem(source.path)
    card = paddle_card(spec, name=name, source=source.path.name, digest=sha256_of(source.path),
                       source_format="paddle_v2")
    return tensors, card


class TarSource(ParameterSource):
    """The top-level parameter members of a tarball, read into memory in one pass."""

    kind = "tarball"

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            raise WeightsError(f"{path}: no such PaddlePaddle parameter tarball")
        if not path.is_file():
            raise WeightsError(f"{path}: not a file; a PaddlePaddle v2 tarball is one .tar file")
        self.contents: dict[str, bytes] = {}
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    self._take(tar, member)
        except WeightsError:
            raise
        except _ARCHIVE_ERRORS as error:
            raise WeightsError(f"{path}: unreadable tar archive, truncated or damaged "
                               f"({type(error).__name__}: {error})") from None
        self.files, self.sidecars = split_sidecars(set(self.contents))
        if not any(name.endswith(".w0") for name in self.files):
            raise WeightsError(f"{path}: holds no PaddlePaddle parameter files (_<layer>.w0) at "
                               f"its top level, where parameters.to_tar puts them")

    def _take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _member_name(member.name)
        parts = PurePosixPath(name).parts
        if member.name.startswith("/") or ".." in parts:
            raise WeightsError(f"{self.path}: member {member.name!r} points outside the archive "
                               f"(absolute or with '..'); refused")
        if not _is_parameter_name(name):
            log.debug("%s: member %r ignored", self.path, member.name)
            return
        if not member.isreg():
            raise WeightsError(f"{self.where(name)}: a {_member_kind(member)}, not a regular "
                               f"file; refused")
        if name in self.contents:
            raise WeightsError(f"{self.where(name)}: appears twice in the archive")
        handle = tar.extractfile(member)
        data = handle.read() if handle is not None else b""
        if len(data) != member.size:
            raise WeightsError(f"{self.where(name)}: truncated: the archive announces "
                               f"{member.size} bytes, {len(data)} could be read")
        self.contents[name] = data

    def read(self, name: str) -> bytes:
        return self.contents[name]

    def where(self, name: str) -> str:
        return f"{self.path}:{name}"


def _member_name(name: str) -> str:
    """A member name without the ``./`` that ``tar -C folder .`` puts in front."""
    while name.startswith("./"):
        name = name[2:]
    return name


def _is_parameter_name(name: str) -> bool:
    return name.startswith("_") and "/" not in name


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.isdir():
        return "folder"
    return "special file (device or FIFO)"


def _stem(path: Path) -> str:
    for suffix in TAR_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return path.stem


__all__ = ["TarSource", "is_paddle_v2_tarball", "read_paddle_v2_tar"]
