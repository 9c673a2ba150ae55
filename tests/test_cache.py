"""The cache listing, eviction and clearing, on real files in a temporary cache folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagezoo import cache
from imagezoo.errors import ImagezooError

DAY = 86400
T0 = 1_700_000_000   # 2023-11-14, far enough in the past that "now" is always newer


def write(path: Path, size: int, when: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if when is not None:
        os.utime(path, (when, when))
    return path


def engine(root: Path, model: str, size: int, when: float, machine: str = "m" * 16) -> Path:
    """An engine folder as the engine code leaves it: files, a subfolder, a last-used stamp."""
    folder = root / "engines" / model / machine
    write(folder / "model.onnx", size - 100, when - DAY)
    write(folder / "openvino" / "blob.bin", 60, when - DAY)
    write(folder / "tuning.json", 40, when - DAY)
    write(folder / cache.STAMP, 0, when)
    return folder


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "cache"


def test_listing_sizes_are_the_bytes_written(root):
    a = engine(root, "a" * 24, 1000, T0)
    write(root / "resnet50-0676ba61.pth", 777, T0)
    write(root / "resnet_50" / "_conv1.w0", 300, T0)           # an unpacked Paddle archive
    write(root / ".resnet101-abc.pth.k2j3.part", 5000)         # a download in progress
    write(root / "engines" / "sources" / ("a" * 24 + ".json"), 0).write_text(
        json.dumps({"model": "resnet50", "weights": "https://x/resnet50-0676ba61.pth"}))
    entries = {str(entry.path.relative_to(root)): entry for entry in cache.cache_entries(root)}
    assert set(entries) == {f"engines/{'a' * 24}/{'m' * 16}", "engines/sources",
                            "resnet50-0676ba61.pth", "resnet_50"}
    assert entries[str(a.relative_to(root))].size == 1000
    assert entries[str(a.relative_to(root))].kind == "engine"
    assert entries[str(a.relative_to(root))].last_used == T0
    assert entries[str(a.relative_to(root))].model == "resnet50 (resnet50-0676ba61.pth)"
    assert entries["resnet50-0676ba61.pth"].size == 777
    assert entries["resnet50-0676ba61.pth"].kind == "weights"
    assert entries["resnet_50"].size == 300
    assert cache.cache_size(root) == 1000 + 777 + 300 + entries["engines/sources"].size

    table = cache.format_entries(cache.cache_entries(root), root)
    assert table.splitlines()[0] == f"cache folder: {root}"
    assert "resnet50 (resnet50-0676ba61.pth)" in table and "1000 B" in table
    assert "2023-11-14" in table and table.splitlines()[-1].startswith("total 2.")


def test_empty_or_missing_cache(root):
    assert cache.cache_entries(root) == []
    assert cache.clear_cache(root, "all") == (0, 0)
    assert cache.evict(0, root) == []
    assert "total 0 B in 0 entries" in cache.format_entries([], root)


def test_cache_folder_follows_the_store(monkeypatch, tmp_path):
    from imagezoo.weights.store import resolve_cache_dir
    for value in (None, str(tmp_path / "env")):
        if value is None:
            monkeypatch.delenv("IMAGEZOO_CACHE", raising=False)
        else:
            monkeypatch.setenv("IMAGEZOO_CACHE", value)
        assert cache.resolve_cache_dir() == resolve_cache_dir()
        assert cache.resolve_cache_dir(tmp_path) == resolve_cache_dir(tmp_path)


def test_touch_entry_makes_it_the_newest(root):
    old = engine(root, "a" * 24, 500, T0)
    engine(root, "b" * 24, 500, T0 + DAY)
    cache.touch_entry(old)
    newest = max(cache.cache_entries(root), key=lambda entry: entry.last_used)
    assert newest.path == old
    cache.touch_entry(root / "engines" / "gone")   # a cleared entry: no error


def test_evict_least_recently_used_first_and_stops_at_the_cap(root):
    # Made newest first, so that the folders' own times would give the opposite order.
    newest = engine(root, "c" * 24, 1000, T0 + 2 * DAY)
    middle = engine(root, "b" * 24, 1000, T0 + DAY)
    oldest = engine(root, "a" * 24, 1000, T0)
    weights = write(root / "resnet50-0676ba61.pth", 10_000, T0 - 9 * DAY)
    removed = cache.evict(2000, root)
    assert [entry.path for entry in removed] == [oldest]
    assert not oldest.exists() and not oldest.parent.exists()   # no empty model folder left
    assert middle.exists() and newest.exists() and weights.exists()
    assert cache.evict(2000, root) == []                          # already under the cap


def test_evict_never_removes_keep_or_weights(root):
    kept = engine(root, "a" * 24, 1000, T0)
    other = engine(root, "b" * 24, 1000, T0 + DAY)
    weights = write(root / "resnet50-0676ba61.pth", 10_000, T0 - 9 * DAY)
    removed = cache.evict(0, root, keep=kept / "layers-0123")   # a path inside the entry
    assert [entry.path for entry in removed] == [other]
    assert kept.exists() and weights.exists()


def test_evict_default_cap_from_the_environment(root, monkeypatch):
    engine(root, "a" * 24, 3000, T0)
    engine(root, "b" * 24, 3000, T0 + DAY)
    monkeypatch.setenv("IMAGEZOO_CACHE_MAX", "4K")
    assert len(cache.evict(cache_dir=root)) == 1
    monkeypatch.delenv("IMAGEZOO_CACHE_MAX")
    assert cache.max_bytes_setting() == cache.DEFAULT_MAX_BYTES == 2 << 30


@pytest.mark.parametrize("what, left", [("engines", {"resnet50-0676ba61.pth"}),
                                        ("weights", {"engines"}), ("all", set())])
def test_clear_each_kind(root, what, left):
    engine(root, "a" * 24, 1000, T0)
    engine(root, "b" * 24, 2000, T0)
    write(root / "resnet50-0676ba61.pth", 777)
    count, freed = cache.clear_cache(root, what)
    expected = {"engines": (2, 3000), "weights": (1, 777), "all": (3, 3777)}[what]
    assert (count, freed) == expected
    assert {path.name for path in root.iterdir()} == left   # no trash left behind


def test_clear_refuses_an_unknown_kind(root):
    with pytest.raises(ImagezooError, match="engines, weights or all"):
        cache.clear_cache(root, "everything")


def test_leftover_trash_is_swept(root):
    write(root / ".trash-abc" / "entry" / "model.onnx", 10, T0)
    os.utime(root / ".trash-abc", (T0, T0))
    cache.clear_cache(root)
    assert not (root / ".trash-abc").exists()


def test_symlinks_are_never_followed(root, tmp_path):
    outside = tmp_path / "outside"
    precious = write(outside / "precious.pth", 123)
    write(outside / "folder" / "keep.bin", 45)
    folder = engine(root, "a" * 24, 1000, T0)
    (folder / "link-to-file").symlink_to(precious)
    (folder / "link-to-folder").symlink_to(outside / "folder")
    (root / "engines" / ("b" * 24)).symlink_to(outside)          # an entry that is a link
    (root / "linked.pth").symlink_to(precious)                   # weights kept elsewhere
    entries = cache.cache_entries(root)
    assert [entry.path for entry in entries] == [folder]         # links are not entries
    assert entries[0].size == 1000                               # nor counted in one
    assert cache.clear_cache(root, "all") == (1, 1000)
    assert precious.read_bytes() == b"x" * 123
    assert (outside / "folder" / "keep.bin").read_bytes() == b"x" * 45
    assert (root / "linked.pth").is_symlink() and (root / "engines" / ("b" * 24)).is_symlink()


def test_a_cache_folder_behind_a_link_is_used(tmp_path):
    real = tmp_path / "real"
    engine(real, "a" * 24, 1000, T0)
    write(real / "resnet50-0676ba61.pth", 777)
    (tmp_path / "link").symlink_to(real)
    assert len(cache.cache_entries(tmp_path / "link")) == 2
    assert cache.clear_cache(tmp_path / "link", "all") == (2, 1777)
    assert list(real.iterdir()) == []


def test_an_engines_folder_that_is_a_link_is_not_followed(root, tmp_path):
    elsewhere = engine(tmp_path / "elsewhere", "a" * 24, 1000, T0).parent.parent
    root.mkdir()
    (root / "engines").symlink_to(elsewhere)
    assert cache.cache_entries(root) == []
    assert cache.clear_cache(root, "all") == (0, 0)
    assert (elsewhere / ("a" * 24) / ("m" * 16) / "model.onnx").exists()


@pytest.mark.parametrize("text, size", [
    ("123", 123), ("0", 0), ("500M", 500 << 20), ("2G", 2 << 30), ("1.5GB", 3 << 29),
    ("2GiB", 2 << 30), ("64k", 64 << 10), (" 10 MB ", 10 << 20), ("1T", 1 << 40), ("7B", 7)])
def test_parse_size(text, size):
    assert cache.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "-1G", "2X", "1.2.3M", "G"])
def test_parse_size_refuses(text):
    with pytest.raises(ImagezooError) as caught:
        cache.parse_size(text, "--max-size")
    message = str(caught.value)
    assert message.startswith(f"--max-size {text!r} is not a size") and "\n" not in message


def test_bad_environment_cap_names_the_variable(monkeypatch):
    monkeypatch.setenv("IMAGEZOO_CACHE_MAX", "lots")
    with pytest.raises(ImagezooError, match="^IMAGEZOO_CACHE_MAX 'lots' is not a size"):
        cache.max_bytes_setting()


def test_import_does_not_import_torch():
    code = "import imagezoo.cache, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
