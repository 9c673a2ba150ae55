"""What a user names on the command line -> the ordered list of images to process.

* an http(s) URL is one image;
* a folder is every image file below it (recursive, sorted by path). Which files are images
  is decided by their extension, from what the installed Pillow can decode
  (``PIL.Image.registered_extensions()`` minus the formats Pillow only writes or only
  identifies, plus HEIF when ``pillow-heif`` is installed); with ``all_files=True`` every
  file's content is sniffed instead (its header, as ``Image.open`` reads it), so images with
  odd or missing extensions are found too. Everything else below the folder is *skipped*,
  and the skipped files are kept with the reason, so a run can say what it left out;
* a list file (``.txt``, ``.list``, ``.lst``) is one path or URL per line; blank lines and lines
  starting with ``#`` are skipped; relative paths are taken relative to the list file's folder,
  so a list travels with its images;
* anything else is one image path. A path that does not exist stays in the list, so that it is
  reported as a failed input in its place rather than silently dropped.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable

from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import ImagezooError
from .images import is_url

LIST_EXTENSIONS = frozenset({".txt", ".list", ".lst"})
# Formats Pillow opens by name but cannot decode without something it lacks here.
_NEVER_DECODED = frozenset({"MPEG"})  # identifies the stream, has no decoder


def image_extensions() -> frozenset[str]:
    """The file extensions (lower case, with the dot) of every format the installed Pillow,
    with its optional plugins (and any registered since), can decode here."""
    Image.init()
    registered = frozenset(Image.registered_extensions().items())
    return _decodable_extensions(registered, frozenset(Image.OPEN))


@functools.lru_cache(maxsize=8)
def _decodable_extensions(registered: frozenset, openers: frozenset) -> frozenset[str]:
    openable = set(openers) | {"MPO"}  # MPO files are opened by the JPEG plugin
    return frozenset(ext for ext, image_format in registered
                     if image_format in openable and _decodable(image_format))


def _decodable(image_format: str) -> bool:
    if image_format in _NEVER_DECODED:
        return False
    opener = Image.OPEN.get(image_format, (None,))[0]
    if isinstance(opener, type) and issubclass(opener, ImageFile.StubImageFile):
        # BUFR, GRIB, HDF5, WMF: decoded only by a handler the application registers.
        return getattr(opener, "_handler", None) is not None
    if image_format == "EPS":
        from PIL import EpsImagePlugin
        return bool(EpsImagePlugin.has_ghostscript())
    return True


class Sources(list):
    """The images to process, in order (a ``list`` of str), and the files left out of the
    folders walked: ``skipped`` holds ``(path, reason)`` pairs."""

    def __init__(self, images: Iterable[str] = (), skipped: Iterable[tuple[str, str]] = ()):
        super().__init__(images)
        self.skipped: list[tuple[str, str]] = list(skipped)


def expand_sources(arguments: Iterable[str | os.PathLike], all_files: bool = False) -> Sources:
    """Expand files, folders, list files and URLs into one ordered list of image sources."""
    sources = Sources()
    for argument in arguments:
        text = str(argument)
        path = Path(text)
        if is_url(text):
            sources.append(text)
        elif path.is_dir():
            found, skipped = walk_folder(path, all_files)
            sources.extend(found)
            sources.skipped.extend(skipped)
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            sources.extend(read_list_file(path))
        else:
            sources.append(text)
    return sources


def images_in_folder(folder: Path, all_files: bool = False) -> list[str]:
    """Image files anywhere below ``folder``, sorted by their path."""
    return walk_folder(folder, all_files)[0]


def walk_folder(folder: Path, all_files: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """(images, skipped files with the reason) anywhere below ``folder``, sorted by path."""
    extensions = image_extensions()
    images, skipped = [], []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if all_files:
            reason = _sniff(path)
        elif path.suffix.lower() in extensions:
            reason = None
        else:
            reason = (f"the extension {path.suffix or '(none)'} is not an image format Pillow "
                      f"decodes here (--all-files looks inside every file)")
        if reason is None:
            images.append(str(path))
        else:
            skipped.append((str(path), reason))
    return images, skipped


def _sniff(path: Path) -> str | None:
    """None if Pillow recognises the file's content as an image it can decode, else why not.
    Only the header is read; a broken image found this way fails later, with its reason."""
    try:
        with Image.open(path) as image:
            image_format = image.format
    except UnidentifiedImageError:
        return "not an image (Pillow does not recognise its content)"
    except Exception:  # noqa: BLE001 - a header that breaks the opener is still an image to report
        return None
    if image_format is not None and not _decodable(image_format):
        return f"a {image_format} file, which Pillow cannot decode here"
    return None


def read_list_file(list_file: Path) -> list[str]:
    """Paths or URLs listed one per line; relative paths resolved against the list's folder."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ImagezooError(f"{list_file}: cannot read list file ({error})") from None
    sources = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_url(entry) or Path(entry).is_absolute():
            sources.append(entry)
        else:
            sources.append(str(list_file.parent / entry))
    return sources
