"""PaddlePaddle v1 parameter folders: reference outputs, round trips, and every bad input."""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagezoo.card import imagenet_labels
from imagezoo.data.transforms import preprocess_image
from imagezoo.errors import WeightsError
from imagezoo.models.registry import build_model
from imagezoo.models.resnet import ResNetSpec
from imagezoo.weights.paddle_v1 import folder_sha256, is_paddle_v1_folder, read_paddle_v1
from imagezoo.weights.torch_state import load_state_dict
from paddle_writer import random_resnet, write_paddle_v1, write_parameter_file
from conftest import assert_reproduces_reference

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures"
PADDLE_FIXTURE = FIXTURES / "paddle_v1" / "resnet_v1_w16_b1211"
PADDLE_IO = FIXTURES / "paddle_v1" / "resnet_v1_w16_b1211_io.npz"


def v1_spec(**fields) -> ResNetSpec:
    """The architecture family a Paddle v1 folder describes (v1 stride, Caffe pool1)."""
    return ResNetSpec(stride_in_1x1=True, pool1="caffe", **fields)


DEEP = v1_spec(block="bottleneck", layers=(1, 2, 4, 1), width=8, num_classes=7)
BASIC = v1_spec(block="basic", layers=(2, 2, 2, 2), width=8, num_classes=5)
SMALL = v1_spec(block="bottleneck", layers=(1, 2, 1, 1), width=4, num_classes=6)


def load(tensors, card):
    model = build_model(card.architecture)
    load_state_dict(model, tensors, card.source)
    return model.eval()


# --- the reference fixture: outputs computed by an implementation independent of imagezoo ---

@pytest.fixture(scope="module")
def reference():
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (the shared fixtures folder "
                    f"is absent)")
    tensors, card = read_paddle_v1(PADDLE_FIXTURE)
    return tensors, card, dict(np.load(PADDLE_IO))


def test_fixture_card(reference):
    _, card, _ = reference
    assert card.architecture == v1_spec(block="bottleneck", layers=(1, 2, 1, 1), width=16,
                                         num_classes=10).to_dict()
    assert card.name == card.source == "resnet_v1_w16_b1211"
    assert card.source_format == "paddle_v1"
    assert card.labels == [f"class {i}" for i in range(10)]
    assert re.fullmatch(r"[0-9a-f]{64}", card.sha256)
    assert card.license is None
    preprocess = card.preprocess
    assert (preprocess.resize, preprocess.crop, preprocess.interpolation) == (256, 224, "bilinear")
    assert preprocess.scale == 1.0 and preprocess.channel_order == "BGR"
    assert preprocess.mean == (103.939, 116.779, 123.68) and preprocess.std == (1.0, 1.0, 1.0)


def test_fixture_reproduces_reference_outputs(reference):
    tensors, card, expected = reference
    assert_reproduces_reference(load(tensors, card), expected)


def test_fixture_preprocessing_matches_reference_input(reference):
    _, card, expected = reference
    spec = dataclasses.replace(card.preprocess, resize=None, crop=224)
    image = Image.fromarray(expected["photo_rgb"])
    tensor = preprocess_image(image, spec)
    np.testing.assert_allclose(tensor.unsqueeze(0).numpy(), expected["input_bgr"],
                               rtol=1e-5, atol=1e-5)


def test_fixture_is_detected(reference):
    assert is_paddle_v1_folder(PADDLE_FIXTURE)
    assert not is_paddle_v1_folder(PADDLE_IO)


# --- round trips through the test writer ---

