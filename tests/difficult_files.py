"""Files nobody on the project made by hand: every format and mode Pillow writes, their broken
copies, and the odd cases real folders hold. Each maker returns the path it wrote."""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, TiffImagePlugin

# (file name, mode, save options): what cameras, editors and converters write.
GOOD_VARIANTS = [
    ("rgb.png", "RGB", {}), ("rgba.png", "RGBA", {}), ("la.png", "LA", {}), ("l.png", "L", {}),
    ("bit.png", "1", {}), ("palette.gif", "P", {}), ("i16.png", "I;16", {}),
    ("rgb.jpg", "RGB", {"quality": 90}), ("cmyk.jpg", "CMYK", {}), ("gray.jpeg", "L", {}),
    ("progressive.jpg", "RGB", {"progressive": True}), ("rgb.bmp", "RGB", {}),
    ("rgb.tif", "RGB", {}), ("deflate.tif", "RGB", {"compression": "tiff_deflate"}),
    ("lzw.tiff", "RGBA", {"compression": "tiff_lzw"}), ("float.tif", "F", {}),
    ("rgb.webp", "RGB", {"quality": 80}), ("lossless.webp", "RGBA", {"lossless": True}),
    ("rgb.ppm", "RGB", {}), ("l.pgm", "L", {}), ("rgb.tga", "RGB", {}), ("rgb.ico", "RGB", {}),
    ("rgb.pcx", "RGB", {}), ("rgb.sgi", "RGB", {}), ("rgb.qoi", "RGB", {}),
    ("rgb.jp2", "RGB", {}), ("rgb.avif", "RGB", {}), ("rgba.dds", "RGBA", {}),
    ("rgb.icns", "RGB", {}), ("rgb.im", "RGB", {}), ("bit.xbm", "1", {}),
    ("rgb.blp", "P", {}), ("rgb.msp", "1", {})
]


def photo_pixels(seed: int, size: int = 48) -> np.ndarray:
    """A small picture with structure (gradients and a disc), not flat noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - rng.uniform(0.3, 0.7)) ** 2 + (y - rng.uniform(0.3, 0.7)) ** 2) < 0.08
    pixels = np.stack([x * 255, y * 255, disc * 255.0], axis=-1)
    pixels += rng.normal(0, 8, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_good(folder: Path, name: str, mode: str, options: dict, seed: int = 0) -> Path:
    image = Image.fromarray(photo_pixels(seed))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image.convert("L")).astype(np.uint16) * 257))
    elif mode == "F":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.float32) / 255.0)
    elif mode != "RGB":
        image = image.convert(mode)
    path = folder / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # IM: still read, deprecated to write
        image.save(path, **options)
    return path


def truncated_copy(source: Path, folder: Path, fraction: float = 0.6) -> Path:
    data = source.read_bytes()
    path = folder / f"truncated-{source.name}"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    return path


def scrambled_copy(source: Path, folder: Path, seed: int = 0) -> Path:
    """The header kept, the middle of the data overwritten with noise."""
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(seed)
    start = min(len(data) - 1, max(64, len(data) // 3))
    stop = min(len(data), start + max(16, len(data) // 3))
    data[start:stop] = rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    path = folder / f"scrambled-{source.name}"
    path.write_bytes(bytes(data))
    return path


def dds_unimplemented_format(path: Path, dxgi_format: int = 2) -> Path:
    """A DDS with a DX10 header naming a DXGI format Pillow does not implement
    (2 = R32G32B32A32_FLOAT): Pillow raises NotImplementedError while opening it."""
    header = b"DDS " + struct.pack("<7I", 124, 0x1007, 4, 4, 16, 0, 0) + bytes(44)
    pixel_format = struct.pack("<2I", 32, 0x4) + b"DX10" + bytes(20)
    caps = struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    dx10 = struct.pack("<5I", dxgi_format, 3, 0, 1, 0)
    path.write_bytes(header + pixel_format + caps + dx10 + bytes(256))
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bad_pixels(path: Path) -> Path:
    """A PNG whose header is fine (Pillow opens it) and whose IDAT is not zlib data (with a
    correct CRC, so only the decoder notices)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", b"not zlib at all" * 4)
                     + _png_chunk(b"IEND", b""))
    return path


