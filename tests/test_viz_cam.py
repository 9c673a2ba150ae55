"""Class-activation heat maps: on the cat, against Captum, against the papers' formulas."""
from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

import imagezoo
from imagezoo.data.transforms import Preprocess, center_crop, resize_and_pad
from imagezoo.errors import ImagezooError
from imagezoo.models.layers import UnknownLayerError
from imagezoo.viz.cam import explain, input_box, overlay

CAT = str(resources.files("imagezoo.resources").joinpath("cat.png"))
COFFEE = str(resources.files("imagezoo.resources").joinpath("coffee.jpg"))

# The cat's face in the 224 x 224 crop the default model sees (cat.png, 451 x 300, resized to
# 384 x 256, centre crop at x 80, y 16), judged by eye: from the left cheek to beyond the
# right eye, from the brow to the chin. Only the top-right corner of the crop is background.
CAT_FACE = {"x": (10, 215), "y": (25, 220)}


@pytest.fixture(scope="module")
def lite0():
    return imagezoo.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def cat_top3(lite0):
    """The default explanation of the cat: Grad-CAM on the last block, top 3 classes."""
    return explain(lite0, CAT, top=3)


@pytest.fixture(scope="module")
def resnet18():
    """Random weights, fed 112 x 112 crops to keep the tests fast (layer4 is then 4 x 4)."""
    torch.manual_seed(0)
    model = imagezoo.load_model("resnet18", weights="random")
    model.card.preprocess = Preprocess(resize=128, crop=112)
    return model


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(column), int(row)


def on_the_face(heatmap: np.ndarray) -> bool:
    x, y = peak(heatmap)
    return CAT_FACE["x"][0] <= x <= CAT_FACE["x"][1] and CAT_FACE["y"][0] <= y <= CAT_FACE["y"][1]


def test_heat_map_peak_lies_on_the_cat(lite0, cat_top3):
    assert [e.label for e in cat_top3] == ["tiger cat", "Egyptian cat", "tabby"]
    for explanation in cat_top3:
        assert explanation.heatmap_input.shape == (224, 224)
        assert on_the_face(explanation.heatmap_input)
    for method in ("gradcam++", "cam"):
        [explanation] = explain(lite0, CAT, method=method)
        assert on_the_face(explanation.heatmap_input)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "cam"])
def test_each_class_is_found_where_it_is(lite0, method):
    """The cat top-left and the espresso bottom-right of one picture: each class's evidence
    peaks in its own quarter (the 448 x 448 picture becomes 256 x 256 and a centre crop at
    16, so the quarters meet at 112 in the model's input)."""
    spec = lite0.card.preprocess
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    for source, place in ((CAT, (0, 0)), (COFFEE, (224, 224))):
        with Image.open(source) as photo:
            canvas.paste(center_crop(resize_and_pad(photo.convert("RGB"), spec), 224), place)
    cat, espresso = explain(lite0, canvas, target=["tiger cat", 967], method=method)
    assert (cat.label, espresso.label) == ("tiger cat", "espresso")
    assert max(peak(cat.heatmap_input)) < 112
    assert min(peak(espresso.heatmap_input)) >= 112


def captum_gradcam(model, module, x, target) -> np.ndarray:
    from captum.attr import LayerGradCam
    attribution = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    heat = attribution.detach()[0, 0]
    return (heat / heat.max()).numpy()


def test_gradcam_matches_captum_on_the_default_model(lite0, cat_top3):
    pytest.importorskip("captum")
    x = imagezoo.preprocess(CAT, lite0.card)
    assert [e.layer for e in cat_top3] == ["_blocks.15"] * 3
    for explanation in cat_top3:
        reference = captum_gradcam(lite0, lite0._blocks[15], x, explanation.index)
        assert explanation.heatmap.shape == reference.shape == (7, 7)
        np.testing.assert_allclose(explanation.heatmap, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layer, module", [("layer4", "layer4"), ("res5b", "layer4.1"),
                                           ("layer3.1.conv2", "layer3.1.conv2")])
def test_gradcam_matches_captum_on_resnet_layers_and_aliases(resnet18, layer, module):
    pytest.importorskip("captum")
    x = imagezoo.preprocess(CAT, resnet18.card)
    [explanation] = explain(resnet18, x, layer=layer, target=282)
    reference = captum_gradcam(resnet18, resnet18.get_submodule(module), x, 282)
    np.testing.assert_allclose(explanation.heatmap, reference, rtol=0, atol=1e-5)
    assert explanation.layer == layer


def test_cam_equals_gradcam_before_global_average_pooling(resnet18):
    """With global average pooling and one linear layer, dy_c/dA_kij = W_ck / (h w) for every
    position, so Grad-CAM's weights are CAM's divided by h w (Selvaraju et al. 2017, sec. 3.1)."""
    for target in (0, 282):
        [cam] = explain(resnet18, CAT, target=target, method="cam")
        [gradcam] = explain(resnet18, CAT, target=target, method="gradcam")
        assert cam.layer == "layer4"
        np.testing.assert_allclose(cam.heatmap, gradcam.heatmap, rtol=0, atol=1e-5)