@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Folders written once per module: name -> (folder, source model)."""
    base = tmp_path_factory.mktemp("paddle")
    folders = {}
    for name, spec in {"deep": DEEP, "basic": BASIC, "small": SMALL,
                       "bias": dataclasses.replace(SMALL, conv1_bias=True)}.items():
        model = random_resnet(spec, seed=len(folders))
        folders[name] = (write_paddle_v1(model, base / name), model)
    return folders


@pytest.fixture
def broken(written, tmp_path):
    """A fresh copy of the small bottleneck folder, for a test to damage."""
    folder = tmp_path / "resnet_small"
    shutil.copytree(written["small"][0], folder)
    return folder


@pytest.mark.parametrize("name, spec", [("deep", DEEP), ("basic", BASIC), ("small", SMALL)])
def test_round_trip(written, name, spec):
    folder, source = written[name]
    tensors, card = read_paddle_v1(folder)
    assert card.architecture == spec.to_dict()
    assert card.labels == [f"class {i}" for i in range(spec.num_classes)]
    expected = {key: value for key, value in source.state_dict().items()
                if not key.endswith("num_batches_tracked")}
    assert set(tensors) == set(expected)
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    model = load(tensors, card)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def test_conv1_bias_is_read(written):
    folder, source = written["bias"]
    tensors, card = read_paddle_v1(folder)
    assert card.architecture["conv1_bias"] is True
    assert torch.equal(tensors["conv1.bias"], source.conv1.bias.detach())
    load(tensors, card)


def test_basic_net_has_no_projection_in_the_first_stage(written):
    folder, _ = written["basic"]
    assert not (folder / "_res2_1_branch1_conv.w0").exists()
    assert (folder / "_res3_1_branch1_conv.w0").exists()
    tensors, _ = read_paddle_v1(folder)
    assert "layer1.0.downsample.0.weight" not in tensors
    assert tensors["layer2.0.downsample.0.weight"].shape == (16, 8, 1, 1)


def test_fc_weight_is_transposed(written):
    folder, source = written["small"]
    tensors, _ = read_paddle_v1(folder)
    assert tensors["fc.weight"].shape == (6, 4 * 8 * 4)
    assert torch.equal(tensors["fc.weight"], source.fc.weight.detach())


def test_thousand_classes_get_imagenet_labels(tmp_path):
    spec = v1_spec(block="basic", layers=(1, 1, 1, 1), width=4, num_classes=1000)
    folder = write_paddle_v1(random_resnet(spec), tmp_path / "imagenet_net")
    tensors, card = read_paddle_v1(folder)
    assert card.labels == imagenet_labels()
    assert card.num_classes == 1000
    load(tensors, card)


def test_sha256_covers_names_and_contents(written, broken):
    original = written["small"][0]
    _, card = read_paddle_v1(original)
    assert card.sha256 == folder_sha256(original)
    _, copy_card = read_paddle_v1(broken)
    assert copy_card.sha256 == card.sha256  # the folder's own name is not hashed
    assert copy_card.name == "resnet_small"
    values = np.fromfile(broken / "_output.wbias", dtype="<f4", offset=16)
    values[0] += 1.0
    write_parameter_file(broken / "_output.wbias", values)
    assert read_paddle_v1(broken)[1].sha256 != card.sha256


def test_files_not_starting_with_underscore_are_ignored(broken):
    (broken / "README.txt").write_text("notes")
    read_paddle_v1(broken)


def test_is_paddle_v1_folder(written, tmp_path):
    assert is_paddle_v1_folder(written["small"][0])
    assert is_paddle_v1_folder(str(written["small"][0]))
    assert not is_paddle_v1_folder(written["small"][0] / "_conv1_conv.w0")
    assert not is_paddle_v1_folder(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not is_paddle_v1_folder(empty)
    (empty / "weights.safetensors").write_bytes(b"x")
    assert not is_paddle_v1_folder(empty)


# --- bad input: one WeightsError naming the file at fault ---

def raises_naming(name: str, *extra: str):
    """pytest.raises for a WeightsError whose message names ``name`` (and the extra words)."""
    pattern = re.escape(name) + "".join(f".*{re.escape(word)}" for word in extra)
    return pytest.raises(WeightsError, match=pattern)


def one_line(error: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(error.value)


def test_not_a_folder(written):
    path = written["small"][0] / "_conv1_conv.w0"
    with raises_naming("_conv1_conv.w0", "not a folder") as error:
        read_paddle_v1(path)
    one_line(error)


def test_missing_folder(tmp_path):
    with raises_naming("no_such_model", "no such"):
        read_paddle_v1(tmp_path / "no_such_model")


def test_empty_folder(tmp_path):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    with raises_naming("empty_model", "no Paddle v1 parameter files"):
        read_paddle_v1(folder)


@pytest.mark.parametrize("file_format, value_size, words", [
    (1, 4, "format 1"), (7, 4, "format 7"), (0, 8, "value size 8"), (0, 2, "value size 2")])
def test_wrong_header(broken, file_format, value_size, words):
    name = "_res3_1_branch2b_conv.w0"
    values = np.fromfile(broken / name, dtype="<f4", offset=16)
    write_parameter_file(broken / name, values, file_format=file_format, value_size=value_size)
    with raises_naming(name, words) as error:
        read_paddle_v1(broken)
    one_line(error)


def test_truncated_file(broken):
    name = "_res4_1_branch2c_bn.w1"
    data = (broken / name).read_bytes()
    (broken / name).write_bytes(data[:-4])
    with raises_naming(name, "truncated"):
        read_paddle_v1(broken)


def test_trailing_bytes(broken):
    name = "_output.w0"
    values = np.fromfile(broken / name, dtype="<f4", offset=16)
    write_parameter_file(broken / name, values, trailing=b"\0\0\0\0")
    with raises_naming(name, "trailing bytes"):
        read_paddle_v1(broken)


def test_count_in_header_disagrees_with_size(broken):
    name = "_conv1_bn.w2"
    values = np.fromfile(broken / name, dtype="<f4", offset=16)
    write_parameter_file(broken / name, values, count=values.size + 1)
    with raises_naming(name, "truncated"):
        read_paddle_v1(broken)


def test_shorter_than_header(broken):
    name = "_res2_1_branch1_bn.wbias"
    (broken / name).write_bytes(b"\0" * 10)
    with raises_naming(name, "16-byte"):
        read_paddle_v1(broken)


@pytest.mark.parametrize("name, words", [
    ("_res3_2_branch2b_bn.w2", "running variance"),
    ("_res5_1_branch1_conv.w0", "layer4.0.downsample.0.weight"),
    ("_conv1_conv.w0", "conv1"),
    ("_output.wbias", "classes"),
    ("_output.w0", "fc.weight"),
])
def test_missing_tensor(broken, name, words):
    (broken / name).unlink()
    with raises_naming(name, "missing", words) as error:
        read_paddle_v1(broken)
    one_line(error)


def test_missing_block_in_the_middle(written, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(written["deep"][0], folder)
    for path in folder.glob("_res4_3_*"):
        path.unlink()
    with raises_naming("_res4_3_branch2a_conv.w0", "missing"):
        read_paddle_v1(folder)


def test_missing_stage(broken):
    for path in broken.glob("_res3_*"):
        path.unlink()
    with raises_naming("_res3_1_branch2a_conv.w0", "missing", "res3"):
        read_paddle_v1(broken)


@pytest.mark.parametrize("name, count", [
    ("_res4_1_branch2b_conv.w0", 17),      # not 16 x 16 x 3 x 3
    ("_res3_2_branch2a_bn.w0", 9),         # not 8
    ("_output.w0", 6 * 128 - 6),           # not in x classes
    ("_res2_1_branch1_conv.w0", 16 * 4 * 2),
])
def test_inconsistent_counts(broken, name, count):
    write_parameter_file(broken / name, np.zeros(count, dtype=np.float32))
    with raises_naming(name, f"holds {count} values") as error:
        read_paddle_v1(broken)
    one_line(error)


def test_conv1_count_not_a_multiple_of_147(broken):
    write_parameter_file(broken / "_conv1_conv.w0", np.zeros(147 * 4 + 1, dtype=np.float32))
    with raises_naming("_conv1_conv.w0", "3 x 7 x 7"):
        read_paddle_v1(broken)


def test_width_that_disagrees_with_conv1(broken):
    # conv1 claims width 5; every other file was written for width 4.
    write_parameter_file(broken / "_conv1_conv.w0", np.zeros(147 * 5, dtype=np.float32))
    with raises_naming("_conv1_bn.w0", "holds 4 values", "width 5"):
        read_paddle_v1(broken)


def test_unexpected_parameter_file(written, tmp_path):
    folder = tmp_path / "basic_with_projection"
    shutil.copytree(written["basic"][0], folder)
    write_parameter_file(folder / "_res2_1_branch1_conv.w0", np.zeros(64, dtype=np.float32))
    with raises_naming("_res2_1_branch1_conv.w0", "unexpected"):
        read_paddle_v1(folder)


def test_mixed_block_types(written, tmp_path):
    # A branch2c file in a basic net makes it look like a bottleneck net, which then lacks
    # every other branch2c: the first one is named.
    folder = tmp_path / "mixed"
    shutil.copytree(written["basic"][0], folder)
    write_parameter_file(folder / "_res5_2_branch2c_conv.w0", np.zeros(8, dtype=np.float32))
    with raises_naming("_res2_1_branch2c_conv.w0", "missing"):
        read_paddle_v1(folder)
