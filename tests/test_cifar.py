"""The CIFAR-10 ResNets of the ResNet paper: the architecture, the publisher's trained files
as published, CIFAR-10's own file layouts read safely, and accuracy on real images.

The trained files and the test images live in ../shared (weights/cifar10, data/cifar10-test);
the tests that need them are skipped, saying so, where it is absent.
"""
from __future__ import annotations

import contextlib
import copyreg
import dataclasses
import hashlib
import io
import math
import os
import pickle
import random
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import imagezoo
from imagezoo.choices import PUBLISHERS
from imagezoo.data.cifar10 import (CIFAR10_CLASSES, export_class_folders, read_cifar10,
                                   to_records)
from imagezoo.data.datasets import LabelledSet, read_class_folders, read_labelled_set
from imagezoo.data.images import load_image
from imagezoo.errors import DatasetError, WeightsMismatchError
from imagezoo.models.registry import CIFAR_ERRORS, build_model, default_card
from imagezoo.models.resnet import ResNet
from imagezoo.models.resnet_cifar import CifarResNet, ZeroPadShortcut, resnet_cifar
from imagezoo.models.specs import CifarResNetSpec, cifar_resnet_spec
from imagezoo.weights import published
from imagezoo.weights.store import ChecksumError, sha256_of
from conftest import CAT_PHOTO, ROOT
from httpserver import StaticServer

SHARED = ROOT.parent / "shared"
FILES = {"resnet20_cifar": "resnet20-12fca82f.th", "resnet32_cifar": "resnet32-d509ac18.th",
         "resnet44_cifar": "resnet44-014dd654.th", "resnet56_cifar": "resnet56-4bfd9763.th"}
# Top-1 error of each file on all 10,000 images of the shared JPEG copy, measured by
# benchmarks/bench_cifar.py (RESULTS-cifar.md); the seeded sample below must come close.
FULL_SET_ERROR = {"resnet20_cifar": 0.1897, "resnet32_cifar": 0.1744,
                  "resnet44_cifar": 0.1733, "resnet56_cifar": 0.1680}
SAMPLE_PER_CLASS, SAMPLE_SEED = 30, 2015


