"""What a user names on the command line -> the ordered list of images to process.

* an http(s) URL is one image;
* a folder is every image file below it (recursive, sorted by path, by extension);
* a list file (``.txt``, ``.list``, ``.lst``) is one path or URL per line; blank lines and lines
  starting with ``#`` are skipped; relative paths are taken relative to the list file's folder,
  so a list travels with its images;
* anything else is one image path. A path that does not exist stays in the list, so that it is
  reported as a failed input in its place rather than silently dropped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import ImagezooError
from .images import is_url

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
    ".pnm", ".jfif", ".jpe", ".ico", ".tga",
})
LIST_EXTENSIONS = frozenset({".txt", ".list", ".lst"})


def expand_sources(arguments: Iterable[str | os.PathLike]) -> list[str]:
    """Expand files, folders, list files and URLs into one ordered list of image sources."""
    sources: list[str] = []
    for argument in arguments:
        text = str(argument)
        path = Path(text)
        if is_url(text):
            sources.append(text)
        elif path.is_dir():
            sources.extend(images_in_folder(path))
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            sources.extend(read_list_file(path))
        else:
            sources.append(text)
    return sources


def images_in_folder(folder: Path) -> list[str]:
    """Image files anywhere below ``folder``, sorted by their path."""
    found = [path for path in folder.rglob("*")
             if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()]
    return [str(path) for path in sorted(found)]


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
