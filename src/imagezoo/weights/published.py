"""Where the pretrained ResNet weights were published, and the checksums their publishers give.

``published_weights(model, source)`` looks one up; ``PublishedWeights.fetch()`` downloads it
into the cache with ``store.fetch`` and checks it. None of these hosts is reachable without a
network; each entry says where its URL and checksum come from, so a user can fetch the file by
hand and put it at ``store.cache_path(entry.url)``.

Sources:

* ``torchvision``: ``IMAGENET1K_V1`` state dicts (``.pth``). torchvision publishes the first 8
  hex digits of each file's SHA-256 in its name, which is the only checksum it gives.
* ``matconvnet``: MatConvNet DagNN ``.mat`` files converted from the MSRA Caffe models
  (ResNet-50/101/152 only). MatConvNet publishes MD5 sums, no SHA-256.
* ``paddle_v1``: the PaddlePaddle v1 model zoo, a ``.tar.gz`` per depth (50/101/152) of a folder
  of raw parameter files (``_res2_1_branch1_bn.w0`` ...). No checksum is published; the download
  is unverified and ``fetch`` logs its SHA-256.
"""
from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError
from .store import fetch

TORCHVISION = "torchvision"
MATCONVNET = "matconvnet"
PADDLE_V1 = "paddle_v1"


@dataclass(frozen=True)
class PublishedWeights:
    """One published weight file: what it is, where it is, how to check it, who says so."""

    model: str                 # imagezoo model name: resnet18 ... resnet152
    source: str                # torchvision | matconvnet | paddle_v1
    url: str
    sha256: str | None         # hex digest, or a prefix of 8+ digits; None when none is published
    format: str                # as weights.formats.FORMATS names it: torch | matconvnet | paddle_v1
    citation: str              # where the URL and the checksum were read
    md5: str | None = None     # a published MD5, where that is all the publisher gives
    archive: str | None = None  # "tar.gz" when the file must be unpacked to reach ``format``

    def fetch(self, cache_dir: str | os.PathLike | None = None, progress: bool | None = None,
              verify: bool = False, timeout: float = 30) -> Path:
        """The file in the cache, downloaded and checked first if needed (see ``store.fetch``)."""
        return fetch(self.url, self.sha256, cache_dir=cache_dir, progress=progress,
                     verify=verify, timeout=timeout, md5=self.md5)


# torchvision/models/resnet.py (pytorch/vision): ResNet{18,34,50,101,152}_Weights.IMAGENET1K_V1
# urls. The 8 hex digits in each name are the first digits of the file's SHA-256, the convention
# torch.hub.load_state_dict_from_url(check_hash=True) checks ("filename-<sha256>.ext where
# <sha256> is the first eight or more digits of the SHA256 hash", PyTorch docs, torch.hub).
_TORCHVISION_CITATION = ("torchvision/models/resnet.py, ResNet*_Weights.IMAGENET1K_V1; the "
                         "8 hex digits in the file name are the SHA-256 prefix (torch.hub "
                         "check_hash convention)")
_TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
}

# vlfeat/matconvnet doc/site/docs/pretrained.md (the "Pretrained models" page,
# www.vlfeat.org/matconvnet/pretrained): the ImageNet ResNet links models/imagenet-resnet-*-dag.mat
# and the MD5 table under "File checksums". The Knet.jl ResNet example loads
# http://www.vlfeat.org/matconvnet/models/imagenet-resnet-101-dag.mat from the same folder.
_MATCONVNET_CITATION = ("MatConvNet 'Pretrained models' page (vlfeat/matconvnet "
                        "doc/site/docs/pretrained.md), ResNet links and 'File checksums' MD5 "
                        "table; no SHA-256 is published")
_MATCONVNET_BASE = "https://www.vlfeat.org/matconvnet/models/"
_MATCONVNET_MD5 = {
    50: "73a3e51b75230d431c88bb795e14e91d",
    101: "be19a35a2b4f4c46ed61df684d08b900",
    152: "4461d3640d55aa2f58d990f7c92ff28c",
}

