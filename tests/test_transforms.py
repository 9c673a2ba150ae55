"""Preprocessing reproduces torchvision's evaluation transform and the other frameworks'."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from imagezoo.data.images import load_image
from imagezoo.data.transforms import (Preprocess, bilinear_resize, center_crop, crop_box,
                                      preprocess_array, preprocess_image,
                                      preprocess_ten_crop_array, resize_and_pad,
                                      resize_shorter_side, tensorflow_crop_box, to_array)
from imagezoo.models.registry import efficientnet_lite_preprocess, torchvision_preprocess
from conftest import ROOT, shared_fixture


def test_torchvision_spec_reproduces_torchvision_input():
    expected = np.load(shared_fixture("torchvision", "resnet18_random_io.npz"))["input"]
    photo = Image.open(shared_fixture("torchvision", "photo_300x400.png")).convert("RGB")
    actual = preprocess_image(photo, Preprocess()).unsqueeze(0).numpy()
    assert actual.shape == expected.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_fixture_photo_array_matches_png():
    data = np.load(shared_fixture("torchvision", "resnet18_random_io.npz"))
    photo = np.asarray(Image.open(shared_fixture("torchvision", "photo_300x400.png")).convert("RGB"))
    np.testing.assert_array_equal(photo, data["photo"])


@pytest.mark.parametrize("size, expected", [((400, 300), (341, 256)), ((300, 400), (256, 341)),
                                            ((256, 256), (256, 256)), ((1000, 10), (25600, 256))])
def test_resize_shorter_side_truncates_like_torchvision(size, expected):
    image = Image.new("RGB", size)
    assert resize_shorter_side(image, 256, "bilinear").size == expected


def test_centre_crop_rounds_like_torchvision():
    # (341 - 224) / 2 = 58.5 rounds to 58 (Python's round half to even), as torchvision does.
    assert crop_box(341, 256, 224) == (58, 16, 282, 240)
    assert crop_box(300, 300, 224, 0.0, 1.0) == (0, 76, 224, 300)


def test_bgr_order_mean_and_scale_are_data(rng):
    pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    spec = Preprocess(resize=None, crop=224, scale=1.0, channel_order="BGR",
                      mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0))
    actual = preprocess_image(Image.fromarray(pixels), spec).numpy()
    expected = pixels[:, :, ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68],
                                                               dtype=np.float32)
    np.testing.assert_allclose(actual, expected.transpose(2, 0, 1), atol=1e-5)


def test_mean_image_is_subtracted_per_pixel(rng):
    pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    mean_image = rng.uniform(0, 255, (224, 224, 3)).astype(np.float32)
    spec = Preprocess(resize=None, crop=224, scale=1.0, mean_image=mean_image, std=(1, 1, 1))
    actual = preprocess_image(Image.fromarray(pixels), spec).numpy()
    np.testing.assert_allclose(actual, (pixels - mean_image).transpose(2, 0, 1), atol=1e-4)


def test_small_image_is_zero_padded_to_the_crop():
    spec = Preprocess(resize=None, crop=8, scale=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    tensor = preprocess_image(Image.new("RGB", (4, 4), (200, 100, 50)), spec)
    assert tensor.shape == (3, 8, 8)
    assert torch.equal(tensor[:, 2:6, 2:6], torch.tensor([200.0, 100.0, 50.0]).view(3, 1, 1).expand(3, 4, 4))
    assert tensor[:, 0, :].abs().sum() == 0


def test_spec_round_trips_through_dict_and_rejects_nonsense(rng):
    spec = Preprocess(resize=224, crop=224, scale=1.0, mean_image=rng.uniform(size=(1, 1, 3)))
    again = Preprocess.from_dict(spec.to_dict())
    assert again.resize == 224 and again.scale == 1.0
    np.testing.assert_array_equal(again.mean_image, spec.mean_image)
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(interpolation="cubic-ish")
    with pytest.raises(ValueError, match="channel_order"):
        Preprocess(channel_order="RBG")


# ------------------------------------------------------------------------------------------
# TensorFlow's geometry (crop_fraction, antialias=False): EfficientNet-Lite0's card

TF_FIXTURE = ROOT / "tests" / "fixtures" / "tf_lite_eval" / "tf_lite_eval.npz"
TF_PHOTOS = {"cat": ("cat.png", 0), "astronaut": ("astronaut.jpg", 0),
             "rocket": ("rocket.jpg", 0), "rocket_portrait": ("rocket.jpg", 1)}
# Tolerance against TensorFlow's own output, in normalised units ((x - 127) / 128): 1e-6 is
# float32 rounding of values up to ~1, far below one grey level (1/128 = 0.0078). The NumPy
# resize does TensorFlow's float32 operations in TensorFlow's order, so it is in fact exact.
TF_TOLERANCE = 1e-6


def tf_photo(file: str, turns: int) -> Image.Image:
    pixels = np.asarray(load_image(ROOT / "src" / "imagezoo" / "resources" / file))
    return Image.fromarray(np.ascontiguousarray(np.rot90(pixels, turns)))


@pytest.mark.parametrize("name", list(TF_PHOTOS))
def test_lite0_card_reproduces_tensorflows_own_lite_eval(name):
    """tests/fixtures/tf_lite_eval/: TensorFlow's crop, resize (tensorflow/tpu's code calls
    tf.compat.v1's, TensorFlow 1's grid) and (x - 127) / 128 on the same decoded pixels (see
    the README there for how it was made)."""
    fixture = np.load(TF_FIXTURE)
    photo = tf_photo(*TF_PHOTOS[name])
    digest = hashlib.sha256(np.asarray(photo).tobytes()).hexdigest()
    assert digest == str(fixture[f"{name}_pixels_sha256"]), "the photo decodes differently now"
    spec = efficientnet_lite_preprocess()
    left, top, side = fixture[f"{name}_box"].tolist()
    assert tensorflow_crop_box(*photo.size, spec.crop_fraction) == (left, top, left + side, top + side)
    ours = preprocess_array(photo, spec).transpose(1, 2, 0)
    np.testing.assert_allclose(ours, fixture[name], rtol=0, atol=TF_TOLERANCE)
    assert torch.equal(preprocess_image(photo, spec), torch.from_numpy(preprocess_array(photo, spec)))


@pytest.mark.parametrize("name", ["cat", "rocket_portrait"])
def test_half_pixel_centers_reproduce_tensorflow_2s_resize(name):
    fixture = np.load(TF_FIXTURE)
    photo = tf_photo(*TF_PHOTOS[name])
    spec = dataclasses.replace(efficientnet_lite_preprocess(), half_pixel_centers=True)
    ours = preprocess_array(photo, spec).transpose(1, 2, 0)
    np.testing.assert_allclose(ours, fixture[f"{name}_tf2"], rtol=0, atol=TF_TOLERANCE)
    # The two grids are half a source pixel apart: visibly different numbers.
    assert np.abs(fixture[f"{name}_tf2"] - fixture[name]).max() > 0.05


def test_tensorflow_centre_square_offsets_round_up():
    # 0.875 * 300 = 262.5 -> 262; offsets (300 - 262 + 1) // 2 = 19 and
    # (451 - 262 + 1) // 2 = 95, where torchvision's round((451 - 262) / 2) gives 94.
    assert tensorflow_crop_box(451, 300, 0.875) == (95, 19, 357, 281)
    assert tensorflow_crop_box(7, 7, 0.875) == (1, 1, 7, 7)     # int(6.125) = 6, offset 1
    assert crop_box(451, 300, 262) == (94, 19, 356, 281)


@pytest.mark.parametrize("source, target", [((300, 451), (224, 224)), ((37, 23), (224, 150)),
                                            ((224, 224), (17, 31))])
def test_numpy_bilinear_is_torchs_half_pixel_bilinear_without_antialias(rng, source, target):
    """A second opinion on the half-pixel grid; TensorFlow's own output is the fixture's."""
    pixels = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
    ours = bilinear_resize(pixels, *target)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(pixels).permute(2, 0, 1)[None].float(), size=target, mode="bilinear",
        align_corners=False, antialias=False)[0].permute(1, 2, 0).numpy()
    assert ours.dtype == np.float32 and ours.shape == (*target, 3)
    # The same interpolation; PyTorch's kernel computes the weights its own way (not
    # TensorFlow's float32 steps), which moves a value by up to ~0.004 of a grey level.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=0.005)


def test_antialias_false_applies_to_torchvisions_geometry_and_ten_crops(rng):
    photo = Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8))
    spec = Preprocess(resize=256, crop=224, antialias=False)
    resized = bilinear_resize(np.asarray(photo), 256, 384)
    left, top, right, bottom = crop_box(384, 256, 224)
    expected = (resized[top:bottom, left:right] / np.float32(255.0) - np.float32(0.485)) \
        / np.float32(0.229)
    np.testing.assert_allclose(preprocess_array(photo, spec)[0], expected[..., 0], atol=1e-6)
    ten = preprocess_ten_crop_array(photo, spec)
    assert ten.shape == (10, 3, 224, 224)
    np.testing.assert_array_equal(ten[4], preprocess_array(photo, spec))       # the centre
    np.testing.assert_array_equal(ten[9], ten[4][:, :, ::-1])                  # its mirror
    # antialias=True keeps the Pillow path, bit for bit what it was.
    default = Preprocess()
    np.testing.assert_array_equal(preprocess_array(photo, default),
                                  to_array(center_crop(resize_and_pad(photo, default), 224), default))


def test_geometry_fields_round_trip_and_describe_themselves():
    lite = efficientnet_lite_preprocess()
    again = Preprocess.from_dict(lite.to_dict())
    assert (again.crop_fraction, again.antialias, again.half_pixel_centers, again.follows) == (
        0.875, False, False, lite.follows)
    assert "TensorFlow" in lite.follows and "torchvision" in torchvision_preprocess().follows
    assert lite.describe() == ("centre square of 0.875 x the shorter side, resized to 224x224 "
                               "(bilinear, no antialias, TensorFlow 1 grid)")
    assert Preprocess().describe() == "shorter side to 256 (bilinear), centre 224x224"
    old_card = {k: v for k, v in Preprocess().to_dict().items()
                if k not in ("crop_fraction", "antialias", "half_pixel_centers", "follows")}
    assert Preprocess.from_dict(old_card) == Preprocess()   # cards written before these fields
    with pytest.raises(ValueError, match="bilinear interpolation only"):
        Preprocess(interpolation="bicubic", antialias=False)
    with pytest.raises(ValueError, match="needs antialias=False"):
        Preprocess(half_pixel_centers=False)
    with pytest.raises(ValueError, match="crop_fraction"):
        Preprocess(crop_fraction=1.5)
    with pytest.raises(ValueError, match="needs a crop size"):
        Preprocess(crop=None, crop_fraction=0.875)