def test_gradcam_plus_plus_follows_the_papers_formula(lite0):
    """Chattopadhay et al. 2018, eq. 19 (exponential score), written out independently."""
    x = imagezoo.preprocess(CAT, lite0.card)
    kept = {}
    hook = lite0._blocks[15].register_forward_hook(lambda m, i, out: kept.__setitem__("A", out))
    try:
        logits = lite0(x)
    finally:
        hook.remove()
    A = kept["A"]
    target = int(logits.argmax())
    g = torch.autograd.grad(logits[0, target], A)[0][0].detach()
    A = A[0].detach()
    alpha_numerator = g ** 2
    alpha_denominator = 2 * g ** 2 + A.sum(dim=(1, 2))[:, None, None] * g ** 3
    alpha_denominator = torch.where(alpha_denominator != 0, alpha_denominator,
                                    torch.ones_like(alpha_denominator))
    alpha = alpha_numerator / alpha_denominator
    w = (alpha * torch.relu(g)).sum(dim=(1, 2))
    expected = torch.relu((w[:, None, None] * A).sum(dim=0))
    expected = (expected / expected.max()).numpy()
    [explanation] = explain(lite0, x, method="gradcam++")
    assert explanation.index == target and explanation.input_box is None
    np.testing.assert_allclose(explanation.heatmap, expected, rtol=0, atol=1e-5)


def test_explanations_in_order_and_the_model_untouched(resnet18):
    resnet18.train()
    before = resnet18.bn1.running_mean.clone()
    explanations = explain(resnet18, CAT, top=3)
    assert resnet18.training and torch.equal(resnet18.bn1.running_mean, before)
    resnet18.eval()
    assert all(p.grad is None for p in resnet18.parameters())
    probabilities = [e.probability for e in explanations]
    assert probabilities == sorted(probabilities, reverse=True)
    for e in explanations:
        assert e.heatmap.dtype == np.float32 and e.heatmap.shape == (4, 4)
        assert e.heatmap.min() >= 0 and e.heatmap.max() == pytest.approx(1.0)
        assert 0 <= e.heatmap_input.min() and e.heatmap_input.max() <= 1
    # A Paddle "_bn" alias is the batch norm's output after its ReLU.
    [paddle] = explain(resnet18, CAT, layer="res5_2_branch2a_bn", target=1)
    assert paddle.heatmap.shape == (4, 4) and paddle.layer == "res5_2_branch2a_bn"
    # Under inference mode too, and with every weight frozen.
    resnet18.requires_grad_(False)
    try:
        with torch.inference_mode():
            [frozen] = explain(resnet18, CAT, target=1)
    finally:
        resnet18.requires_grad_(True)
    assert frozen.heatmap.max() == pytest.approx(1.0)


def test_where_the_input_lies_in_the_photo(lite0, cat_top3):
    # cat.png is 451 x 300. Lite0's card (TensorFlow's eval) crops the centre square of
    # int(0.875 * 300) = 262 at ((451 - 262) + 1) // 2 = 95 and ((300 - 262) + 1) // 2 = 19.
    box = input_box((451, 300), lite0.card.preprocess)
    assert box == (95, 19, 357, 281)
    assert cat_top3[0].input_box == pytest.approx(box)
    # torchvision's: resized to 384 x 256, the 224 crop starts at x 80, y 16.
    box = input_box((451, 300), Preprocess(resize=256, crop=224))
    assert box == pytest.approx((80 * 451 / 384, 16 * 300 / 256, 304 * 451 / 384, 240 * 300 / 256))
    # A photo smaller than the crop is padded: the input reaches beyond the photo.
    assert input_box((100, 50), Preprocess(resize=None, crop=224)) == (-62, -87, 162, 137)


def test_overlay_png(tmp_path, cat_top3):
    explanation = cat_top3[0]
    first = overlay(CAT, explanation, tmp_path / "cat-gradcam.png")
    second = overlay(CAT, explanation, tmp_path / "again.png")
    with Image.open(first) as picture:
        picture.load()
        assert picture.format == "PNG" and picture.size == (700, 600)
        assert "Software" not in picture.info
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_bad_requests(lite0, resnet18):
    with pytest.raises(ImagezooError, match="method must be one of"):
        explain(lite0, CAT, method="lime")
    with pytest.raises(ImagezooError, match="not a feature map"):
        explain(lite0, CAT, layer="_fc")
    with pytest.raises(UnknownLayerError):
        explain(resnet18, CAT, layer="res9z")
    with pytest.raises(ImagezooError, match="no class 'tigger cat'; closest: tiger cat"):
        explain(lite0, CAT, target="tigger cat")
    with pytest.raises(ImagezooError, match="out of range"):
        explain(lite0, CAT, target=1000)
    with pytest.raises(ImagezooError, match="use gradcam"):
        explain(resnet18, CAT, layer="layer3", method="cam")
    with pytest.raises(ImagezooError, match="softmax"):
        explain(resnet18, CAT, layer="output")