def png_bomb(path: Path) -> Path:
    """A few hundred bytes that declare a 100000 x 100000 PNG: refused before any pixel."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(bytes(64)))
                     + _png_chunk(b"IEND", b""))
    return path


def tiff_with_tag_warning(path: Path) -> Path:
    """A good TIFF whose last tag (a private one) points past the end of the file: Pillow
    warns ("Truncated File Read") and still decodes the pixels."""
    private = TiffImagePlugin.ImageFileDirectory_v2()
    private[65000] = "d" * 40
    private.tagtype[65000] = 2  # ASCII
    Image.fromarray(photo_pixels(3)).save(path, tiffinfo=private)
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    for entry in range(count):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 65000:
            struct.pack_into("<I", data, at + 8, len(data) + 1000)
    path.write_bytes(bytes(data))
    return path


def tiff_corrupt_deflate(path: Path) -> Path:
    """A deflate TIFF with noise in its strip: libtiff prints its own error line."""
    noise = np.random.default_rng(4).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, compression="tiff_deflate")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes(200)
    path.write_bytes(bytes(data))
    return path


class _BoomImageFile(ImageFile.ImageFile):
    """A test-only format ("BOOM" + an exception name): opening works, loading raises that
    exception, standing for every unusual error a real plugin may raise."""

    format = "BOOM"
    format_description = "raises while decoding (tests only)"

    def _open(self) -> None:
        self._exception = self.fp.read(40)[4:].split(b"\0")[0].decode()
        self._mode, self._size = "RGB", (8, 8)
        self.tile = []

    def load(self):
        exceptions = {"MemoryError": MemoryError, "IndexError": IndexError,
                      "struct.error": struct.error, "KeyError": KeyError,
                      "ZeroDivisionError": ZeroDivisionError, "RuntimeError": RuntimeError}
        raise exceptions[self._exception]("raised by the BOOM test plugin")


def register_boom_plugin() -> None:
    Image.register_open("BOOM", _BoomImageFile, lambda prefix: prefix[:4] == b"BOOM")
    Image.register_extension("BOOM", ".boom")


def boom_file(path: Path, exception: str) -> Path:
    path.write_bytes(b"BOOM" + exception.encode() + b"\0" * 32)
    return path


def mixed_folder(folder: Path, copies: int = 4) -> Path:
    """Hundreds of files: every good variant ``copies`` times (different pictures), a
    truncated and a scrambled copy of each, the hard cases above, and files that are not
    images at all. Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(copies):
        sub = folder / f"set{copy}"
        sub.mkdir(exist_ok=True)
        for name, mode, options in GOOD_VARIANTS:
            good = write_good(sub, name, mode, options, seed=copy)
            truncated_copy(good, sub)
            scrambled_copy(good, sub, seed=copy)
    odd = folder / "odd"
    odd.mkdir(exist_ok=True)
    dds_unimplemented_format(odd / "really-a-dds.png")
    png_bad_pixels(odd / "bad-pixels.png")
    png_bomb(odd / "bomb.png")
    tiff_with_tag_warning(odd / "tag-warning.tif")
    tiff_corrupt_deflate(odd / "corrupt-deflate.tif")
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "text.jpg").write_text("this is not a picture\n")
    (odd / "notes.txt").write_text("a note left beside the photos\n")
    (odd / "features.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    (odd / "README").write_text("no extension at all\n")
    return folder


def pillow_decodes(path: Path) -> bool:
    """The independent reference: does plain Pillow decode the file to RGB without raising?"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(path) as image:
                image.load()
                image.convert("RGB") if image.mode not in ("I;16", "F", "I") else None
            return True
        except Exception:  # noqa: BLE001 - any failure means "Pillow cannot decode it"
            return False


__all__ = ["GOOD_VARIANTS", "TiffImagePlugin", "mixed_folder", "pillow_decodes"]
