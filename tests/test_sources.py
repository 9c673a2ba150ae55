"""Expanding files, folders, list files and URLs; images fetched over http."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagezoo.data import images
from imagezoo.data.images import load_image
from imagezoo.data.sources import expand_sources
from imagezoo.errors import ImageDecodeError
from httpserver import StaticServer


def png_bytes(color=(1, 2, 3), size=(5, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_folders_are_recursive_sorted_and_filtered(tmp_path):
    for relative in ["b/2.jpg", "b/1.PNG", "a.jpeg", "c/d/e.webp", "notes.txt", "b/x.json"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    found = [p[len(str(tmp_path)) + 1:] for p in expand_sources([tmp_path])]
    assert found == ["a.jpeg", "b/1.PNG", "b/2.jpg", "c/d/e.webp"]


def test_list_file_comments_blanks_and_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    listing = tmp_path / "imgs" / "images.list"
    listing.write_text("# my photos\n\ncat.jpg\n  /abs/dog.jpg  \nhttps://example.org/x.png\n")
    assert expand_sources([listing, "other.png"]) == [
        str(tmp_path / "imgs" / "cat.jpg"), "/abs/dog.jpg", "https://example.org/x.png", "other.png"]


def test_missing_paths_stay_in_place():
    assert expand_sources(["gone.jpg", "https://h/x.jpg"]) == ["gone.jpg", "https://h/x.jpg"]


def test_url_image_is_downloaded_and_decoded():
    with StaticServer({"/cat.png": png_bytes((9, 8, 7))}) as server:
        image = load_image(f"{server.base_url}/cat.png")
    assert image.size == (5, 4) and tuple(np.asarray(image)[0, 0]) == (9, 8, 7)


def test_url_errors_name_the_url(monkeypatch):
    with StaticServer({"/page.html": b"<html>not an image</html>", "/big.png": png_bytes()}) as server:
        with pytest.raises(ImageDecodeError, match=r"/missing\.png: HTTP 404"):
            load_image(f"{server.base_url}/missing.png")
        with pytest.raises(ImageDecodeError, match=r"/page\.html: not an image"):
            load_image(f"{server.base_url}/page.html")
        monkeypatch.setattr(images, "URL_MAX_BYTES", 10)
        with pytest.raises(ImageDecodeError, match=r"big\.png: .*over the 10-byte limit"):
            load_image(f"{server.base_url}/big.png")
        url = server.base_url
    with pytest.raises(ImageDecodeError, match="cannot download"):
        load_image(f"{url}/page.html")  # server gone
