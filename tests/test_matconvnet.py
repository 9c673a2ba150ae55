"""MatConvNet DagNN importer: the reference fixture, round trips through v5 and v7.3, bad files."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagezoo.data.transforms import preprocess_image
from imagezoo.errors import WeightsError
from imagezoo.models.registry import build_model
from imagezoo.models.resnet import ResNet, ResNetSpec
from imagezoo.weights.matconvnet import is_matlab_file, read_matconvnet
from imagezoo.weights.torch_state import load_state_dict

import matconvnet_writer as mcn
from conftest import assert_stage_map_close

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "matconvnet"
FIXTURE_MAT = FIXTURES / "resnet_v1_w16_b1211.mat"
FIXTURE_IO = FIXTURES / "resnet_v1_w16_b1211_io.npz"
TOLERANCE = dict(rtol=1e-4, atol=1e-4)
WRITERS = {"v5": mcn.write_v5, "v7.3": mcn.write_v73}


def _need_fixture() -> None:
    if not FIXTURE_MAT.is_file() or not FIXTURE_IO.is_file():
        pytest.skip(f"reference fixtures not found in {FIXTURES} (the shared fixtures folder "
                    f"beside the project); they hold the MatConvNet file and its outputs")


def _load(path: Path) -> tuple[torch.nn.Module, object]:
    tensors, card = read_matconvnet(path)
    model = build_model(card.architecture)
    load_state_dict(model, tensors, str(path))
    return model.eval(), card


def _caffe_resnet(block: str, layers: tuple[int, ...], width: int = 8, num_classes: int = 7,
                  conv1_bias: bool = True, seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    spec = ResNetSpec(block=block, layers=layers, width=width, num_classes=num_classes,
                      stride_in_1x1=True, pool1="caffe", conv1_bias=conv1_bias)
    return mcn.randomize_batch_norm(ResNet(spec), seed)


def _meta(num_classes: int, average_image=None, **overrides) -> dict:
    if average_image is None:
        average_image = np.random.default_rng(1).uniform(90, 140, (224, 224, 3))
    fields = dict(average_image=average_image,
                  descriptions=[f"thing {i}" for i in range(num_classes)],
                  class_names=[f"n{i:08d}" for i in range(num_classes)])
    fields.update(overrides)
    return mcn.meta(**fields)


@pytest.fixture(scope="module")
def small_model() -> ResNet:
    return _caffe_resnet("bottleneck", (1, 2, 1, 1))


@pytest.fixture(scope="module")
def small_params(small_model) -> dict[str, np.ndarray]:
    return mcn.resnet_params(small_model)


# --------------------------------------------------------------------------------------------
#                                                   the reference file from outside imagezoo
# --------------------------------------------------------------------------------------------

def test_fixture_reproduces_matconvnet_outputs():
    _need_fixture()
    model, card = _load(FIXTURE_MAT)
    expected = np.load(FIXTURE_IO)
    captured = {}
    hooks = [getattr(model, f"layer{i}").register_forward_hook(
                 lambda module, args, output, key=f"stage{i}": captured.__setitem__(key, output))
             for i in range(1, 5)]
    hooks.append(model.avgpool.register_forward_hook(
        lambda module, args, output: captured.__setitem__("pooled", torch.flatten(output, 1))))
    with torch.no_grad():
        logits = model(torch.from_numpy(expected["input"]))
    for hook in hooks:
        hook.remove()
    np.testing.assert_allclose(logits.numpy(), expected["logits"], **TOLERANCE)
    np.testing.assert_allclose(captured["pooled"].numpy(), expected["pooled"], **TOLERANCE)
    for key in ("stage1", "stage2", "stage3", "stage4"):
        assert_stage_map_close(captured[key].numpy(), expected[key], key)


def test_fixture_card():
    _need_fixture()
    _, card = read_matconvnet(FIXTURE_MAT)
    expected = np.load(FIXTURE_IO)
    assert card.architecture == ResNetSpec(block="bottleneck", layers=(1, 2, 1, 1), width=16,
                                           num_classes=10, stride_in_1x1=True, pool1="caffe",
                                           conv1_bias=True, bn_eps=0.0).to_dict()
    assert card.labels == [str(label) for label in expected["descriptions"]]
    assert card.name == "resnet_v1_w16_b1211"
    assert card.source == FIXTURE_MAT.name
    assert card.source_format == "matconvnet"
    assert card.license is None
    assert re.fullmatch(r"[0-9a-f]{64}", card.sha256)


def test_fixture_preprocessing_gives_the_reference_input():
    _need_fixture()
    _, card = read_matconvnet(FIXTURE_MAT)
    expected = np.load(FIXTURE_IO)
    tensor = preprocess_image(Image.fromarray(expected["photo"]), card.preprocess)
    np.testing.assert_allclose(tensor.unsqueeze(0).numpy(), expected["input"], rtol=1e-5, atol=1e-5)


def test_is_matlab_file(tmp_path, small_params):
    v5 = mcn.write_v5(tmp_path / "a.mat", small_params, None)
    v73 = mcn.write_v73(tmp_path / "b.mat", small_params, None)
    text = tmp_path / "c.mat"
    text.write_text("not a matlab file\n" * 100)
    assert is_matlab_file(v5) and is_matlab_file(v73)
    assert not is_matlab_file(text)
    assert not is_matlab_file(tmp_path / "absent.mat")
    assert not is_matlab_file(tmp_path)


# --------------------------------------------------------------------------------------------
#                                                            round trips through our writer
# --------------------------------------------------------------------------------------------

def _assert_same_logits(original: torch.nn.Module, imported: torch.nn.Module, size: int = 97):
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3)) * 50
    with torch.no_grad():
        expected, actual = original(image), imported(image)
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_deep_net_with_numbered_blocks_round_trips(tmp_path):
    original = _caffe_resnet("bottleneck", (1, 2, 23, 1), num_classes=7)
    params = mcn.resnet_params(original, numbered_stages={3, 4})
    assert {"res3b1_branch2a_filter", "res4b22_branch2c_filter", "bn4b22_branch2c_moments"} <= set(params)
    path = mcn.write_v5(tmp_path / "imagenet-resnet-deep-dag.mat", params, _meta(7))
    imported, card = _load(path)
    assert card.architecture["layers"] == [1, 2, 23, 1]
    assert card.architecture["block"] == "bottleneck"
    assert card.architecture["width"] == 8
    assert card.name == "imagenet-resnet-deep-dag"
    _assert_same_logits(original, imported)


def test_lettered_and_numbered_stages_in_one_file(tmp_path):
    original = _caffe_resnet("bottleneck", (3, 4, 8, 3), width=4, num_classes=3)
    params = mcn.resnet_params(original, numbered_stages={4})
    assert "res3d_branch2a_filter" in params and "res4b7_branch2a_filter" in params
    imported, card = _load(mcn.write_v5(tmp_path / "mixed.mat", params, _meta(3)))
    assert card.architecture["layers"] == [3, 4, 8, 3]
    _assert_same_logits(original, imported, size=64)


def test_basic_block_net_without_conv1_bias_round_trips(tmp_path):
    original = _caffe_resnet("basic", (2, 2, 2, 2), num_classes=5, conv1_bias=False)
    params = mcn.resnet_params(original)
    assert "res2a_branch1_filter" not in params and "res3a_branch1_filter" in params
    imported, card = _load(mcn.write_v5(tmp_path / "basic.mat", params, _meta(5)))
    assert card.architecture["block"] == "basic"
    assert card.architecture["conv1_bias"] is False
    assert card.labels == [f"thing {i}" for i in range(5)]
    _assert_same_logits(original, imported)


def test_v73_file_reads_like_the_v5_file(tmp_path, small_model, small_params):
    meta = _meta(7)
    v5_tensors, v5_card = read_matconvnet(mcn.write_v5(tmp_path / "net.mat", small_params, meta))
    v73_path = mcn.write_v73(tmp_path / "net73.mat", small_params, meta)
    v73_tensors, v73_card = read_matconvnet(v73_path)
    assert v73_tensors.keys() == v5_tensors.keys()
    for name, tensor in v5_tensors.items():
        assert torch.equal(v73_tensors[name], tensor), name
    assert v73_card.architecture == v5_card.architecture
    assert v73_card.labels == v5_card.labels == [f"thing {i}" for i in range(7)]
    assert v73_card.preprocess.to_dict() == v5_card.preprocess.to_dict()
    assert v73_card.source == "net73.mat" and v73_card.source_format == "matconvnet"
    imported, _ = _load(v73_path)
    _assert_same_logits(small_model, imported)


@pytest.mark.parametrize("version", WRITERS)
@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 1), (1, 3)])
def test_channel_mean_average_image(tmp_path, small_params, version, shape):
    means = np.array([123.68, 116.779, 103.939])
    path = WRITERS[version](tmp_path / "net.mat", small_params, _meta(7, means.reshape(shape)))
    _, card = read_matconvnet(path)
    assert card.preprocess.mean_image.shape == (1, 1, 3)
    photo = np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    tensor = preprocess_image(Image.fromarray(photo), card.preprocess)
    assert tuple(tensor.shape) == (3, 224, 224)
    resized = Image.fromarray(photo).resize((224, int(224 * 300 / 260)), Image.Resampling.BILINEAR)
    top = int(round((resized.height - 224) / 2))
    crop = np.asarray(resized, dtype=np.float32)[top:top + 224]
    expected = (crop - means.astype(np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("version", WRITERS)
def test_label_fallbacks(tmp_path, small_params, version):
    write = WRITERS[version]
    _, card = read_matconvnet(write(tmp_path / "a.mat", small_params, _meta(7, descriptions=None)))
    assert card.labels == [f"n{i:08d}" for i in range(7)]
    _, card = read_matconvnet(write(tmp_path / "b.mat", small_params,
                                    _meta(7, descriptions=None, class_names=None)))
    assert card.labels == [f"class {i}" for i in range(7)]
    _, card = read_matconvnet(write(tmp_path / "c.mat", small_params, None))
    assert card.labels == [f"class {i}" for i in range(7)]
    assert card.preprocess.mean_image is None


# --------------------------------------------------------------------------------------------
#                                                                                   bad files
# --------------------------------------------------------------------------------------------

def _raises(path: Path, *fragments: str):
    """WeightsError whose message names the file, then each fragment, in that order."""
    pattern = ".*".join(re.escape(text) for text in (str(path), *fragments))
    return pytest.raises(WeightsError, match=pattern)


def _without(params: dict, *names: str) -> dict:
    return {name: value for name, value in params.items() if name not in names}


def test_missing_file(tmp_path):
    with _raises(tmp_path / "absent.mat", "no such"):
        read_matconvnet(tmp_path / "absent.mat")


def test_not_a_matlab_file(tmp_path):
    path = tmp_path / "weights.mat"
    path.write_bytes(b"\x80\x02}q\x00." + bytes(1000))
    with _raises(path, "not a MATLAB"):
        read_matconvnet(path)


@pytest.mark.parametrize("version", WRITERS)
def test_truncated_file(tmp_path, small_params, version):
    path = WRITERS[version](tmp_path / "net.mat", small_params, _meta(7))
    data = path.read_bytes()
    for keep in (len(data) // 2, 700, 300):
        path.write_bytes(data[:keep])
        with _raises(path, "truncated"):
            read_matconvnet(path)


@pytest.mark.parametrize("version", WRITERS)
def test_missing_params_variable(tmp_path, version):
    path = WRITERS[version](tmp_path / "net.mat", None, _meta(7))
    with _raises(path, "'params'"):
        read_matconvnet(path)


@pytest.mark.parametrize("version", WRITERS)
def test_missing_tensor(tmp_path, small_params, version):
    path = WRITERS[version](tmp_path / "net.mat", _without(small_params, "bn3b_branch2a_moments"),
                            _meta(7))
    with _raises(path, "missing", "bn3b_branch2a_moments"):
        read_matconvnet(path)


@pytest.mark.parametrize("name", ["conv1_filter", "fc1000_filter"])
def test_missing_essential_tensor(tmp_path, small_params, name):
    path = mcn.write_v5(tmp_path / "net.mat", _without(small_params, name), _meta(7))
    with _raises(path, name):
        read_matconvnet(path)


@pytest.mark.parametrize("version", WRITERS)
@pytest.mark.parametrize("name, shape", [
    ("res3b_branch2b_filter", (3, 3, 32, 16)),
    ("bn3b_branch2a_moments", (32, 3)),
    ("bn2a_branch2c_mult", (31, 1)),
    ("conv1_filter", (7, 7, 4, 8)),
    ("fc1000_filter", (2, 2, 512, 7)),
])
def test_wrong_shape(tmp_path, small_params, version, name, shape):
    params = dict(small_params)
    params[name] = np.zeros(shape, dtype=np.float32)
    path = WRITERS[version](tmp_path / "net.mat", params, _meta(7))
    with _raises(path, name, "x".join(map(str, shape))):
        read_matconvnet(path)


def test_unexpected_tensor(tmp_path, small_params):
    params = dict(small_params, res2a_branch2d_filter=np.zeros((1, 1, 8, 8), np.float32))
    path = mcn.write_v5(tmp_path / "net.mat", params, _meta(7))
    with _raises(path, "res2a_branch2d_filter"):
        read_matconvnet(path)


def test_missing_block_is_named(tmp_path):
    params = mcn.resnet_params(_caffe_resnet("bottleneck", (1, 1, 4, 1)), numbered_stages={4})
    params = {name: value for name, value in params.items() if "4b2_" not in name}
    path = mcn.write_v5(tmp_path / "net.mat", params, _meta(7))
    with _raises(path, "missing", "res4b2_branch2a_filter"):
        read_matconvnet(path)


def test_mixed_block_names_in_a_stage(tmp_path, small_params):
    params = {name.replace("res3b_", "res3b1_").replace("bn3b_", "bn3b1_"): value
              for name, value in small_params.items()}
    params.update({name: value for name, value in small_params.items() if name.startswith(("res3b_", "bn3b_"))})
    path = mcn.write_v5(tmp_path / "net.mat", params, _meta(7))
    with _raises(path, "res3"):
        read_matconvnet(path)


def test_non_positive_sigma(tmp_path, small_params):
    params = dict(small_params)
    moments = params["bn4a_branch1_moments"].copy()
    moments[5, 1] = 0.0
    params["bn4a_branch1_moments"] = moments
    path = mcn.write_v5(tmp_path / "net.mat", params, _meta(7))
    with _raises(path, "bn4a_branch1_moments", "channel 6"):
        read_matconvnet(path)


def test_average_image_of_the_wrong_size(tmp_path, small_params):
    path = mcn.write_v5(tmp_path / "net.mat", small_params, _meta(7, np.zeros((256, 256, 3))))
    with _raises(path, "averageImage", "256x256x3"):
        read_matconvnet(path)


# --------------------------------------------------------------------------------------------
#                             the whole network in one variable `net` (cnn_train checkpoints)
# --------------------------------------------------------------------------------------------

def _fixture_contents() -> tuple[dict[str, np.ndarray], dict]:
    """The fixture's params (name -> MATLAB array) and meta, read with scipy alone."""
    import scipy.io
    raw = scipy.io.loadmat(str(FIXTURE_MAT))
    params = {str(record["name"][0]): record["value"] for record in raw["params"][0]}
    meta = raw["meta"][0, 0]
    normalization, classes = meta["normalization"][0, 0], meta["classes"][0, 0]
    texts = lambda cell: [str(item[0]) for item in cell.ravel()]  # noqa: E731
    return params, mcn.meta(average_image=normalization["averageImage"],
                            descriptions=texts(classes["description"]),
                            class_names=texts(classes["name"]))


