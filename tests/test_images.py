"""Decoding every kind of image a user has into 8-bit RGB, and failing clearly on the rest."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imagezoo.data.images import load_image
from imagezoo.errors import ImageDecodeError


def save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def test_exif_orientation_is_applied(tmp_path):
    # A landscape picture with a red left half, stored with "rotate 90 clockwise to view".
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(pixels), tmp_path / "phone.jpg", exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)  # portrait once rotated
    top, bottom = np.asarray(image)[2, 10], np.asarray(image)[37, 10]
    assert top[0] > 200 and top[1] < 60   # the red half is now on top
    assert bottom[0] < 60


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "RGB"])
def test_modes_become_rgb(tmp_path, mode):
    source = Image.new("RGB", (8, 6), (10, 200, 30)).convert(mode)
    suffix = ".jpg" if mode in ("CMYK", "YCbCr") else ".png"
    if mode == "YCbCr":
        source = source.convert("RGB")
    image = load_image(save(source, tmp_path / f"img{suffix}"))
    assert image.mode == "RGB" and image.size == (8, 6)
    expected = np.asarray(source.convert("RGB"))
    assert np.abs(np.asarray(image).astype(int) - expected).max() <= 3


def test_rgba_is_composited_on_white(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 255          # red
    pixels[:, :2, 3] = 255        # left half opaque
    pixels[:, 2:, 3] = 0          # right half fully transparent
    pixels[0, 0, 3] = 128         # one half-transparent pixel
    image = np.asarray(load_image(save(Image.fromarray(pixels, "RGBA"), tmp_path / "a.png")))
    assert tuple(image[1, 0]) == (255, 0, 0)
    assert tuple(image[1, 3]) == (255, 255, 255)
    assert tuple(image[0, 0]) == (255, 127, 127)


def test_grayscale_alpha_and_transparent_palette_on_white(tmp_path):
    la = Image.new("LA", (3, 3), (0, 0))
    assert np.asarray(load_image(save(la, tmp_path / "la.png"))).min() == 255
    palette = Image.new("P", (3, 3), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(save(palette, tmp_path / "p.png", transparency=0))).min() == 255


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = load_image(save(Image.fromarray(values), tmp_path / "g16.png"))
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(image)[0, :, 0], [0, 100, 255])


def write_png_rgb16(path, pixels: np.ndarray):
    """A minimal 16-bit RGB PNG (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_sixteen_bit_rgb(tmp_path):
    pixels = np.zeros((2, 3, 3), dtype=np.uint16)
    pixels[0, 0] = (65535, 0, 257 * 50)
    image = load_image(write_png_rgb16(tmp_path / "rgb16.png", pixels))
    assert image.mode == "RGB" and image.size == (3, 2)
    assert tuple(np.asarray(image)[0, 0]) == (255, 0, 50)


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg: empty file"):
        load_image(tmp_path / "empty.jpg")


def test_truncated_jpeg(tmp_path, rng):
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = (save(noise, tmp_path / "full.jpg")).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg: truncated JPEG image"):
        load_image(tmp_path / "cut.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("this is text")
    with pytest.raises(ImageDecodeError, match=r"notes\.png: not an image"):
        load_image(tmp_path / "notes.png")


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nothing\.jpg: no such file"):
        load_image(tmp_path / "nothing.jpg")
    with pytest.raises(ImageDecodeError, match="is a folder"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 px is over twice the limit
    with pytest.raises(ImageDecodeError, match=r"big\.png: too large: refused as a possible decompression bomb"):
        load_image(path)


def test_draft_mode_decodes_big_jpegs_smaller(tmp_path):
    path = save(Image.new("RGB", (1600, 1200), (90, 120, 150)), tmp_path / "big.jpg")
    assert load_image(path).size == (1600, 1200)
    small = load_image(path, draft_size=256)
    assert small.size == (400, 300)  # libjpeg's 1/4 scale keeps the shorter side >= 256
