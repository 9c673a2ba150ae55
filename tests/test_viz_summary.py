"""The layer table: published totals, hand-derived multiply-adds, depth, names, JSON/CSV."""
from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch import nn

import imagezoo
from imagezoo.errors import ImagezooError
from imagezoo.models.layers import resolve_layers
from imagezoo.models.resnet import ResNet, ResNetSpec, STANDARD_DEPTHS
from imagezoo.viz import summary

# torchvision's published figures at 224 x 224: the weights' "num_params" and "_ops" (GFLOPS,
# counted as multiply-adds of convolutions and linear layers), torchvision/models/resnet.py
# IMAGENET1K_V1. The documentation's table rounds them to two decimals (1.81, 3.66, 4.09,
# 7.80, 11.51). EfficientNet-Lite0: 4.65 M parameters and 0.39 G (timm's tf_efficientnet_lite0).
PUBLISHED = {
    "resnet18": (11_689_512, 1.814),
    "resnet34": (21_797_672, 3.664),
    "resnet50": (25_557_032, 4.089),
    "resnet101": (44_549_160, 7.801),
    "resnet152": (60_192_808, 11.514),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_resnet_totals_are_torchvisions_published_figures(name):
    parameters, giga_ops = PUBLISHED[name]
    table = summary(imagezoo.load_model(name, weights="random"), depth=1)
    assert table.input_shape == (1, 3, 224, 224)
    assert table.parameters == parameters
    assert table.trainable == parameters and table.frozen == 0
    assert round(table.mult_adds / 1e9, 3) == giga_ops
    assert not any("v1 (Caffe" in note for note in table.notes)


def test_efficientnet_lite0_totals():
    table = summary(imagezoo.load_model("efficientnet_lite0"))
    assert table.parameters == 4_652_008                 # "4.65 M"
    assert round(table.mult_adds / 1e9, 2) == 0.39
    assert table.mult_adds == 385_187_552


def test_multiply_adds_of_a_tiny_network_by_hand():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
            self.bn = nn.BatchNorm2d(8)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = self.depthwise(torch.relu(self.bn(self.conv(x))))
            return self.fc(torch.flatten(self.pool(x), 1))

    model = Tiny()
    model.fc.requires_grad_(False)
    table = summary(model, size=16)
    rows = {row.module: row for row in table.rows}
    # conv: 16x16 -> 8x8 (stride 2, pad 1); each of the 8*8*8 = 512 outputs is a 3x3x3 dot product.
    assert rows["conv"].output_shape == (1, 8, 8, 8)
    assert rows["conv"].mult_adds == 8 * 8 * 8 * (3 * 3 * 3) == 13_824
    # depthwise: groups = channels, so each of the 512 outputs sees 1 channel x 3x3.
    assert rows["depthwise"].mult_adds == 8 * 8 * 8 * (8 // 8) * 3 * 3 == 4_608
    # fc: 5 outputs x 8 inputs; batch norm, pooling and biases are not counted.
    assert rows["fc"].mult_adds == 5 * 8 == 40
    assert rows["bn"].mult_adds == rows["pool"].mult_adds == 0
    assert table.mult_adds == 13_824 + 4_608 + 40
    # parameters: conv 8*3*3*3 + 8 bias, bn 8 + 8, depthwise 8*1*3*3, fc 5*8 + 5 (frozen)
    assert (rows["conv"].trainable, rows["bn"].trainable, rows["depthwise"].trainable) == (224, 16, 72)
    assert (rows["fc"].trainable, rows["fc"].frozen) == (0, 45)
    assert (table.trainable, table.frozen) == (224 + 16 + 72, 45)
    assert table.model == "Tiny"


def test_a_dry_run_leaves_the_model_as_it_was():
    model = ResNet(ResNetSpec(block="basic", layers=(1, 1), width=8, num_classes=3))
    model.train()
    before = model.bn1.running_mean.clone()
    summary(model, size=32)
    assert model.training
    assert torch.equal(model.bn1.running_mean, before)


@pytest.mark.parametrize("depth", [None, 1, 2, 3])
def test_rows_add_up_to_the_totals_at_every_depth(depth):
    table = summary(imagezoo.load_model("resnet50", weights="random"), depth=depth)
    assert sum(row.parameters for row in table.rows) == table.parameters
    assert sum(row.mult_adds for row in table.rows) == table.mult_adds
    assert max(row.depth for row in table.rows) == (depth or 4)   # layer1.0.downsample.0


def test_depth_collapses_stages_and_blocks():
    model = imagezoo.load_model("resnet50", weights="random")
    stages = summary(model, depth=1)
    assert [row.module for row in stages.rows] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    layer3 = next(row for row in stages.rows if row.module == "layer3")
    assert not layer3.expanded and layer3.output_shape == (1, 1024, 14, 14)
    assert layer3.parameters == sum(p.numel() for p in model.layer3.parameters())
    blocks = summary(model, depth=2)
    assert len([row for row in blocks.rows if row.depth == 2]) == sum(STANDARD_DEPTHS[50][0])
    assert next(row for row in blocks.rows if row.module == "layer3").expanded
    assert "-" in blocks.format_table()


def test_v1_variant_is_flagged_and_differs_slightly():
    layers, block = STANDARD_DEPTHS[50]
    v1 = ResNet(ResNetSpec(block=block, layers=layers, stride_in_1x1=True, pool1="caffe",
                           conv1_bias=True))
    table = summary(v1)
    assert table.parameters == PUBLISHED["resnet50"][0] + 64     # conv1's bias
    # The 1x1 convolution that carries the stride now works at the lower resolution; in
    # each of the three downsampling blocks it saves 3/4 of its multiply-adds.
    saved = sum(3 * (h * h) * c_in * planes
                for h, c_in, planes in ((28, 256, 128), (14, 512, 256), (7, 1024, 512)))
    assert table.mult_adds == 4_089_184_256 - saved == 3_857_973_248
    [note] = [note for note in table.notes if "v1 (Caffe" in note]
    assert "+64 parameters" in note and "-231,211,008" in note and "stride 2" in note
    assert "v1 (Caffe" in table.format_table()


def test_caffe_and_paddle_names_are_the_aliases_that_resolve():
    model = imagezoo.load_model("resnet101", weights="random")
    caffe = summary(model, depth=3, names="caffe")
    shown = {row.name: row.module for row in caffe.rows}
    # MSRA's ResNet-101 letters the 3-block stages and numbers the others (res4b22).
    assert shown["res2c"] == "layer1.2" and shown["res3b1"] == "layer2.1"
    assert shown["res4b22"] == "layer3.22" and shown["res5c"] == "layer4.2"
    assert shown["res4b22_branch2c"] == "layer3.22.conv3" and shown["fc1000"] == "fc"
    paddle = {row.name: row.module for row in summary(model, depth=2, names="paddle").rows}
    assert paddle["res4_23"] == "layer3.22" and paddle["conv1_conv"] == "conv1"
    for table in (shown, paddle):
        aliases = [name for name, module in table.items() if name != module]
        for name, ref in zip(aliases, resolve_layers(model, aliases)):
            assert ref.module == table[name]
    resnet50 = {row.name for row in summary(imagezoo.load_model("resnet50", weights="random"),
                                            depth=2, names="caffe").rows}
    assert {"res4f", "res5c"} <= resnet50


def test_names_of_a_model_without_aliases_and_bad_arguments():
    model = imagezoo.load_model("efficientnet_lite0")
    table = summary(model, depth=1, names="caffe")
    assert any("no caffe layer names" in note for note in table.notes)
    assert table.rows[0].name == "_conv_stem"
    with pytest.raises(ImagezooError, match="torch, caffe, paddle"):
        summary(model, names="keras")
    with pytest.raises(ValueError):
        summary(model, depth=0)

    class Opaque(nn.Module):   # what an ONNX or TorchScript model looks like from here
        def forward(self, x):
            return x.mean(dim=(2, 3))

    with pytest.raises(ImagezooError, match="exposes no layers"):
        summary(Opaque())


def test_json_csv_and_other_sizes():
    model = ResNet(ResNetSpec(block="basic", layers=(1, 1), width=8, num_classes=3))
    table = summary(model, size=64, depth=1)
    data = json.loads(table.to_json())
    assert data["input_shape"] == [1, 3, 64, 64]
    assert data["totals"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert [row["module"] for row in data["rows"]][:2] == ["conv1", "bn1"]
    assert data["rows"][0]["output_shape"] == [1, 8, 32, 32]
    rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert rows[-1]["name"] == "total"
    assert int(rows[-1]["mult_adds"]) == table.mult_adds
    assert rows[0]["output_shape"] == "1x8x32x32"
    assert summary(model, size=(32, 48)).input_shape == (1, 3, 32, 48)


def test_a_model_that_needs_values_is_run_for_real():
    """Shapes come from a run on meta tensors; a model that reads a value falls back to a real
    run, and nothing the first attempt saw is counted twice."""
    class ReadsAValue(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)

        def forward(self, x):
            y = self.conv(x)
            return y if float(y.abs().sum()) >= 0 else -y   # .item() has no meta version

    table = summary(ReadsAValue(), size=8)
    assert table.mult_adds == 8 * 8 * 4 * 3 * 3 * 3
    assert table.rows[0].output_shape == (1, 4, 8, 8)
