"""Decoding: any file or URL a user points at -> an 8-bit RGB Pillow image, or a clear error.

What a camera or an editor writes varies a lot; all of it becomes the same RGB image here:

* EXIF orientation is applied (phones store portrait photos as rotated landscape pixels);
* palette, grayscale and 1-bit images are expanded to RGB;
* images with transparency (RGBA, LA, palette with a transparent colour) are composited on
  white, which is what a viewer shows and what a photo of the object would look like;
* CMYK is converted with Pillow's conversion;
* 16-bit and 32-bit integer images are scaled to 8 bits (Pillow's own conversion would clip);
* Pillow's decompression-bomb guard stays on: an image over twice ``Image.MAX_IMAGE_PIXELS``
  is refused with an ``ImageDecodeError``.

Every failure (missing, unreadable, empty, truncated, not an image) is an ``ImageDecodeError``
whose message starts with the input's name.
"""
from __future__ import annotations

import io
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

log = logging.getLogger(__name__)

URL_TIMEOUT_SECONDS = 20.0
URL_MAX_BYTES = 50 * 1024 * 1024


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def read_url(url: str, timeout: float | None = None, max_bytes: int | None = None) -> bytes:
    """Fetch an image's bytes over http(s), with a timeout and a size cap (module defaults)."""
    timeout = URL_TIMEOUT_SECONDS if timeout is None else timeout
    max_bytes = URL_MAX_BYTES if max_bytes is None else max_bytes
    request = urllib.request.Request(url, headers={"User-Agent": "imagezoo"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ImageDecodeError(f"{url}: {int(declared)} bytes is over the "
                                       f"{max_bytes}-byte limit for downloaded images")
            data = response.read(max_bytes + 1)
    except ImageDecodeError:
        raise
    except urllib.error.HTTPError as error:
        raise ImageDecodeError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ImageDecodeError(f"{url}: cannot download ({reason})") from None
    if len(data) > max_bytes:
        raise ImageDecodeError(f"{url}: over the {max_bytes}-byte limit for downloaded images")
    return data


def load_image(source: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open a path or URL and return an 8-bit RGB image.

    ``draft_size``: when given and the file is a JPEG, let libjpeg decode at a reduced scale
    that still keeps the shorter side at least this large (much faster for big photos; the
    pixels differ slightly from a full decode, so exact predictions leave it off).
    """
    name = str(source)
    if is_url(name):
        return decode_bytes(read_url(name), name, draft_size)
    path = Path(source)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{name}: is a folder, not an image") from None
    except PermissionError:
        raise ImageDecodeError(f"{name}: permission denied") from None
    except OSError as error:
        raise ImageDecodeError(f"{name}: cannot read ({error.strerror or error})") from None
    return decode_bytes(data, name, draft_size)


def decode_bytes(data: bytes, name: str, draft_size: int | None = None) -> Image.Image:
    """Decode an encoded image held in memory; ``name`` is used in error messages."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        image = Image.open(io.BytesIO(data))
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{name}: refused as a possible decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports truncated and corrupt data as OSError (and a few decoders as others).
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({error})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as error:  # a malformed EXIF block must not lose the picture
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", name, error)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        pixels = np.asarray(image)
        # 16-bit data scaled to 8 bits by the top byte's worth (x / 257 maps 65535 to 255).
        scaled = np.clip(np.round(pixels.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        # Float images are taken to be 0..1 when they fit there, else 0..255.
        factor = 255.0 if pixels.size and np.nanmax(pixels) <= 1.0 else 1.0
        scaled = np.clip(np.round(np.nan_to_num(pixels) * factor), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    return image.convert("RGB")
