"""The default model: real ImageNet weights that classify a real cat as a cat."""
from __future__ import annotations

import json

import pytest
import torch

import imagezoo
from imagezoo.models.efficientnet_lite import Conv2dSame
from imagezoo.models.registry import EFFICIENTNET_LITE0_SHA256

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_default_model_sees_the_cat(lite0, cat_photo):
    with torch.no_grad():
        probabilities = lite0(imagezoo.preprocess(cat_photo, lite0.card)).softmax(1)[0]
    assert int(probabilities.argmax()) in CAT_CLASSES
    assert float(probabilities[list(CAT_CLASSES)].sum()) > 0.8


def test_random_weights_do_not_see_the_cat(cat_photo):
    torch.manual_seed(0)
    model = imagezoo.load_model("efficientnet_lite0", weights="random")
    with torch.no_grad():
        probabilities = model(imagezoo.preprocess(cat_photo, model.card)).softmax(1)[0]
    assert float(probabilities[list(CAT_CLASSES)].sum()) < 0.1


def test_card_records_provenance_and_preprocessing(lite0):
    card = lite0.card
    assert card.sha256 == EFFICIENTNET_LITE0_SHA256
    assert card.source == "efficientnet-lite0-57934424.pth"
    assert card.license.startswith("Apache-2.0")
    assert (card.preprocess.mean, card.preprocess.std, card.preprocess.scale) == (
        (127.0,) * 3, (128.0,) * 3, 1.0)
    assert card.labels[285] == "Egyptian cat" and len(card.labels) == 1000
    again = imagezoo.ModelCard.from_json(json.dumps(card.to_dict()))
    assert again.to_dict() == card.to_dict()


def test_key_names_are_the_files(lite0):
    names = set(lite0.state_dict())
    for name in ["_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight",
                 "_blocks.15._project_conv.weight", "_conv_head.weight", "_bn1.bias", "_fc.weight"]:
        assert name in names
    assert all(m.eps == 1e-3 for m in lite0.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_same_padding_is_asymmetric_on_stride_two():
    """TensorFlow pads a stride-2 3x3 on an even input with 0 before and 1 after."""
    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    out = conv(x)
    assert out.shape == (1, 1, 2, 2)
    # Windows start at rows/cols 0 and 2 (no padding before): top-left taps are x[0,0], x[0,2], ...
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 3.0], [9.0, 11.0]]))
    # Stride 1, kernel 5: symmetric 2 + 2, so the output keeps its size.
    assert Conv2dSame(1, 1, 5, 1)(torch.zeros(1, 1, 7, 7)).shape == (1, 1, 7, 7)


@pytest.mark.parametrize("size", [224, 225, 193])
def test_any_input_size(lite0, size):
    with torch.no_grad():
        assert lite0(torch.zeros(1, 3, size, size)).shape == (1, 1000)