# PaddlePaddle/Paddle demo/model_zoo/resnet/get_model.sh downloads resnet_50.tar.gz,
# resnet_101.tar.gz, resnet_152.tar.gz (and mean_meta_224.tar.gz) from
# http://paddlepaddle.bj.bcebos.com/model_zoo/imagenet/ with no checksum;
# doc/tutorials/imagenet_model/resnet_model_en.md describes their parameter files
# (_res2_1_branch1_bn.w0 ..., a 16-byte header then float32). PaddlePaddle/models'
# image_classification/models/model_download.sh gives MD5s only for other files: v2-API
# parameter tars converted by caffe2paddle (Paddle_ResNet50.tar.gz, MD5
# eb4d7b5962c9954340207788af0d6967; Paddle_ResNet101.tar.gz, 7e71f24998aa8e434fa164a7c4fc9c02)
# behind cloud.dlnel.org/filepub/?uuid=... links, a different format, so not listed here.
_PADDLE_V1_CITATION = ("PaddlePaddle/Paddle demo/model_zoo/resnet/get_model.sh (v1 model zoo; "
                       "format in doc/tutorials/imagenet_model/resnet_model_en.md); no checksum "
                       "is published")
_PADDLE_V1_BASE = "http://paddlepaddle.bj.bcebos.com/model_zoo/imagenet/"

PUBLISHED: tuple[PublishedWeights, ...] = (
    *(PublishedWeights(model, TORCHVISION, "https://download.pytorch.org/models/" + name,
                       sha256=name.rsplit("-", 1)[1].split(".")[0], format="torch",
                       citation=_TORCHVISION_CITATION)
      for model, name in _TORCHVISION_FILES.items()),
    *(PublishedWeights(f"resnet{depth}", MATCONVNET,
                       f"{_MATCONVNET_BASE}imagenet-resnet-{depth}-dag.mat",
                       sha256=None, md5=md5, format="matconvnet",
                       citation=_MATCONVNET_CITATION)
      for depth, md5 in _MATCONVNET_MD5.items()),
    *(PublishedWeights(f"resnet{depth}", PADDLE_V1, f"{_PADDLE_V1_BASE}resnet_{depth}.tar.gz",
                       sha256=None, format="paddle_v1", archive="tar.gz",
                       citation=_PADDLE_V1_CITATION)
      for depth in (50, 101, 152)),
)


def published_weights(model: str, source: str = TORCHVISION) -> PublishedWeights:
    """The published weights of ``model`` (``resnet50`` ...) from ``source``.

    Raises ``WeightsError`` listing what is published when there is no such entry.
    """
    for entry in PUBLISHED:
        if entry.model == model and entry.source == source:
            return entry
    sources: dict[str, list[str]] = {}
    for entry in PUBLISHED:
        sources.setdefault(entry.source, []).append(entry.model)
    available = "; ".join(f"{name}: {', '.join(models)}" for name, models in sources.items())
    raise WeightsError(f"no published weights for {model!r} from {source!r}; published are "
                       f"{available}")


def fetch_published(model: str, source: str, cache_dir: str | os.PathLike | None = None,
                    progress: bool | None = None, verify: bool = False) -> Path:
    """The published weights of ``model`` from ``source`` as a path ``load_model`` reads.

    A tarball (Paddle's zoo) is unpacked once into a folder beside it in the cache; the folder
    holding the ``_*.w0`` parameter files is returned.
    """
    entry = published_weights(model, source)
    path = entry.fetch(cache_dir=cache_dir, progress=progress, verify=verify)
    if entry.archive == "tar.gz":
        return unpack_parameter_folder(path)
    return path


def unpack_parameter_folder(archive: Path) -> Path:
    """Unpack a ``.tar.gz`` of parameter files (safely) and return the folder of ``_*.w0`` files."""
    from .paddle_v1 import is_paddle_v1_folder
    target = archive.with_name(archive.name.removesuffix(".tar.gz"))
    if not target.is_dir():
        staging = archive.with_name(f".{target.name}.unpacking")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # The "data" filter refuses absolute paths, links out of the folder and devices.
                tar.extractall(staging, filter="data")
        except (tarfile.TarError, OSError) as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise WeightsError(f"{archive}: cannot unpack ({error}); delete it and fetch again") from None
        os.replace(staging, target)
    for folder in [target, *sorted(p for p in target.rglob("*") if p.is_dir())]:
        if is_paddle_v1_folder(folder):
            return folder
    raise WeightsError(f"{archive}: holds no PaddlePaddle v1 parameter files (_*.w0)")
