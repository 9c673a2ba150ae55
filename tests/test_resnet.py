"""The ResNet builder: torchvision parity with real reference outputs, and each switch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import imagezoo
from imagezoo.errors import WeightsError, WeightsMismatchError
from imagezoo.models.resnet import ResNet, ResNetSpec, resnet
from conftest import shared_fixture


def collect_outputs(model, x, names):
    outputs = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: outputs.__setitem__(name, out)) for name in names]
    with torch.no_grad():
        logits = model(x)
    for hook in hooks:
        hook.remove()
    return logits, outputs


def test_resnet18_reproduces_torchvision_logits_and_stages():
    reference = np.load(shared_fixture("torchvision", "resnet18_random_io.npz"))
    model = imagezoo.load_model("resnet18", weights=shared_fixture("torchvision", "resnet18_random.pth"))
    stages = ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    logits, outputs = collect_outputs(model, torch.from_numpy(reference["input"]), stages)
    np.testing.assert_allclose(logits.numpy(), reference["logits"], rtol=1e-4, atol=1e-4)
    for name in stages:
        np.testing.assert_allclose(outputs[name].numpy(), reference[name], rtol=1e-4, atol=1e-4)


def test_resnet18_end_to_end_from_the_photo():
    reference = np.load(shared_fixture("torchvision", "resnet18_random_io.npz"))
    model = imagezoo.load_model("resnet18", weights=shared_fixture("torchvision", "resnet18_random.pth"))
    x = imagezoo.preprocess(shared_fixture("torchvision", "photo_300x400.png"), model.card)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), reference["logits"], rtol=1e-4, atol=1e-4)


def test_resnet50_fp16_safetensors_reproduces_torchvision():
    reference = np.load(shared_fixture("torchvision", "resnet50_random_fp16_io.npz"))
    weights = shared_fixture("torchvision", "resnet50_random_fp16.safetensors")
    model = imagezoo.load_model("resnet50", weights=weights)
    assert model.conv1.weight.dtype == torch.float32
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["input"]))
    np.testing.assert_allclose(logits.numpy(), reference["logits"], rtol=1e-4, atol=1e-4)
    assert model.card.source == weights.name and len(model.card.sha256) == 64


def test_state_dict_for_another_depth_names_the_misfits():
    with pytest.raises(WeightsMismatchError) as caught:
        imagezoo.load_model("resnet34", weights=shared_fixture("torchvision", "resnet18_random.pth"))
    error = caught.value
    assert "layer1.2.conv1.weight" in error.missing
    assert not error.unexpected and not error.misshapen
    assert "resnet18_random.pth does not fit" in str(error) and "missing" in str(error)


def test_wrong_shapes_and_unexpected_tensors_are_named(tmp_path):
    state = resnet(18, num_classes=10).state_dict()
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "r18_10.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as caught:
        imagezoo.load_model("resnet18", weights=path)
    assert caught.value.unexpected == ["extra.weight"]
    assert ("fc.weight", (10, 512), (1000, 512)) in caught.value.misshapen
    assert "fc.weight (file (10, 512), model (1000, 512))" in str(caught.value)


def test_checkpoint_wrappers_and_dataparallel_prefix_are_unwrapped(tmp_path):
    source = resnet(18)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    model = imagezoo.load_model("resnet18", weights=tmp_path / "ckpt.pt")
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_pickle_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Exploit()}, path, _use_new_zipfile_serialization=True)
    with pytest.raises(WeightsError, match="refused to load"):
        imagezoo.load_model("resnet18", weights=path)
    assert not marker.exists()


def test_not_a_weight_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="notes.pth"):
        imagezoo.load_model("resnet18", weights=path)
    with pytest.raises(WeightsError, match="no such weight file"):
        imagezoo.load_model("resnet18", weights=tmp_path / "absent.pth")


@pytest.mark.parametrize("block, layers, width, expansion", [
    ("basic", (1, 1, 1, 1), 8, 1), ("bottleneck", (1, 2, 1, 1), 16, 4),
    ("bottleneck", (2, 1, 3, 1, 1), 4, 4), ("basic", (3,), 5, 1)])
def test_any_block_counts_and_widths(block, layers, width, expansion):
    model = ResNet(ResNetSpec(block=block, layers=layers, width=width, num_classes=7)).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)
    last = width * 2 ** (len(layers) - 1) * expansion
    assert model.fc.in_features == last
    assert len(getattr(model, f"layer{len(layers)}")) == layers[-1]


def test_torchvision_module_names():
    names = set(resnet(50).state_dict())
    for name in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight",
                 "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean",
                 "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"]:
        assert name in names
    assert "conv1.bias" not in names
    assert "conv1.bias" in set(resnet(50, conv1_bias=True).state_dict())


def test_stride_in_1x1_moves_the_stride():
    v1 = resnet(50, stride_in_1x1=True)
    v15 = resnet(50)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    # Same tensors, different arithmetic: the outputs must differ.
    v1.load_state_dict(v15.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(v1.eval()(x), v15.eval()(x))


def test_stride_in_1x1_by_hand():
    """A strided 1x1 convolution picks every other pixel, then the 3x3 runs at stride 1."""
    torch.manual_seed(0)
    block = resnet(50, stride_in_1x1=True).layer2[0].eval()
    x = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        reduced = F.conv2d(x[:, :, ::2, ::2], block.conv1.weight)
        expected = block.relu(block.bn1(reduced))
        actual = block.relu(block.bn1(block.conv1(x)))
    torch.testing.assert_close(actual, expected)


def test_caffe_pool1_rounds_up_and_does_not_pad():
    caffe, torchvision_style = resnet(18, pool1="caffe"), resnet(18)
    x = torch.arange(1 * 1 * 6 * 6, dtype=torch.float32).view(1, 1, 6, 6)
    # 6 -> ceil((6 - 3) / 2) + 1 = 3 with windows starting at 0, 2, 4 (the last one clipped).
    pooled = caffe.maxpool(x)
    assert pooled.shape == (1, 1, 3, 3)
    expected = torch.tensor([[14.0, 16.0, 17.0], [26.0, 28.0, 29.0], [32.0, 34.0, 35.0]])
    assert torch.equal(pooled[0, 0], expected)
    # torchvision pads by 1: windows start at -1, 1, 3.
    assert torch.equal(torchvision_style.maxpool(x)[0, 0],
                       torch.tensor([[7.0, 9.0, 11.0], [19.0, 21.0, 23.0], [31.0, 33.0, 35.0]]))
    # On a 224 input both give 56 x 56 after conv1 (112) and the pool.
    assert caffe.maxpool(torch.zeros(1, 1, 112, 112)).shape[-1] == 56
    assert caffe.maxpool(torch.zeros(1, 1, 113, 113)).shape[-1] == 56
    assert torchvision_style.maxpool(torch.zeros(1, 1, 113, 113)).shape[-1] == 57


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="pool1"):
        ResNetSpec(pool1="max")
    with pytest.raises(ValueError, match="block"):
        ResNetSpec(block="wide")
