"""The cache folder: list it, bound it, clear it (``imagezoo cache``), without PyTorch.

The cache holds two kinds of entries (``cache_entries``):

* ``weights``: the downloaded weight files at the top level (``resnet50-0676ba61.pth``) and the
  folders unpacked from archives beside them. They may be impossible to fetch again offline, so
  only an explicit ``clear_cache(what="weights" | "all")`` removes them, never ``evict``.
* ``engine``: under ``engines/``, each ``<model digest>/<machine digest>`` folder with everything
  in it (ONNX, int8 ONNX, OpenVINO blobs, TorchScript, ``layers-*``, JSON records), and any
  shallower folder that holds files itself (``engines/sources``). They can always be rebuilt, so
  ``evict`` drops the least recently used ones when they pass a cap.

Names starting with a dot are skipped: downloads in progress (``.NAME.XXXX.part``), archives
being unpacked, and this module's own trash. Symbolic links are never followed, counted or
removed: a link is something a user put there on purpose (weights kept on another disk), and
following one could delete files outside the cache.

Only the standard library is imported here, so ``imagezoo cache`` starts without PyTorch.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ImagezooError
from .weights.store import CACHE_ENV, resolve_cache_dir  # noqa: F401 (one rule for the folder)

MAX_ENV = "IMAGEZOO_CACHE_MAX"
DEFAULT_MAX_BYTES = 2 << 30   # engines only: a few models' engines for each of a few machines
STAMP = ".last-used"
_TRASH = ".trash-"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class CacheEntry:
    kind: str           # "engine" or "weights"
    path: Path
    size: int           # bytes of the files in it (links not followed)
    last_used: float    # seconds since the epoch
    model: str | None = None   # what model an engine is for, when a record there says so


def parse_size(text: str, source: str = "size") -> int:
    """Bytes in ``text``: plain bytes, or a number with K, M, G or T (optionally followed by B
    or iB). Units are powers of 1024 whatever the spelling, so that ``1G`` is what the listing
    shows as ``1.0 GiB``. ``source`` names where the text came from, for the error message."""
    match = _SIZE.fullmatch(str(text))
    if match is None:
        raise ImagezooError(f"{source} {text!r} is not a size: give bytes, or a number with K, M, "
                            f"G or T (e.g. 500M, 2G, 1.5GB)")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def max_bytes_setting() -> int:
    """The engines' cap: ``$IMAGEZOO_CACHE_MAX`` if set, else ``DEFAULT_MAX_BYTES``. Read at each
    call, not at import, so a bad value is reported where it is used instead of breaking import."""
    text = os.environ.get(MAX_ENV, "").strip()
    return parse_size(text, MAX_ENV) if text else DEFAULT_MAX_BYTES


def format_size(size: int) -> str:
    """Bytes in the units ``parse_size`` reads (powers of 1024)."""
    if size < 1024:
        return f"{size} B"
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if size >= 1024 ** power or power == 1:
            return f"{size / 1024 ** power:.1f} {unit}"


def touch_entry(path: str | os.PathLike) -> None:
    """Mark an entry as used now: ``<folder>/.last-used`` for an engine folder, the access time
    for a weight file. Best effort: a read-only or concurrently cleared cache must not stop a
    run that only wanted to record that it used the entry."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            (path / STAMP).touch()
        elif path.is_file() and not path.is_symlink():
            os.utime(path, (time.time(), path.stat().st_mtime))
    except OSError:
        pass


def cache_entries(cache_dir: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Every engine entry, then every weights entry, each sorted by path."""
    root = resolve_cache_dir(cache_dir)
    found = [("engine", folder) for folder in _engine_folders(root / "engines", 0)]
    found += [("weights", child) for child in _children(root) if child.name != "engines"]
    entries = []
    for kind, path in found:
        try:
            entries.append(_entry(kind, path))
        except FileNotFoundError:   # removed by another process meanwhile
            pass
    return sorted(entries, key=lambda entry: (entry.kind != "engine", str(entry.path)))


def cache_size(cache_dir: str | os.PathLike | None = None) -> int:
    return sum(entry.size for entry in cache_entries(cache_dir))


def clear_cache(cache_dir: str | os.PathLike | None = None,
                what: str = "engines") -> tuple[int, int]:
    """Remove the engines, the weights or all entries; returns (entries removed, bytes freed)."""
    kinds = {"engines": {"engine"}, "weights": {"weights"}, "all": {"engine", "weights"}}
    if what not in kinds:
        raise ImagezooError(f"clear what? {what!r}: choose engines, weights or all")
    root = resolve_cache_dir(cache_dir)
    removed = [entry for entry in cache_entries(root)
               if entry.kind in kinds[what] and _remove(entry.path, root)]
    _sweep(root)
    return len(removed), sum(entry.size for entry in removed)


def evict(max_bytes: int | None = None, cache_dir: str | os.PathLike | None = None,
          keep: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Remove the least recently used engine entries until the engines take at most
    ``max_bytes`` (default ``max_bytes_setting()``). Weights are never evicted, nor the entry
    ``keep`` (the one in use now) or an entry holding it. Returns the entries removed."""
    limit = max_bytes_setting() if max_bytes is None else max_bytes
    root = resolve_cache_dir(cache_dir)
    engines = sorted((entry for entry in cache_entries(root) if entry.kind == "engine"),
                     key=lambda entry: entry.last_used)
    total = sum(entry.size for entry in engines)
    kept = os.path.realpath(keep) if keep is not None else None
    removed = []
    for entry in engines:
        if total <= limit:
            break
        held = os.path.realpath(entry.path)
        if kept is not None and (kept == held or kept.startswith(held + os.sep)):
            continue
        if _remove(entry.path, root):
            removed.append(entry)
            total -= entry.size
    _sweep(root)
    return removed


def format_entries(entries: list[CacheEntry], cache_dir: str | os.PathLike | None = None) -> str:
    """The table ``imagezoo cache`` prints: where the cache is, one line per entry, the totals."""
    root = resolve_cache_dir(cache_dir)
    rows = [("kind", "size", "last used", "model", "path")]
    for entry in entries:
        when = datetime.datetime.fromtimestamp(entry.last_used).isoformat(" ", "minutes")
        try:
            shown = entry.path.relative_to(root)
        except ValueError:
            shown = entry.path
        rows.append((entry.kind, format_size(entry.size), when, entry.model or "-", str(shown)))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [f"cache folder: {root}"]
    lines += ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[4]])
              for row in rows]
    engines = sum(entry.size for entry in entries if entry.kind == "engine")
    weights = sum(entry.size for entry in entries if entry.kind == "weights")
    lines.append(f"total {format_size(engines + weights)} in {len(entries)} entries "
                 f"(engines {format_size(engines)}, weights {format_size(weights)})")
    return "\n".join(lines)