def shared(*parts: str) -> Path:
    """A file or folder of ../shared, or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared, with the CIFAR-10 weights and test images, "
                    f"is not beside the project)")
    return path


def weights_of(model: str) -> Path:
    return shared("weights", "cifar10", FILES[model])


@pytest.fixture(scope="module")
def test_images() -> Path:
    return shared("data", "cifar10-test")


@pytest.fixture(scope="module")
def sample(test_images) -> LabelledSet:
    """A fixed sample of the shared test images: SAMPLE_PER_CLASS per class, chosen by a seed."""
    full = read_class_folders(test_images, list(CIFAR10_CLASSES))
    chooser = random.Random(SAMPLE_SEED)
    items = []
    for label in range(len(CIFAR10_CLASSES)):
        items += chooser.sample([item for item in full.items if item[1] == label], SAMPLE_PER_CLASS)
    return LabelledSet(items, full.classes, full.source)


@pytest.fixture(scope="module")
def resnet20():
    return imagezoo.load_model("resnet20_cifar", weights=weights_of("resnet20_cifar"))


# ------------------------------------------------------------------------------------------
# The architecture


@pytest.mark.parametrize("depth, parameters, published_count", [
    (20, 269_722, "0.27"), (32, 464_154, "0.46"), (44, 658_586, "0.66"), (56, 853_018, "0.85"),
    (110, 1_727_962, "1.7")])
def test_parameter_counts_are_the_papers(depth, parameters, published_count):
    model = build_model(default_card(f"resnet{depth}_cifar").architecture)
    count = sum(p.numel() for p in model.parameters())
    assert count == parameters
    digits = 2 if count < 1e6 else 1          # as the paper and the publisher round them
    assert f"{count / 1e6:.{digits}f}" == published_count


def test_any_6n_plus_2_depth_builds_and_others_are_refused():
    spec = cifar_resnet_spec(8)
    assert spec.layers == (1, 1, 1) and spec.depth == 8
    model = resnet_cifar(8).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert cifar_resnet_spec(1202).layers == (200, 200, 200)
    for depth in (21, 2, 57):
        with pytest.raises(ValueError, match="6n\\+2"):
            cifar_resnet_spec(depth)
    with pytest.raises(ValueError, match="basic blocks"):
        CifarResNetSpec(block="bottleneck")
    with pytest.raises(ValueError, match="shortcut"):
        CifarResNetSpec(shortcut="C")


def test_layout_is_the_papers_section_4_2():
    model = resnet_cifar(20).eval()
    assert isinstance(model, ResNet) and not hasattr(model, "maxpool")
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.out_channels) == ((3, 3), (1, 1), 16)
    shapes = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name in ("layer1", "layer2", "layer3", "avgpool")]
    model(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert shapes == {"layer1": (1, 16, 32, 32), "layer2": (1, 32, 16, 16),
                      "layer3": (1, 64, 8, 8), "avgpool": (1, 64, 1, 1)}
    assert model.fc.in_features == 64 and model.fc.out_features == 10


def test_option_a_is_the_publishers_lambda_and_has_no_parameters():
    x = torch.randn(2, 16, 32, 32)
    shortcut = ZeroPadShortcut(16, 32, 2)
    planes = 32   # the publisher's F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4))
    expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)
    assert torch.equal(shortcut(x), expected)
    assert not list(shortcut.parameters())
    model = resnet_cifar(20)
    assert isinstance(model.layer2[0].downsample, ZeroPadShortcut)
    assert model.layer1[0].downsample is None and model.layer2[1].downsample is None


def test_option_b_projects_with_a_strided_1x1_convolution():
    model = resnet_cifar(20, shortcut="B").eval()
    projection = model.layer3[0].downsample
    assert isinstance(projection, torch.nn.Sequential)
    assert (projection[0].kernel_size, projection[0].stride) == ((1, 1), (2, 2))
    assert sum(p.numel() for p in model.parameters()) == 269_722 + 16 * 32 + 64 + 32 * 64 + 128
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# ------------------------------------------------------------------------------------------
# The publisher's files, as published


def publisher_forward(state: dict, x: torch.Tensor, blocks: int) -> torch.Tensor:
    """akamaster/pytorch_resnet_cifar10's resnet.py forward pass, written out on its own
    tensors (``module.`` keys, ``linear`` head), as an independent reference."""
    def bn(value, prefix):
        return F.batch_norm(value, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)
    out = F.relu(bn(F.conv2d(x, state["module.conv1.weight"], padding=1), "module.bn1"))
    in_planes = 16
    for stage, planes in enumerate((16, 32, 64), start=1):
        for index in range(blocks):
            stride = 2 if stage > 1 and index == 0 else 1
            prefix = f"module.layer{stage}.{index}"
            y = F.relu(bn(F.conv2d(out, state[f"{prefix}.conv1.weight"], stride=stride, padding=1),
                          f"{prefix}.bn1"))
            y = bn(F.conv2d(y, state[f"{prefix}.conv2.weight"], padding=1), f"{prefix}.bn2")
            if stride != 1 or in_planes != planes:
                shortcut = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4),
                                 "constant", 0)
            else:
                shortcut = out
            out = F.relu(y + shortcut)
            in_planes = planes
    out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
    return F.linear(out, state["module.linear.weight"], state["module.linear.bias"])


@pytest.mark.parametrize("model_name", list(FILES))
def test_publishers_file_loads_as_it_is_and_computes_the_publishers_function(model_name, sample):
    path = weights_of(model_name)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"best_prec1", "state_dict"}
    assert all(key.startswith("module.") for key in raw["state_dict"])
    model = imagezoo.load_model(path)       # detected from the keys alone
    card = model.card
    assert isinstance(model, CifarResNet) and card.architecture == default_card(model_name).architecture
    assert card.labels == list(CIFAR10_CLASSES) and card.sha256 == sha256_of(path)
    assert card.preprocess.input_size == 32 and card.preprocess.scale == pytest.approx(1 / 255)
    assert card.preprocess.mean == (0.485, 0.456, 0.406) and card.preprocess.std == (0.229, 0.224, 0.225)
    assert "BSD-2-Clause" in card.license
    depth = int(model_name.removeprefix("resnet").removesuffix("_cifar"))
    assert card.reference_accuracy["top1"] == pytest.approx(100 - CIFAR_ERRORS[depth][1])
    x = imagezoo.preprocess(sample.items[0][0], card)
    for path_, _ in sample.items[1:16]:
        x = torch.cat([x, imagezoo.preprocess(path_, card)])
    with torch.no_grad():
        torch.testing.assert_close(model(x), publisher_forward(raw["state_dict"], x, (depth - 2) // 6),
                                   rtol=1e-5, atol=1e-5)


def test_registry_name_with_the_file_and_a_file_of_another_depth(resnet20):
    assert resnet20.card.name == "resnet20_cifar" and resnet20.card.source == FILES["resnet20_cifar"]
    with pytest.raises(WeightsMismatchError):
        imagezoo.load_model("resnet56_cifar", weights=weights_of("resnet20_cifar"))


@pytest.mark.parametrize("model_name", list(FILES))
def test_a_seeded_sample_of_real_test_images_is_classified_well(model_name, sample):
    model = imagezoo.load_model(model_name, weights=weights_of(model_name))
    result = imagezoo.evaluate(model, sample, top=1, batch_size=50, workers=0)
    assert result.count == len(sample) == SAMPLE_PER_CLASS * 10 and not result.failed
    error = 1 - result.top1
    assert error < 0.35, "chance is 0.9"
    full = FULL_SET_ERROR[model_name]
    # Three standard errors of a binomial proportion over the sample.
    assert abs(error - full) <= 3 * math.sqrt(full * (1 - full) / len(sample)), (error, full)
    assert all(entry["accuracy"] > 0.4 for entry in result.per_class.values())


def test_the_bundled_cat_photo_is_a_cat():
    model = imagezoo.load_model("resnet56_cifar", weights=weights_of("resnet56_cifar"))
    [result] = imagezoo.classify(model, CAT_PHOTO, top=3)
    assert result.predictions[0].label == "cat"
    assert model.card.preprocess.describe() == "shorter side to 32 (bilinear), centre 32x32"


# ------------------------------------------------------------------------------------------
# Published weights: downloaded, checked, cached


def serve_as(monkeypatch, model: str, url: str, sha256: str) -> None:
    entries = tuple(dataclasses.replace(e, url=url, sha256=sha256)
                    if (e.model, e.source) == (model, published.AKAMASTER) else e
                    for e in published.PUBLISHED)
    monkeypatch.setattr(published, "PUBLISHED", entries)


def test_published_entries_pin_the_files_by_their_whole_sha256():
    for model, name in FILES.items():
        entry = published.published_weights(model, "akamaster")
        assert entry.url.endswith(f"/d5489e8995e81e91ce6b1d69dcc98ad579b0b153/pretrained_models/{name}")
        assert entry.sha256 == sha256_of(weights_of(model)) and entry.sha256.startswith(name[9:17])
        assert published.published_weights(model, "auto") is entry
    assert "akamaster" in PUBLISHERS


def test_pretrained_downloads_checks_and_caches(tmp_path, monkeypatch):
    path = weights_of("resnet20_cifar")
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path / "cache"))
    with StaticServer({f"/{path.name}": path.read_bytes()}) as server:
        serve_as(monkeypatch, "resnet20_cifar", f"{server.base_url}/{path.name}", sha256_of(path))
        model = imagezoo.load_model("resnet20_cifar", pretrained="akamaster")
        again = imagezoo.load_model("resnet20_cifar", pretrained="akamaster")
        assert server.requests == [f"/{path.name}"]
    assert (tmp_path / "cache" / path.name).read_bytes() == path.read_bytes()
    assert model.card.labels == list(CIFAR10_CLASSES) and model.card.sha256 == sha256_of(path)
    assert imagezoo.classify(again, CAT_PHOTO, top=1)[0].predictions[0].label == "cat"


def test_pretrained_download_with_the_wrong_sha256_is_discarded(tmp_path, monkeypatch):
    path = weights_of("resnet20_cifar")
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMAGEZOO_CACHE", str(cache))
    wrong = hashlib.sha256(b"not these bytes").hexdigest()
    with StaticServer({f"/{path.name}": path.read_bytes()}) as server:
        serve_as(monkeypatch, "resnet20_cifar", f"{server.base_url}/{path.name}", wrong)
        with pytest.raises(ChecksumError, match=wrong):
            imagezoo.load_model("resnet20_cifar", pretrained="akamaster")
    assert not cache.exists() or list(cache.iterdir()) == []


# ------------------------------------------------------------------------------------------
# The paths every model takes: features, layers, fine-tuning, export, engines, serving


def test_features_and_the_publishers_layer_names(resnet20, sample):
    features = imagezoo.extract_features(resnet20, [p for p, _ in sample.items[:6]],
                                         layers=["layer3", "avgpool", "linear",
                                                 "layer2.0.shortcut"], workers=0)
    assert features["layer3"].shape == (6, 64, 8, 8)
    assert features["avgpool"].shape == (6, 64, 1, 1) or features["avgpool"].shape == (6, 64)
    assert features["linear"].shape == (6, 10)
    assert features["layer2.0.shortcut"].shape == (6, 32, 16, 16)
    layers = {layer.name: layer for layer in imagezoo.list_layers(resnet20, size=32)}
    assert layers["fc"].aliases == ["linear"] and layers["fc"].output_shape == (1, 10)
    assert "res2a" not in {alias for layer in layers.values() for alias in layer.aliases}


def test_export_onnx_and_engines_give_the_models_numbers(resnet20, sample, tmp_path):
    x = torch.cat([imagezoo.preprocess(p, resnet20.card) for p, _ in sample.items[:8]])
    with torch.no_grad():
        expected = resnet20(x)
    onnx_path = imagezoo.export_onnx(resnet20, tmp_path / "resnet20.onnx")  # checked in ORT
    exported = imagezoo.load_model(onnx_path)
    assert exported.card.labels == list(CIFAR10_CLASSES)
    [theirs] = imagezoo.classify(exported, CAT_PHOTO, top=1)
    assert theirs.predictions[0].label == "cat"
    for backend in ("onnxruntime", "torch-fast"):   # torch-fast folds batch norm
        engine = imagezoo.optimize(resnet20, backend=backend, batch_size=8, cache_dir=tmp_path)
        assert engine.backend == backend and engine.precision == "exact"
        np.testing.assert_allclose(engine(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_finetune_from_a_cifar_resnet(resnet20, test_images, tmp_path):
    full = read_class_folders(test_images, list(CIFAR10_CLASSES))
    two = [item for item in full.items if item[1] in (3, 5)]   # cat and dog
    chooser = random.Random(0)
    train = LabelledSet([(p, int(label == 5)) for p, label in chooser.sample(two, 40)],
                        ["cat", "dog"], "cats and dogs")
    result = imagezoo.finetune(train, tmp_path / "catdog", model=resnet20, epochs=2, lr=0.05,
                               batch_size=20, workers=0, log_stream=None)
    again = imagezoo.load_model(tmp_path / "catdog")
    assert again.card.architecture["family"] == "resnet_cifar" and again.card.labels == ["cat", "dog"]
    assert again.fc.out_features == 2 and len(result.history) == 2
    assert again.card.preprocess.input_size == 32


def test_served_over_http():
    testclient = pytest.importorskip("fastapi.testclient", reason="the serve extra is not installed")
    from imagezoo.serve import create_app
    model = imagezoo.load_model("resnet56_cifar", weights=weights_of("resnet56_cifar"))
    client = testclient.TestClient(create_app(model, top=3))
    answer = client.post("/api/classify", files={"file": ("cat.png", CAT_PHOTO.read_bytes(), "image/png")})
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "cat"
    assert client.get("/api/model").json()["input_size"] == 32


# ------------------------------------------------------------------------------------------
# CIFAR-10's own files


class Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` with Python 2's string opcodes (SHORT_BINSTRING / BINSTRING), as the
    dataset's authors' cPickle did, so the batches written here have the official files'
    structure (read back with ``encoding="bytes"``)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_string(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_string


def python2_pickle(value) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(value)
    # NumPy 2 names its module numpy._core; the official files (NumPy 1) say numpy.core.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


@pytest.fixture(scope="module")
def small_cifar(test_images) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Three real test images per class (their decoded pixels), labels and files."""
    full = read_class_folders(test_images, list(CIFAR10_CLASSES))
    by_label = {label: [item for item in full.items if item[1] == label] for label in range(10)}
    chosen = [by_label[label][i] for label in range(10) for i in (0, 300, 600)]
    random.Random(0).shuffle(chosen)   # records in no particular class order
    images = np.stack([np.asarray(load_image(path)) for path, _ in chosen])
    labels = np.array([label for _, label in chosen])
    return images, labels, [Path(path) for path, _ in chosen]


