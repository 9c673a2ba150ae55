"""PaddlePaddle v2 parameters.to_tar tarballs (and unpacked ones): the reference fixture read
through them, the ParameterConfig sidecars, and archives that must be refused."""
from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import imagezoo
from imagezoo.errors import WeightsError
from imagezoo.weights.formats import detect_format, read_weights
from imagezoo.weights.paddle_config import parse_parameter_config
from imagezoo.weights.paddle_v1 import read_paddle_v1
from imagezoo.weights.paddle_v2 import is_paddle_v2_tarball, read_paddle_v2_tar
from paddle_writer import (
    sidecar_bytes, v2_members, write_tarball, write_v2_folder, write_v2_tarball,
)
from conftest import assert_reproduces_reference, shared_fixture


@pytest.fixture(scope="module")
def fixture_folder() -> Path:
    return shared_fixture("paddle_v1", "resnet_v1_w16_b1211")


@pytest.fixture(scope="module")
def reference() -> dict:
    return dict(np.load(shared_fixture("paddle_v1", "resnet_v1_w16_b1211_io.npz")))


@pytest.fixture(scope="module")
def v1_tensors(fixture_folder):
    return read_paddle_v1(fixture_folder)


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


# --- the reference fixture through a v2 tarball and an unpacked one --------------------------

@pytest.mark.parametrize("mode, file_name", [("w", "resnet_v1_w16_b1211.tar"),
                                             ("w:gz", "resnet_v1_w16_b1211.tar.gz")])
def test_tarball_reproduces_the_reference(tmp_path, fixture_folder, reference, v1_tensors,
                                          mode, file_name):
    path = write_v2_tarball(fixture_folder, tmp_path / file_name, mode=mode)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert "_output.w0" in names and "_output.w0.protobuf" in names
    assert detect_format(path) == "paddle_v2_tar"

    model = imagezoo.load_model(path)
    assert_reproduces_reference(model, reference)

    tensors, card = read_weights(path)
    v1, v1_card = v1_tensors
    assert_same_tensors(tensors, v1)
    assert card.architecture == v1_card.architecture
    assert card.preprocess == v1_card.preprocess and card.labels == v1_card.labels
    assert card.name == "resnet_v1_w16_b1211" and card.source == file_name
    assert card.source_format == "paddle_v2"
    assert card.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unpacked_tarball_reproduces_the_reference(tmp_path, fixture_folder, reference, v1_tensors):
    folder = write_v2_folder(fixture_folder, tmp_path / "resnet_v1_w16_b1211")
    sidecars = sorted(p.name for p in folder.glob("*.protobuf"))
    assert len(sidecars) == len(list(fixture_folder.iterdir())) > 80
    assert detect_format(folder) == "paddle_v1"

    model = imagezoo.load_model(folder)
    assert_reproduces_reference(model, reference)
    tensors, card = read_paddle_v1(folder)
    assert_same_tensors(tensors, v1_tensors[0])
    assert card.source_format == "paddle_v2" and card.name == "resnet_v1_w16_b1211"
    # the digest covers the sidecars as well
    assert card.sha256 != v1_tensors[1].sha256


def test_packed_dims_read_like_unpacked(tmp_path, fixture_folder, v1_tensors):
    path = write_v2_tarball(fixture_folder, tmp_path / "packed.tar", packed_dims=True)
    assert_same_tensors(read_paddle_v2_tar(path)[0], v1_tensors[0])


def test_a_named_model_takes_the_tarball_as_weights(tmp_path, fixture_folder):
    path = write_v2_tarball(fixture_folder, tmp_path / "r.tar")
    with pytest.raises(WeightsError, match=r"layers \[1, 2, 1, 1\], not the \[3, 4, 6, 3\] of resnet50"):
        imagezoo.load_model("resnet50", weights=path)


# --- what the sidecars say is checked ---------------------------------------------------------

def test_sidecar_with_transposed_fc_dims(tmp_path, fixture_folder):
    path = write_v2_tarball(fixture_folder, tmp_path / "t.tar",
                            dims_override={"_output.w0": [10, 512]})
    with pytest.raises(WeightsError, match=re.escape(f"{path}:_output.w0: its sidecar gives dims "
                                                     f"10 x 512") + ".*stored as 512 x 10"):
        read_paddle_v2_tar(path)


@pytest.mark.parametrize("sidecar, words", [
    (b"\x0a\x50_res2", "not a PaddlePaddle ParameterConfig message (a field of 80 bytes"),
    (b"\x1b\x00", "not a PaddlePaddle ParameterConfig message (wire type 3"),
    (sidecar_bytes("_conv1_bn.w1", 16, [1, 16]), "describes parameter '_conv1_bn.w1'"),
    (sidecar_bytes("_conv1_bn.w2", 17, []), "holds 16 values, but its sidecar gives size 17"),
    (sidecar_bytes("_conv1_bn.w2", 16, [2, 16]), "holds 16 values, but its sidecar gives dims 2 x 16"),
])
def test_bad_sidecar(tmp_path, fixture_folder, sidecar, words):
    members = v2_members(fixture_folder)
    members["_conv1_bn.w2.protobuf"] = sidecar
    path = write_tarball(tmp_path / "bad.tar", members)
    with pytest.raises(WeightsError, match=re.escape(words)) as error:
        read_paddle_v2_tar(path)
    assert "_conv1_bn.w2" in str(error.value) and "\n" not in str(error.value)


