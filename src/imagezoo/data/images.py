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

Every failure (missing, unreadable, empty, truncated, corrupt, unsupported, too large; any
exception a decoder raises) is an ``ImageDecodeError`` whose message starts with the input's
name and says why in words; what the decoder says along the way (warnings, libtiff's lines)
is attached to the input (see ``decode_guard``).
"""
from __future__ import annotations

import io
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageDecodeError
from .decode_guard import (attributed_to_input, claimed_format, native_stderr_captured,
                           reason_for)

log = logging.getLogger(__name__)


def _register_optional_plugins() -> None:
    """HEIF/HEIC photos (iPhones' default) decode when ``pillow-heif`` is installed
    (``pip install imagezoo[heif]``); AVIF is built into Pillow's own wheels since 11.3."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


_register_optional_plugins()

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


def load_image(source: str | os.PathLike, draft_size: int | None = None,
               notes: list[str] | None = None) -> Image.Image:
    """Open a path or URL and return an 8-bit RGB image.

    ``draft_size``: when given and the file is a JPEG, let libjpeg decode at a reduced scale
    that still keeps the shorter side at least this large (much faster for big photos; the
    pixels differ slightly from a full decode, so exact predictions leave it off).
    ``notes``: receives what the decoder said about this input (warnings, library messages);
    without it they are logged with the input's name.
    """
    name = str(source)
    if is_url(name):
        return decode_bytes(read_url(name), name, draft_size, notes)
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
    return decode_bytes(data, name, draft_size, notes)


def decode_bytes(data: bytes, name: str, draft_size: int | None = None,
                 notes: list[str] | None = None,
                 check_size: Callable[[int, int, str], None] | None = None) -> Image.Image:
    """Decode an encoded image held in memory; ``name`` is used in error messages.

    The one guarded boundary around Pillow: any exception a decoder raises for this input
    becomes an ``ImageDecodeError`` naming the input and the reason in words (see
    ``decode_guard.reason_for``); what the decoder says on the way goes to ``notes``.
    ``check_size(width, height, name)`` runs on the header's size before any pixel is
    decoded, and refuses an image by raising ``ImageDecodeError`` (the server's limits)."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    image_format = None
    with attributed_to_input() as said:
        try:
            image = Image.open(io.BytesIO(data))
            image_format = image.format
            if check_size is not None:
                check_size(*image.size, name)
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            with native_stderr_captured(image_format) as native:
                try:
                    image.load()
                except Exception as error:  # noqa: BLE001 - every decoder failure is this input's
                    raise _Failed(error, native) from None
            said.extend(native)
            try:
                # In place: an upright image is not copied (a copy doubles the peak memory
                # of a big decode: 512 MB instead of 256 MB for 8000 x 8000 RGB).
                ImageOps.exif_transpose(image, in_place=True)
            except Exception as error:  # noqa: BLE001 - a malformed EXIF block must not lose the picture
                said.append(f"ignoring unreadable EXIF orientation ({error})")
            rgb = to_rgb(image)
        except ImageDecodeError:
            raise
        except _Failed as failed:
            raise ImageDecodeError(
                f"{name}: {reason_for(failed.error, image_format, failed.native)}") from None
        except Exception as error:  # noqa: BLE001 - MemoryError included: see the docstring
            image_format = image_format or claimed_format(data)
            raise ImageDecodeError(f"{name}: {reason_for(error, image_format)}") from None
        finally:
            _hand_over(said, name, notes)
    return rgb


class _Failed(Exception):
    """A load that failed, with the native lines printed while it ran."""

    def __init__(self, error: BaseException, native: list[str]):
        super().__init__(str(error))
        self.error, self.native = error, native


def _hand_over(said: list[str], name: str, notes: list[str] | None) -> None:
    unique = list(dict.fromkeys(said))
    if notes is not None:
        notes.extend(unique)
    else:
        for note in unique:
            log.warning("%s: %s", name, note)


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
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0,
                               neginf=0.0)
        # Float images are taken to be 0..1 when they fit there, else 0..255.
        factor = 255.0 if pixels.size and pixels.max() <= 1.0 else 1.0
        scaled = np.clip(np.round(pixels * factor), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    return image.convert("RGB")