def _card_fields(card) -> dict:
    """The card without what names the file (its name, file name and checksum)."""
    fields = card.to_dict()
    for key in ("name", "source", "sha256"):
        fields.pop(key)
    return fields


@pytest.mark.parametrize("version", WRITERS)
@pytest.mark.parametrize("companions", [True, False], ids=["with-state-stats", "net-alone"])
def test_net_wrapped_fixture_gives_the_reference_outputs(tmp_path, version, companions):
    _need_fixture()
    params, meta = _fixture_contents()
    path = mcn.write_net(tmp_path / "net-epoch-20.mat", version, params, meta, companions)
    import scipy.io
    if version == "v5":
        expected_variables = {"net", "state", "stats"} if companions else {"net"}
        assert {name for name, _, _ in scipy.io.whosmat(str(path))} == expected_variables

    import imagezoo
    model = imagezoo.load_model(path)
    expected = np.load(FIXTURE_IO)
    with torch.no_grad():
        logits = model(torch.from_numpy(expected["input"]))
    np.testing.assert_allclose(logits.numpy(), expected["logits"], **TOLERANCE)
    x = imagezoo.preprocess(expected["photo"], model.card)
    np.testing.assert_allclose(x.numpy(), expected["input"], rtol=1e-5, atol=1e-5)

    top_tensors, top_card = read_matconvnet(FIXTURE_MAT)
    net_tensors, net_card = read_matconvnet(path)
    assert net_tensors.keys() == top_tensors.keys()
    for name, tensor in top_tensors.items():
        assert torch.equal(net_tensors[name], tensor), name
    assert _card_fields(net_card) == _card_fields(top_card)
    assert np.array_equal(net_card.preprocess.mean_image, top_card.preprocess.mean_image)
    assert net_card.name == "net-epoch-20" and net_card.source == "net-epoch-20.mat"


