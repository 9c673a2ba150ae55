"""Shared test fixtures: the reference files in ../shared/fixtures and generated images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
CAT_PHOTO = ROOT / "src" / "imagezoo" / "resources" / "cat.png"


def shared_fixture(*parts: str) -> Path:
    """A file from ../shared/fixtures, or skip the test with the reason when it is absent."""
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference fixture {path} is absent (../shared/fixtures is not beside the "
                    f"project)")
    return path


def assert_stage_map_close(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """A stage's feature map against a reference's, as float32 allows.

    The stage maps of the reference fixtures reach ~900 (the input is 0..255), so float32
    rounding alone moves a near-zero element by up to ~5e-4: the references themselves are
    ~5e-4 from a float64 evaluation, and oneDNN's kernels differ from CPU to CPU by as much.
    Absolute error is therefore bounded relative to the map's scale (1e-5 of it, ~20x the
    noise seen); logits and pooled features keep the fixtures' rtol=atol=1e-4.
    """
    np.testing.assert_allclose(actual, expected, err_msg=name, **stage_tolerance(expected))


def stage_tolerance(expected: np.ndarray) -> dict:
    """The tolerance of ``assert_stage_map_close``, for ``assert_allclose``."""
    return {"rtol": 1e-4, "atol": max(1e-4, 1e-5 * float(np.abs(expected).max()))}


@pytest.fixture(scope="session", autouse=True)
def quiet_engine_defaults(tmp_path_factory):
    """The suite never writes to ~/.cache, and the CLI runs eager PyTorch unless a test asks
    for a backend: timing every backend for every little test model would cost minutes."""
    os.environ["IMAGEZOO_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["IMAGEZOO_BACKEND"] = "torch"
    yield


@pytest.fixture(scope="session")
def cat_photo() -> Path:
    return CAT_PHOTO


@pytest.fixture(scope="session")
def lite0():
    """The default model with its real ImageNet weights (loaded once per session)."""
    import imagezoo
    return imagezoo.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def lite0_torchvision_geometry(lite0):
    """The default model with torchvision's Resize(256) + CenterCrop(224) (Pillow, antialiased)
    instead of its card's TensorFlow geometry, for tests that spell out torchvision's
    protocols (ten crops) with Pillow's resize."""
    import copy
    from imagezoo.data.transforms import Preprocess
    model = copy.deepcopy(lite0)
    model.card.preprocess = Preprocess(resize=256, crop=224, interpolation="bilinear", scale=1.0,
                                       mean=(127.0,) * 3, std=(128.0,) * 3)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def assert_reproduces_reference(model, expected: dict) -> None:
    """A Paddle fixture's logits, pooled features and four stage maps (``input_bgr`` in)."""
    import torch
    captured = {}
    hooks = [getattr(model, f"layer{stage}").register_forward_hook(
                 lambda module, inputs, output, stage=stage:
                 captured.__setitem__(f"stage{stage}", output.clone()))
             for stage in range(1, 5)]
    with torch.no_grad():
        x = torch.from_numpy(expected["input_bgr"])
        logits = model(x)
        pooled = model.forward_features(x)
    for hook in hooks:
        hook.remove()
    np.testing.assert_allclose(logits.numpy(), expected["logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pooled.numpy(), expected["pooled"], rtol=1e-4, atol=1e-4)
    for stage in range(1, 5):
        key = f"stage{stage}"
        assert_stage_map_close(captured[key].numpy(), expected[key], key)


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    """An H x W x 3 uint8 array as JPEG bytes (quality 92), as a camera or browser sends them."""
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    """scikit-image's photo of Chelsea the cat, as a JPEG upload."""
    from skimage import data as skdata
    return jpeg_bytes(skdata.chelsea())
