"""What the engine cache remembers, readable without PyTorch.

Three kinds of record, all small JSON files under ``<cache>/engines/``:

* ``<model digest>/<machine>/checked.json``: which engines of one model passed their check
  here, with the size and modification time of the files they were built from;
* ``tuning/<architecture digest>/<machine>/tuning.json``: the timing table of every backend,
  per precision and measured batch size. Keyed by the *architecture* (not the weights): speed
  does not depend on the values of the weights, so a model fine-tuned from a tuned base, the
  same network with other weights, or a new random seed inherit the table. One measured batch
  size serves the others: a run at batch ``b`` reads the table measured at the size nearest
  ``b`` (on a log scale);
* ``sources/<source key digest>.json``: where the engines of a model *named the way a user
  names it* (a registry name with its bundled or seeded weights, a weight file, a model folder)
  live, with its card, so that a command can find a cached ONNX Runtime engine before it
  loads the model, and run without importing PyTorch at all (see ``light.py``).

The machine part of every key (CPU, cores, thread setting, library versions, imagezoo's
version and the engine format) is computed without importing PyTorch, so both paths agree.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..fileio import atomic_write_text
from ..weights.store import resolve_cache_dir

# Bumped whenever the way engines are built, checked or keyed changes, so that caches made the
# old way are not reused.
ENGINE_FORMAT = 3
TUNING_FILE = "tuning.json"
CHECKED_FILE = "checked.json"


def machine_facts() -> dict:
    facts = {"cpu": cpu_model(), "cores": os.cpu_count(),
             "threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
             "engine_format": ENGINE_FORMAT, "imagezoo": __version__}
    for package in ("torch", "onnxruntime", "openvino"):
        try:  # the installed version, without paying for importing the package
            facts[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            facts[package] = None
    return facts


def machine_digest() -> str:
    return hashlib.sha256(json.dumps(machine_facts(), sort_keys=True).encode()).hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for cache keys and benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2))


# --- checks -------------------------------------------------------------------------------

def file_stamps(files: list[Path]) -> list:
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()]


def check_recorded(engine_dir: Path, key: str, files: list[Path], passed: bool = True) -> bool:
    """Whether ``checked.json`` says these very files passed (or missed) the check ``key``."""
    return read_json(engine_dir / CHECKED_FILE).get(key) == {"passed": passed,
                                                             "files": file_stamps(files)}


# --- tuning -------------------------------------------------------------------------------

def tuning_path(architecture: dict, input_side: int, cache_dir=None) -> Path:
    """Where the timing table of this architecture at this input size lives on this machine.
    The class count is left out: a new head does not change which backend is fastest."""
    shape = {key: value for key, value in architecture.items() if key != "num_classes"}
    shape["input_side"] = input_side
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:24]
    return resolve_cache_dir(cache_dir) / "engines" / "tuning" / digest / machine_digest() / TUNING_FILE


def table_key(precision: str, batch_size: int) -> str:
    return f"{precision}/batch{batch_size}"


def nearest_table(records: dict, precision: str, batch_size: int) -> tuple[int, list[dict]] | None:
    """The table measured at the batch size nearest ``batch_size`` (log scale), or None."""
    measured = []
    for key, table in records.items():
        kind, _, size = key.partition("/batch")
        if kind == precision and size.isdigit():
            measured.append((abs(math.log(int(size)) - math.log(batch_size)), int(size), table))
    if not measured:
        return None
    _, size, table = min(measured)
    return size, table


def fastest(table: list[dict]) -> dict | None:
    ranked = [row for row in table if row.get("images_per_second")]
    return max(ranked, key=lambda row: row["images_per_second"]) if ranked else None


# --- sources ------------------------------------------------------------------------------

def source_record_path(source_key: str, cache_dir=None) -> Path:
    digest = hashlib.sha256(source_key.encode()).hexdigest()[:24]
    return resolve_cache_dir(cache_dir) / "engines" / "sources" / machine_digest() / f"{digest}.json"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_key(name_or_path: str | None, weights: str | None = None) -> str | None:
    """How the user named the model, as a key that changes whenever the weights do, computed
    without PyTorch: a registry name with its bundled weights (their published SHA-256) or a
    seeded random draw; a weight file or model folder (the SHA-256 of its bytes). None for
    anything else (``--pretrained`` downloads, ONNX files)."""
    from ..choices import DEFAULT_MODEL
    name = name_or_path or DEFAULT_MODEL
    path = Path(str(name))
    try:
        if path.exists():
            if weights is not None:
                return None
            if path.is_dir():
                weights_file, card_file = path / "weights.safetensors", path / "card.json"
                if not (weights_file.is_file() and card_file.is_file()):
                    return None
                return f"folder:{file_digest(weights_file)}:{file_digest(card_file)}"
            return f"file:{file_digest(path)}"
        from ..models.registry import MODELS
        entry = MODELS.get(str(name))
        if entry is None:
            return None
        if weights is None:
            return f"{name}@{entry.default_weights_sha256}" if entry.default_weights_sha256 else None
        text = str(weights)
        if text == "random" or text.startswith("random:"):
            return f"{name}@{text if ':' in text else 'random:0'}"
        if Path(text).is_file():
            return f"{name}@file:{file_digest(Path(text))}"
    except OSError:
        return None
    return None