@pytest.mark.parametrize("version", WRITERS)
def test_top_level_and_net_layouts_read_alike(tmp_path, small_model, small_params, version):
    meta = _meta(7)
    top = WRITERS[version](tmp_path / "top.mat", small_params, meta)
    net = mcn.write_net(tmp_path / "net.mat", version, small_params, meta)
    top_tensors, top_card = read_matconvnet(top)
    net_tensors, net_card = read_matconvnet(net)
    assert all(torch.equal(net_tensors[name], tensor) for name, tensor in top_tensors.items())
    assert net_tensors.keys() == top_tensors.keys()
    assert _card_fields(net_card) == _card_fields(top_card)
    imported, _ = _load(net)
    _assert_same_logits(small_model, imported)


@pytest.mark.parametrize("version", WRITERS)
@pytest.mark.parametrize("under_net", [False, True], ids=["top-level", "in-net"])
def test_simplenn_network_gets_its_own_message(tmp_path, version, under_net):
    path = mcn.write_simplenn(tmp_path / "imagenet-vgg-f.mat", version, under_net)
    layers = "net.layers" if under_net else "layers"
    with pytest.raises(WeightsError) as error:
        read_matconvnet(path)
    message = str(error.value)
    assert message.startswith(f"{path}: a MatConvNet SimpleNN network ({layers} as a cell "
                              f"array), not a DagNN ResNet; imagezoo reads DagNN ResNets (")
    assert "no branches" in message and "\n" not in message
    assert "has no 'params'" not in message


@pytest.mark.parametrize("version", WRITERS)
def test_net_without_params_or_layers(tmp_path, version):
    path = mcn.VARIABLE_WRITERS[version](tmp_path / "other.mat",
                                         {"net": {"meta": _meta(3)}, "stats": {"x": np.ones((2, 2))}})
    with _raises(path, "has no 'params' variable (nor 'net.params')", "net, stats"):
        read_matconvnet(path)


def test_net_that_is_not_a_struct(tmp_path):
    path = mcn.write_variables_v5(tmp_path / "odd.mat", {"net": np.ones((2, 2))})
    with _raises(path, "'net' is a MATLAB double, not a struct"):
        read_matconvnet(path)