def test_parameter_config_decoder():
    message = sidecar_bytes("_output.w0", 5120, [512, 10])
    config = parse_parameter_config(message)
    assert (config.name, config.size, config.dims) == ("_output.w0", 5120, (512, 10))
    assert parse_parameter_config(sidecar_bytes("_x.w0", 2 ** 40 + 3, [])).size == 2 ** 40 + 3
    assert parse_parameter_config(b"").dims == ()
    for broken in (message[:-1], message[:5], b"\x10\xff", b"\x10" + b"\xff" * 10 + b"\x01"):
        with pytest.raises(ValueError):
            parse_parameter_config(broken)


# --- archives that are refused, or whose odd members are left alone ---------------------------

def _info(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("name", ["../_escape.w0", "/tmp/_absolute.w0", "./../x", "a/../../b"])
def test_path_traversal_member_refuses_the_archive(tmp_path, fixture_folder, name):
    members = v2_members(fixture_folder)
    members[name] = b"\0" * 16
    archive = tmp_path / "archive"
    archive.mkdir()
    path = write_tarball(archive / "evil.tar", members)
    with pytest.raises(WeightsError, match=re.escape(f"member {name!r} points outside the archive")):
        read_paddle_v2_tar(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["archive", "evil.tar"]  # nothing extracted


@pytest.mark.parametrize("kind, words", [(tarfile.SYMTYPE, "a symbolic link"),
                                         (tarfile.LNKTYPE, "a hard link"),
                                         (tarfile.DIRTYPE, "a folder"),
                                         (tarfile.FIFOTYPE, "a special file (device or FIFO)")])
def test_parameter_named_link_or_special_member_is_refused(tmp_path, fixture_folder, kind, words):
    members = v2_members(fixture_folder)
    del members["_conv1_conv.w0"]
    target = "/etc/passwd" if kind == tarfile.SYMTYPE else "_output.w0"
    path = write_tarball(tmp_path / "links.tar", members,
                         special=[_info("_conv1_conv.w0", kind, target)])
    assert detect_format(path) == "paddle_v2_tar"
    with pytest.raises(WeightsError, match=re.escape(f"{path}:_conv1_conv.w0: {words}, not a "
                                                     f"regular file; refused")):
        read_paddle_v2_tar(path)


def test_other_members_are_ignored(tmp_path, fixture_folder, v1_tensors):
    members = {f"./{name}": data for name, data in v2_members(fixture_folder).items()}
    members["README.txt"] = b"notes"
    members["copies/_conv1_conv.w0"] = b"\0" * 16          # below a folder: not a parameter
    path = write_tarball(tmp_path / "extra.tar", members,
                         special=[_info("./", tarfile.DIRTYPE), _info("copies", tarfile.DIRTYPE),
                                  _info("link", tarfile.SYMTYPE, "/etc/passwd")])
    assert_same_tensors(read_paddle_v2_tar(path)[0], v1_tensors[0])


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_truncated_tarball(tmp_path, fixture_folder, mode):
    path = write_v2_tarball(fixture_folder, tmp_path / "cut.tar", mode=mode)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ".*truncated"):
        imagezoo.load_model(path)


def test_detection_is_by_content_and_not_fooled(tmp_path, fixture_folder):
    plain = write_tarball(tmp_path / "notes.tar", {"README": b"hello", "_notes.txt": b"x"})
    nested = write_tarball(tmp_path / "nested.tar",
                           {f"resnet/{n}": d for n, d in v2_members(fixture_folder).items()})
    disguised = write_v2_tarball(fixture_folder, tmp_path / "weights.pth")
    assert detect_format(disguised) == "paddle_v2_tar"
    for path in (plain, nested):
        assert not is_paddle_v2_tarball(path)
        with pytest.raises(WeightsError, match="not a weight file imagezoo knows"):
            detect_format(path)
    torch_file = tmp_path / "state.pth"
    torch.save({"w": torch.zeros(2)}, torch_file)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    for path in (torch_file, legacy, shared_fixture("matconvnet", "resnet_v1_w16_b1211.mat"),
                 fixture_folder / "_output.w0", tmp_path):
        assert not is_paddle_v2_tarball(path), path
    assert not is_paddle_v2_tarball(tmp_path / "absent.tar")
    with pytest.raises(WeightsError, match="holds no PaddlePaddle parameter files"):
        read_paddle_v2_tar(nested)


def test_tarball_member_shorter_than_its_header_says(tmp_path, fixture_folder):
    members = v2_members(fixture_folder)
    members["_res3_1_branch2a_conv.w0"] = members["_res3_1_branch2a_conv.w0"][:-8]
    path = write_tarball(tmp_path / "short.tar", members)
    with pytest.raises(WeightsError, match=re.escape(f"{path}:_res3_1_branch2a_conv.w0: truncated")):
        read_paddle_v2_tar(path)


def test_in_memory_members_only(tmp_path, fixture_folder, monkeypatch):
    """Reading never calls tarfile's extraction to disk."""
    def refuse(*args, **kwargs):
        raise AssertionError("extracted to disk")
    monkeypatch.setattr(tarfile.TarFile, "extract", refuse)
    monkeypatch.setattr(tarfile.TarFile, "extractall", refuse)
    path = write_v2_tarball(fixture_folder, tmp_path / "m.tar")
    read_paddle_v2_tar(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar"]