def write_binary_version(root: Path, images, labels) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "test_batch.bin").write_bytes(to_records(images, labels))
    for number in range(1, 6):    # train batches: a slice each
        part = slice(6 * (number - 1), 6 * number)
        (folder / f"data_batch_{number}.bin").write_bytes(to_records(images[part], labels[part]))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return folder


def write_python_version(root: Path, images, labels, test_batch: bytes | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(part, name: bytes) -> bytes:
        rows = np.ascontiguousarray(images[part].transpose(0, 3, 1, 2)).reshape(-1, 3072)
        return python2_pickle({b"batch_label": name, b"labels": [int(v) for v in labels[part]],
                               b"data": rows, b"filenames": [b"img_%d.png" % i for i in range(len(rows))]})

    (folder / "test_batch").write_bytes(test_batch or batch(slice(None), b"testing batch 1 of 1"))
    for number in range(1, 6):
        (folder / f"data_batch_{number}").write_bytes(
            batch(slice(6 * (number - 1), 6 * number), b"training batch %d of 5" % number))
    (folder / "batches.meta").write_bytes(python2_pickle(
        {b"label_names": [name.encode() for name in CIFAR10_CLASSES],
         b"num_cases_per_batch": 10000, b"num_vis": 3072}))
    return folder


def tarball(folder: Path, name: str) -> Path:
    path = folder.parent / name
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return path


@pytest.mark.parametrize("layout", ["binary", "python"])
@pytest.mark.parametrize("form", ["folder", "parent folder", "tarball", "batch file"])
def test_both_layouts_round_trip_exactly(small_cifar, tmp_path, layout, form):
    images, labels, _ = small_cifar
    writer = write_binary_version if layout == "binary" else write_python_version
    folder = writer(tmp_path, images, labels)
    path = {"folder": folder, "parent folder": tmp_path,
            "tarball": tarball(folder, f"cifar-10-{layout}.tar.gz"),
            "batch file": folder / ("test_batch.bin" if layout == "binary" else "test_batch")}[form]
    test = read_cifar10(path)
    assert test.layout == layout and test.classes == list(CIFAR10_CLASSES)
    np.testing.assert_array_equal(test.images, images)
    np.testing.assert_array_equal(test.labels, labels)
    if form != "batch file":
        train = read_cifar10(path, split="train")
        np.testing.assert_array_equal(train.images, images)   # five slices, in order
        np.testing.assert_array_equal(train.labels, labels)


def test_official_structure_of_the_python_batch_written_here(small_cifar, tmp_path):
    images, labels, _ = small_cifar
    data = (write_python_version(tmp_path, images, labels) / "test_batch").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in data and b"_codecs" not in data
    official_way = pickle.loads(data, encoding="bytes")   # the dataset page's own loader
    assert official_way[b"labels"] == labels.tolist()


def test_evaluate_cifar10_files_as_the_image_files_they_came_from(resnet20, small_cifar, tmp_path):
    images, labels, files = small_cifar
    from_files = imagezoo.evaluate(resnet20, LabelledSet([(str(f), int(l)) for f, l in zip(files, labels)],
                                                         list(CIFAR10_CLASSES), "files"),
                                   top=2, workers=0)
    binary = tarball(write_binary_version(tmp_path / "b", images, labels), "cifar-10-binary.tar.gz")
    python = write_python_version(tmp_path / "p", images, labels)
    for path in (binary, python):
        result = imagezoo.evaluate(resnet20, f"cifar10:{path}", top=2)
        assert (result.top1, result.topk, result.count) == (from_files.top1, from_files.topk, 30)
        assert result.per_class == from_files.per_class and result.confusions == from_files.confusions


def test_export_to_class_folders_for_the_tasks_that_read_files(small_cifar, tmp_path):
    images, labels, _ = small_cifar
    dataset = read_cifar10(write_binary_version(tmp_path, images, labels))
    with pytest.raises(DatasetError, match="export_class_folders"):
        read_labelled_set(f"cifar10:{tmp_path}")
    folder = export_class_folders(dataset, tmp_path / "folders")
    again = read_class_folders(folder, list(CIFAR10_CLASSES))
    assert len(again) == 30
    np.testing.assert_array_equal(np.stack([np.asarray(load_image(p)) for p, _ in again.items]),
                                  images[np.argsort(labels, kind="stable")])


class RunsCode:
    """Unpickling this would create a file: the side effect the refusal must prevent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class RunsShell:
    """The same through os.system, reached by an extension code (copyreg), not a name."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_batch(kind: str, marker: Path) -> bytes:
    if kind == "reduce":
        return pickle.dumps({b"data": RunsCode(marker), b"labels": []}, protocol=2)
    if kind == "protocol 5":
        return pickle.dumps({"data": RunsCode(marker)}, protocol=5)
    if kind == "object array":
        return pickle.dumps({b"data": np.array([RunsCode(marker)], dtype=object)}, protocol=2)
    with extension_registered():
        return pickle.dumps({b"data": RunsShell(marker)}, protocol=2)


@contextlib.contextmanager
def extension_registered():
    copyreg.add_extension(os.system.__module__, "system", 0x7E)
    try:
        yield
    finally:
        copyreg.remove_extension(os.system.__module__, "system", 0x7E)


@pytest.fixture(scope="module")
def random_cifar():
    return imagezoo.load_model("resnet20_cifar", weights="random")


@pytest.mark.parametrize("kind", ["reduce", "protocol 5", "extension", "object array"])
@pytest.mark.parametrize("form", ["folder", "tarball"])
def test_a_batch_that_would_run_code_is_refused_unrun(small_cifar, random_cifar, tmp_path,
                                                       kind, form):
    images, labels, _ = small_cifar
    marker = tmp_path / "code-ran"
    batch = evil_batch(kind, marker)
    if kind == "extension":
        assert b"\x82\x7e" in batch      # EXT1: the callable is named by a number only
    folder = write_python_version(tmp_path / "data", images, labels, test_batch=batch)
    path = folder if form == "folder" else tarball(folder, "cifar-10-python.tar.gz")
    with extension_registered():       # the registry lookup must still end in find_class
        with pytest.raises(DatasetError, match="refused"):
            read_cifar10(path)
        with pytest.raises(DatasetError, match="refused"):
            imagezoo.evaluate(random_cifar, f"cifar10:{path}")
    assert not marker.exists()


def test_damaged_files_are_named_with_the_reason(small_cifar, tmp_path):
    images, labels, _ = small_cifar
    folder = write_binary_version(tmp_path, images, labels)
    batch = folder / "test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="not a whole number of 3073-byte records"):
        read_cifar10(folder)
    batch.write_bytes(to_records(images[:2], [3, 12]))
    with pytest.raises(DatasetError, match="label 12 is out of range"):
        read_cifar10(folder)
    with pytest.raises(DatasetError, match="no CIFAR-10 test batches"):
        read_cifar10(tmp_path / "cifar-10-batches-bin" / ".." / "..")  # a folder without them
    with pytest.raises(DatasetError, match="no such"):
        read_cifar10(tmp_path / "missing.tar.gz")


def test_pretrained_alone_takes_the_models_own_publisher():
    from imagezoo.cli.parser import build_parser
    from imagezoo.weights.published import published_weights
    args = build_parser().parse_args(["classify", "cat.png", "--model", "resnet56_cifar",
                                      "--pretrained"])
    assert args.pretrained == "auto"
    entry = published_weights("resnet56_cifar", "auto")
    assert entry.url.endswith("resnet56-4bfd9763.th") and len(entry.sha256) == 64
