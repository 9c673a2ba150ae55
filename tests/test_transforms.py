"""Preprocessing reproduces torchvision's evaluation transform and the other frameworks'."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagezoo.data.transforms import (Preprocess, crop_box, preprocess_image,
                                      resize_shorter_side)
from conftest import shared_fixture


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
