"""--pretrained: published weights fetched through the verified cache, from a local server."""
from __future__ import annotations

import dataclasses
import io
import tarfile

import numpy as np
import pytest
import torch

import imagezoo
from imagezoo.cli import main
from imagezoo.models.resnet import ResNetSpec
from imagezoo.weights import published
from imagezoo.weights.store import sha256_of
from httpserver import StaticServer
from paddle_writer import random_resnet, write_paddle_v1
from conftest import shared_fixture


def serve_as(monkeypatch, model: str, source: str, url: str, sha256: str | None) -> None:
    """Point the published entry for (model, source) at a URL of the test's server."""
    entries = tuple(dataclasses.replace(e, url=url, sha256=sha256, md5=None)
                    if (e.model, e.source) == (model, source) else e
                    for e in published.PUBLISHED)
    monkeypatch.setattr(published, "PUBLISHED", entries)


def test_torchvision_weights_downloaded_once_then_cached(tmp_path, monkeypatch):
    weights = shared_fixture("torchvision", "resnet18_random.pth")
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path / "cache"))
    reference = np.load(shared_fixture("torchvision", "resnet18_random_io.npz"))
    with StaticServer({"/resnet18-abc.pth": weights.read_bytes()}) as server:
        serve_as(monkeypatch, "resnet18", "torchvision", f"{server.base_url}/resnet18-abc.pth",
                 sha256_of(weights)[:8])
        model = imagezoo.load_model("resnet18", pretrained="torchvision")
        imagezoo.load_model("resnet18", pretrained="torchvision")
        assert server.requests == ["/resnet18-abc.pth"]
    assert (tmp_path / "cache" / "resnet18-abc.pth").is_file()
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["input"]))
    np.testing.assert_allclose(logits.numpy(), reference["logits"], rtol=1e-4, atol=1e-4)


def test_paddle_tarball_is_unpacked_and_loaded(tmp_path, monkeypatch):
    # A ResNet-50-shaped net (layers 3, 4, 6, 3) at width 4 keeps the archive small.
    source = random_resnet(ResNetSpec(layers=(3, 4, 6, 3), width=4, num_classes=1000,
                                      stride_in_1x1=True, pool1="caffe"))
    folder = write_paddle_v1(source, tmp_path / "resnet_50")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(folder, arcname="resnet_50")
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path / "cache"))
    with StaticServer({"/resnet_50.tar.gz": archive.getvalue()}) as server:
        serve_as(monkeypatch, "resnet50", "paddle_v1", f"{server.base_url}/resnet_50.tar.gz", None)
        model = imagezoo.load_model("resnet50", pretrained="paddle_v1")
    assert model.card.source_format == "paddle_v1" and model.card.preprocess.channel_order == "BGR"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x), rtol=1e-5, atol=1e-5)


def test_offline_pretrained_is_a_clear_usage_error(tmp_path, monkeypatch, capsys, cat_photo):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path / "cache"))
    with StaticServer({}) as server:
        url = f"{server.base_url}/resnet50-0676ba61.pth"
    serve_as(monkeypatch, "resnet50", "torchvision", url, "0676ba61")
    assert main(["classify", str(cat_photo), "--model", "resnet50", "--pretrained", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert url in err and str(tmp_path / "cache" / "resnet50-0676ba61.pth") in err
    assert "Traceback" not in err


def test_unpublished_combination_lists_what_exists(capsys, cat_photo):
    assert main(["classify", str(cat_photo), "--model", "resnet18", "--pretrained", "matconvnet"]) == 2
    err = capsys.readouterr().err
    assert "no published weights for 'resnet18' from 'matconvnet'" in err and "resnet152" in err


def test_tarball_escaping_its_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"x"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(imagezoo.WeightsError, match="cannot unpack"):
        published.unpack_parameter_folder(archive)
    assert not (tmp_path / "outside.txt").exists()


def test_verify_rechecks_a_cached_file(tmp_path, monkeypatch, capsys, cat_photo):
    weights = shared_fixture("torchvision", "resnet18_random.pth")
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / "resnet18-abc.pth"
    cached.write_bytes(weights.read_bytes()[:-10] + b"0123456789")  # damaged after download
    monkeypatch.setenv("IMAGEZOO_CACHE", str(cache))
    serve_as(monkeypatch, "resnet18", "torchvision", "http://127.0.0.1:9/resnet18-abc.pth",
             sha256_of(weights))
    arguments = ["classify", str(cat_photo), "--model", "resnet18", "--pretrained", "torchvision"]
    assert main(arguments + ["--verify"]) == 2
    err = capsys.readouterr().err
    assert "resnet18-abc.pth" in err and "Traceback" not in err