def _children(folder: Path) -> list[Path]:
    """What ``folder`` holds, less hidden names and symbolic links; nothing if it is missing."""
    try:
        with os.scandir(folder) as scan:
            return [Path(item.path) for item in scan
                    if not item.name.startswith(".") and not item.is_symlink()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _engine_folders(folder: Path, depth: int):
    """Entry folders under ``engines/``: the ``<model>/<machine>`` level, or a shallower folder
    that holds files itself (``engines/sources/<digest>.json``). An ``engines`` that is a link
    leads out of the cache: not followed (the cache folder itself may be one)."""
    if depth == 0 and folder.is_symlink():
        return
    children = _children(folder)
    if depth == 2 or (depth == 1 and any(child.is_file() for child in children)):
        yield folder
        return
    for child in children:
        if child.is_dir():
            yield from _engine_folders(child, depth + 1)


def _entry(kind: str, path: Path) -> CacheEntry:
    """Size and last use from ``lstat`` of every file below ``path``; links are skipped. A
    weight file's access time counts as a use; an engine's ``.last-used`` stamp is one of its
    files, so the newest modification time covers it."""
    info = path.lstat()
    if stat.S_ISREG(info.st_mode):
        return CacheEntry(kind, path, info.st_size, max(info.st_mtime, info.st_atime))
    size, last = 0, 0.0   # not the folder's own time: adding a file changes it
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                item = os.lstat(os.path.join(folder, name))
            except OSError:   # removed while we looked
                continue
            if stat.S_ISREG(item.st_mode):
                size += item.st_size
                last = max(last, item.st_mtime)
    model = _model_of(path) if kind == "engine" else None
    return CacheEntry(kind, path, size, last or info.st_mtime, model)


def _model_of(folder: Path) -> str | None:
    """The model an engine folder is for, from ``source.json`` or ``card.json`` in it, or
    ``engines/sources/<model digest>.json``; ``None`` when nothing there says."""
    records = [folder / "source.json", folder / "card.json",
               folder.parent.parent / "sources" / f"{folder.parent.name}.json"]
    for record in records:
        try:
            data = json.loads(record.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        name = data.get("model") or data.get("name")
        if isinstance(name, str) and name:
            source = data.get("weights") or data.get("source")
            return f"{name} ({Path(str(source)).name})" if source else name
    return None


def _remove(path: Path, root: Path) -> bool:
    """Remove one entry; False when it is gone already or is not ours to remove. A folder is
    renamed into a fresh trash folder in the cache first (atomic: a concurrent reader sees the
    whole folder or nothing), then deleted; ``rmtree`` unlinks links inside, never their targets."""
    try:
        info = path.lstat()
        parent, base = os.path.realpath(path.parent), os.path.realpath(root)
        inside = parent == base or parent.startswith(base + os.sep)
        if stat.S_ISLNK(info.st_mode) or not inside:
            return False
        if not stat.S_ISDIR(info.st_mode):
            path.unlink()   # unlinking is atomic already
            return True
        trash = Path(tempfile.mkdtemp(prefix=_TRASH, dir=root))
        try:
            os.rename(path, trash / "entry")
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return True
    except FileNotFoundError:   # another process removed it first
        return False
    except OSError as error:
        raise ImagezooError(f"cannot remove {path} from the cache: {error}") from None


def _sweep(root: Path) -> None:
    """Remove trash an interrupted removal left (a minute old: a newer one may be another
    process's, about to receive its entry) and the empty folders entries leave behind."""
    for child in root.glob(_TRASH + "*"):
        if not child.is_symlink() and child.is_dir() and time.time() - child.lstat().st_mtime > 60:
            shutil.rmtree(child, ignore_errors=True)
    for folder in [*_children(root / "engines"), root / "engines"]:
        try:
            folder.rmdir()   # fails, as meant, unless it is an empty folder
        except OSError:
            pass
