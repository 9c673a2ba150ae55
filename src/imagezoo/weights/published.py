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
* ``akamaster``: the CIFAR-10 ResNets of the paper's section 4.2 (``resnet20_cifar`` ..
  ``resnet56_cifar``) trained and published by Yerlan Idelbayev in the GitHub repository
  ``akamaster/pytorch_resnet_cifar10`` (BSD-2-Clause), legacy ``torch.save`` files. The URLs
  are pinned to a commit; the SHA-256s are the files' whole digests (their names carry the
  first 8 digits, torch.hub's convention).
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
AKAMASTER = "akamaster"


@dataclass(frozen=True)
class PublishedWeights:
    """One published weight file: what it is, where it is, how to check it, who says so."""

    model: str                 # imagezoo model name: resnet18 ... resnet152, resnet20_cifar ...
    source: str                # torchvision | matconvnet | paddle_v1 | akamaster
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

# akamaster/pytorch_resnet_cifar10, folder pretrained_models/ at commit d5489e89 (the files and
# their digests as kept in ../shared/weights/cifar10/README.md). The publisher's README also
# lists ResNet-110 (6.32 %); its file is not pinned here, so resnet110_cifar has no entry.
_AKAMASTER_CITATION = ("akamaster/pytorch_resnet_cifar10 pretrained_models/ at commit "
                       "d5489e8995e81e91ce6b1d69dcc98ad579b0b153; whole SHA-256 digests of the "
                       "files (their names carry the first 8 digits)")
_AKAMASTER_BASE = ("https://github.com/akamaster/pytorch_resnet_cifar10/raw/"
                   "d5489e8995e81e91ce6b1d69dcc98ad579b0b153/pretrained_models/")
_AKAMASTER_FILES = {  # model: (file, SHA-256)
    "resnet20_cifar": ("resnet20-12fca82f.th",
                       "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    "resnet32_cifar": ("resnet32-d509ac18.th",
                       "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    "resnet44_cifar": ("resnet44-014dd654.th",
                       "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    "resnet56_cifar": ("resnet56-4bfd9763.th",
                       "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
}

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
    *(PublishedWeights(model, AKAMASTER, _AKAMASTER_BASE + name, sha256=sha256, format="torch",
                       citation=_AKAMASTER_CITATION)
      for model, (name, sha256) in _AKAMASTER_FILES.items()),
)


AUTO = "auto"


def publishers_of(model: str) -> list[str]:
    """The sources that publish weights for ``model``, in ``PUBLISHED`` order."""
    return [entry.source for entry in PUBLISHED if entry.model == model]


def published_weights(model: str, source: str = TORCHVISION) -> PublishedWeights:
    """The published weights of ``model`` (``resnet50`` ...) from ``source``; ``"auto"`` is
    the model's first publisher (torchvision for the ImageNet ResNets, akamaster for the
    CIFAR ones).

    Raises ``WeightsError`` listing what is published when there is no such entry.
    """
    if source == AUTO and publishers_of(model):
        source = publishers_of(model)[0]
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
