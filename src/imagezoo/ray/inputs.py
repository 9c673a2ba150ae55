"""The inputs of a run: local files, folders and list files, and URIs Ray reads."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.images import is_url
from ..data.sources import LIST_EXTENSIONS, Sources, expand_sources, image_extensions

from .common import ROWS_PER_BLOCK, _URI

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- the inputs


def is_remote_uri(text: str) -> bool:
    """A URI for Ray's readers (``s3://``, ``gs://``, ``file://``, ...; not http(s))."""
    return bool(_URI.match(text)) and not is_url(text)


@dataclass
class Inputs:
    """What the driver found: local paths and http(s) URLs (read by the decode tasks), the
    remote URIs Ray's reader lists and reads, and the files of the folders left out."""

    local: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.local or self.remote)


def split_inputs(arguments, all_files: bool = False) -> Inputs:
    """Files, folders, list files and URLs as every command takes them, plus remote URIs
    (named directly or as lines of a list file) for Ray's reader. A path named twice is
    processed once: results are keyed by path."""
    inputs = Inputs()
    for argument in [arguments] if isinstance(arguments, (str, os.PathLike)) else arguments:
        text = str(argument)
        path = Path(text)
        if is_remote_uri(text):
            inputs.remote.append(text)
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file() and _lists_uris(path):
            for entry in _list_entries(path):
                (inputs.remote if is_remote_uri(entry) else inputs.local).append(entry)
        else:
            found: Sources = expand_sources([text], all_files)
            inputs.local.extend(found)
            inputs.skipped.extend(found.skipped)
    inputs.local = list(dict.fromkeys(inputs.local))
    inputs.remote = list(dict.fromkeys(inputs.remote))
    return inputs


def _lists_uris(list_file: Path) -> bool:
    return any(is_remote_uri(entry) for entry in _list_entries(list_file))


def _list_entries(list_file: Path) -> list[str]:
    """A list file's entries with ``read_list_file``'s rules, remote URIs kept as they are."""
    from ..data.sources import read_list_file
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return read_list_file(list_file)  # raises the usual error
    entries = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_remote_uri(entry) or is_url(entry) or Path(entry).is_absolute():
            entries.append(entry)
        else:
            entries.append(str(list_file.parent / entry))
    return entries


def _input_dataset(ray, inputs: Inputs, done: set[str], all_files: bool,
                   extra: dict[str, dict] | None = None):
    """One dataset of ``path`` rows (local) and ``path, bytes`` rows (remote), without the
    inputs in ``done``; ``extra`` adds columns per local path (``target`` for evaluate)."""
    parts = []
    local = [path for path in inputs.local if path not in done]
    if local:
        rows = [{"path": path, **(extra[path] if extra else {})} for path in local]
        parts.append(ray.data.from_items(
            rows, override_num_blocks=max(1, math.ceil(len(rows) / ROWS_PER_BLOCK))))
    files = [uri for uri in inputs.remote if Path(uri).suffix.lower() in image_extensions()]
    folders = [uri for uri in inputs.remote if uri not in files]
    extensions = sorted({e.lstrip(".") for e in image_extensions()}
                        | {e.lstrip(".").upper() for e in image_extensions()})
    for uris, filtered in ((files, False), (folders, not all_files)):
        for scheme in sorted({uri.split("://", 1)[0] for uri in uris}):
            chosen = [uri for uri in uris if uri.split("://", 1)[0] == scheme]
            read = ray.data.read_binary_files(chosen, include_paths=True,
                                              file_extensions=extensions if filtered else None)
            parts.append(read.map_batches(_named_by_uri, batch_format="numpy",
                                          fn_kwargs={"scheme": scheme, "done": done}))
    if not parts:
        return None
    dataset = parts[0]
    return dataset.union(*parts[1:]) if len(parts) > 1 else dataset


def _named_by_uri(batch: dict, scheme: str, done: set[str]) -> dict:
    """Ray's reader names a file by its path without the scheme; the rows keep the URI."""
    paths = [f"{scheme}://{path}" for path in batch["path"]]
    keep = np.array([path not in done for path in paths], dtype=bool)
    return {"path": np.array(paths, dtype=object)[keep], "bytes": batch["bytes"][keep]}
