"""Batch inference on Ray Data: classify, features and evaluate over one machine or many.

    from imagezoo.ray import ModelSpec, run_classify
    run = run_classify(["photos/", "s3://bucket/photos/"], "efficientnet_lite0",
                       "results.parquet", top=5)                  # starts a local Ray instance
    run = run_classify(..., address="auto")                         # joins a running cluster

The pipeline, in Ray Data's terms:

1. paths: local files, folders and list files are expanded on the driver as every imagezoo
   command expands them (``data.sources.expand_sources``) and become rows of a dataset; any
   other URI Ray reads (``s3://``, ``gs://``, ``abfs://``, ``file://``, ...) goes to
   ``ray.data.read_binary_files(..., include_paths=True)``, which lists and reads it;
2. decoding and preprocessing in CPU tasks (``map_batches`` with plain functions): imagezoo's
   own guarded decoder (``data.images.decode_bytes``, or ``load_image`` for a local path or an
   http(s) URL) and the card's preprocessing in NumPy (``data.transforms.preprocess_array``,
   bit for bit the PyTorch path's), so a broken file is an error row, never a failed job;
3. the model in an actor pool (``ActorPoolStrategy``): each actor loads the model once (from a
   ``ModelSpec``: a name or file plus weights, or a model folder; optionally through
   ``imagezoo.optimize`` at the run's batch size), takes a GPU when the cluster has them, and
   is restarted when it dies and its batches run again (Ray Data's actor defaults:
   ``max_restarts=-1``, ``max_task_retries=-1``);
4. rows back to the driver, written as they come to a journal beside the output and, at the
   end, to one Parquet or JSON Lines file (``tasks/row_files.py``): every input exactly once,
   keyed by ``path``, in the order they finished (``ordered=True``: in the input's order).

Rows: ``classify`` gives ``path, rank, index, label, probability, error`` (one row per rank,
or one row with the ``error``); ``features`` gives ``path, <one column per layer>, error``
(flat float32 vectors; the layers' shapes are in the schema's metadata); ``evaluate`` gives
``path, target, predicted, error`` (``predicted``: the top-k class indices, best first) and
computes from them the ``imagezoo.evaluate`` figures.

The results are the single-process commands': the same decoding and error messages, the same
preprocessing, the same softmax and top-k code (``tasks.classify``), the same feature hooks.
``ray`` is an optional extra; without it these functions raise one ``ImagezooError`` line.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .choices import DEFAULT_MODEL, INFERENCE_BATCH
from .data.images import is_url
from .data.sources import LIST_EXTENSIONS, Sources, expand_sources, image_extensions
from .errors import DatasetError, ImageDecodeError, ImagezooError

log = logging.getLogger(__name__)

RAY_MISSING = "ray is not installed: pip install 'imagezoo[ray]'"
# Ray's switch for multi-machine clusters ("0": a node on the loopback address only).
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# A remote URI for Ray's readers: scheme://..., other than http(s), which imagezoo fetches.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Rows (paths) per block of the local input: a decode task's share of work.
ROWS_PER_BLOCK = 32
# Memory each decode task reserves (a logical resource: a 50-megapixel photo decodes to
# 150 MB). That the decode tasks and the actors ask for different resources also keeps Ray
# Data from fusing the decoding into the model's actors, which would serialise it there.
DECODE_MEMORY = 256 * 1024 * 1024
# CPUs each decode task reserves: two per core keep the cores busy while a task waits for its
# bytes or for room in the object store (measured here: 1.0 left one of two cores idle).
DECODE_CPUS = 0.5
# PyTorch (and engine) threads per CPU an actor reserves: an actor waits for its input part of
# the time, and the decode tasks then have the cores.
THREADS_PER_ACTOR_CPU = 2


def _import_ray():
    """The ``ray`` package (with Ray Data), or the one line that says how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401 - pyarrow and pandas come with the 'data' extra
    except ImportError:
        raise ImagezooError(RAY_MISSING) from None
    return ray


# ---------------------------------------------------------------------------- the model


class _RunsOn:
    """What an actor runs the loaded model on (``backend``, ``precision`` fields)."""

    @property
    def eager(self) -> bool:
        """The model itself, as ``imagezoo.classify(model, ...)`` runs it."""
        return self.backend == "torch" and self.precision == "exact"


@dataclass(frozen=True)
class ModelSpec(_RunsOn):
    """How each actor loads the model: ``load_model``'s arguments (``model`` a registry name,
    a weight file or a model folder; on a cluster a path must be readable on every node),
    and the engine: ``backend`` ``torch`` with ``precision`` ``exact`` runs the model itself,
    as ``imagezoo.classify(model, ...)`` does; anything else goes through
    ``imagezoo.optimize(model, precision, backend, batch_size)`` (``features`` uses
    ``backend`` for its layer engine). ``ModelSpec(args.model, args.weights,
    args.pretrained, args.backend, args.precision)`` is what the command line loads."""

    model: str | None = None
    weights: str | None = None
    pretrained: str | None = None
    backend: str = "torch"
    precision: str = "exact"

    def load(self):
        from .loader import load_model, random_seed
        if self.model is None and self.weights is not None and self.pretrained is None:
            if random_seed(self.weights) is not None:
                raise ImagezooError("--weights random needs --model NAME")
            return load_model(self.weights)   # a weight file names its own architecture
        return load_model(self.model or DEFAULT_MODEL, weights=self.weights,
                          pretrained=self.pretrained)


@dataclass(frozen=True)
class _Factory(_RunsOn):
    """A model made by the caller's function (zero arguments, returns a module with a card)."""

    make: Callable[[], Any]
    backend: str = "torch"
    precision: str = "exact"

    def load(self):
        return self.make()


@dataclass(frozen=True)
class _Loaded(_RunsOn):
    """A model object the caller loaded: put in Ray's object store when the run starts."""

    module: Any
    backend: str = "torch"
    precision: str = "exact"

    def load(self):
        return self.module


@dataclass(frozen=True)
class _Shipped(_RunsOn):
    """A model object in Ray's object store, fetched by each actor."""

    ref: Any
    backend: str = "torch"
    precision: str = "exact"

    def load(self):
        import ray
        return ray.get(self.ref)


def model_source(model) -> ModelSpec | _Factory | _Loaded | _Shipped:
    """``ModelSpec``, a name or path, a loaded model (shipped through the object store) or a
    function that makes one -> what each actor loads."""
    if isinstance(model, (ModelSpec, _Factory, _Loaded, _Shipped)):
        return model
    if isinstance(model, (str, os.PathLike)):
        return ModelSpec(str(model))
    from torch import nn
    if isinstance(model, nn.Module):
        return _Loaded(model)
    if callable(model):
        return _Factory(model)
    raise ImagezooError(f"a model for Ray is a ModelSpec, a name or path, a model or a function "
                        f"that makes one, not {type(model).__name__}")


def _engine(source, model, batch_size: int, device: str, images: int | None = None):
    """The module that runs: the model itself, or its ``imagezoo.optimize`` engine (CPU only)."""
    if source.eager or device != "cpu":
        return model
    from .engine import optimize
    return optimize(model, precision=source.precision, backend=source.backend,
                    batch_size=batch_size, images=images)


# ---------------------------------------------------------------------------- Ray itself


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                object_store_memory: int | None = None) -> Iterator[Any]:
    """Ray, ready: the instance this process already joined; else the cluster at ``address``
    (or ``$RAY_ADDRESS``: ``auto``, ``HOST:6379``, ``ray://HOST:10001``); else a new local
    instance on this machine (``num_cpus``, ``object_store_memory`` in bytes; the dashboard
    off; on the loopback address when Ray was not imported before). What this started it
    shuts down at the end."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address and "ray" not in sys.modules:
        # A local instance serves this process alone: Ray then keeps it on the loopback
        # address instead of the machine's network address (read when Ray is imported).
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    ray = _import_ray()
    if address:
        check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address)
        else:
            # "local": a new instance, even when a cluster started here with `ray start` is
            # running (joining that takes --ray auto, or its address)
            ray.init(address="local", num_cpus=num_cpus,
                     object_store_memory=object_store_memory, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
        raise ImagezooError(f"cannot {where}: {str(error).strip().splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` address where nothing answers is one line now,
    not minutes of Ray retrying; ``auto`` and other forms are left to Ray."""
    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise ImagezooError(f"cannot join the Ray cluster at {address}: nothing answers there "
                            f"({error.strerror or error}); `ray start --head` prints the "
                            f"address to give") from None


def _cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def _pool(ray, actors: int | tuple[int, int] | None, cpus_per_actor: float, gpus: int):
    """The actor pool: ``actors`` fixed, ``(min, max)`` autoscaled, or by default one actor
    per GPU, else between one and a quarter of the cluster's CPUs."""
    if actors is None:
        if gpus:
            actors = gpus
        else:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            actors = (1, max(1, int(cpus / 4 / max(cpus_per_actor, 0.25))))
    if isinstance(actors, int):
        return ray.data.ActorPoolStrategy(size=actors)
    low, high = actors
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high)


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
    from .data.sources import read_list_file
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


# ---------------------------------------------------------------------------- decoding (CPU tasks)


def decode_batch(batch: dict, spec, ten_crop: bool = False, draft_size: int | None = None) -> dict:
    """``path`` (and ``bytes``) rows -> ``path, pixels, error`` rows, other columns kept.

    A CPU task of the pipeline: imagezoo's guarded decoding and the card's NumPy
    preprocessing; an input that fails keeps zeros as pixels and its error in words, exactly
    the message of the single-process commands."""
    from .data.items import prepare_item
    from .data.transforms import preprocess_array, preprocess_ten_crop_array
    transform = preprocess_ten_crop_array if ten_crop else preprocess_array
    paths = [str(path) for path in batch["path"]]
    data = batch.get("bytes")
    shape = ((10,) if ten_crop else ()) + (3, spec.crop, spec.crop)
    pixels = np.zeros((len(paths), *shape), dtype=np.float32)
    errors = []
    for row, path in enumerate(paths):
        if data is None:
            value, error, notes = prepare_item(path, transform, spec, draft_size)
        else:
            value, error, notes = _prepare_bytes(data[row], path, transform, spec, draft_size)
        for note in notes:
            log.warning("%s: note: %s", path, note)
        if error is None and value.shape != shape:
            error = f"{path}: preprocessed to {value.shape}, not the card's {shape}"
        if error is None:
            pixels[row] = value
        errors.append(error or "")
    out = {name: column for name, column in batch.items() if name not in ("path", "bytes")}
    out.update(path=np.array(paths, dtype=object), pixels=pixels,
               error=np.array(errors, dtype=object))
    return out


def _prepare_bytes(data, name: str, transform, spec, draft_size: int | None):
    """``data.items.prepare_item`` for bytes Ray has read: (array or None, error, notes)."""
    from .data.decode_guard import preprocess_reason
    from .data.images import decode_bytes
    notes: list[str] = []
    try:
        image = decode_bytes(bytes(data), name, draft_size, notes)
    except ImageDecodeError as error:
        return None, str(error), notes
    try:
        return transform(image, spec), None, notes
    except Exception as error:  # noqa: BLE001 - one input's problem, never the run's
        return None, f"{name}: {preprocess_reason(error)}", notes


# ---------------------------------------------------------------------------- the model (actors)


def classify_schema(settings: dict | None = None):
    import pyarrow as pa
    from .tasks.row_files import with_settings
    schema = pa.schema([("path", pa.string()), ("rank", pa.int64()), ("index", pa.int64()),
                        ("label", pa.string()), ("probability", pa.float64()),
                        ("error", pa.string())])
    return with_settings(schema, settings) if settings else schema


def evaluate_schema(settings: dict | None = None):
    import pyarrow as pa
    from .tasks.row_files import with_settings
    schema = pa.schema([("path", pa.string()), ("target", pa.int64()),
                        ("predicted", pa.list_(pa.int64())), ("error", pa.string())])
    return with_settings(schema, settings) if settings else schema


def features_schema(shapes: dict[str, tuple[int, ...]], settings: dict | None = None):
    """``path``, one flat float32 column per layer, ``error``; the shapes in the metadata."""
    import pyarrow as pa
    from .tasks.row_files import with_settings
    fields = [("path", pa.string())]
    fields += [(name, pa.list_(pa.float32(), int(np.prod(shape)))) for name, shape in shapes.items()]
    fields.append(("error", pa.string()))
    schema = pa.schema(fields, metadata={b"imagezoo.shapes": json.dumps(
        {name: list(shape) for name, shape in shapes.items()}).encode()})
    return with_settings(schema, settings) if settings else schema


class ModelStage:
    """The actor: loads the model once, then turns decoded batches into result rows.

    ``task``: ``classify`` (``top`` ranks), ``evaluate`` (the ``top`` best class indices with
    the row's ``target``) or ``features`` (``layers``, ``pool``, flattened per layer)."""

    def __init__(self, source, task: str, top: int = 5, layers: tuple[str, ...] = (),
                 pool: str | None = None, batch_size: int = INFERENCE_BATCH,
                 threads: int | None = None, shapes: dict | None = None,
                 ten_crop: bool = False):
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.task, self.top, self.pool = task, top, pool
        model = source.load().to(self.device).eval()
        self.card = model.card
        if task == "features":
            from .engine import layer_engine
            from .models.layers import resolve_layers
            self.refs = resolve_layers(model, list(layers))
            self.tap = (None if self.device != "cpu" else
                        layer_engine(model, self.refs, source.backend,
                                     batch_size=batch_size * (10 if ten_crop else 1)))
            self.schema = features_schema(shapes)
        else:
            self.schema = classify_schema() if task == "classify" else evaluate_schema()
        self.model = model if task == "features" else _engine(source, model, batch_size,
                                                               self.device, images=1)

    def __call__(self, batch: dict):
        import pyarrow as pa
        paths = [str(path) for path in batch["path"]]
        errors = [str(error) if error else None for error in batch["error"]]
        good = [row for row, error in enumerate(errors) if error is None]
        if good:
            pixels = self.torch.from_numpy(np.ascontiguousarray(batch["pixels"][good]))
            with self.torch.inference_mode():
                results = getattr(self, f"_{self.task}")(pixels.to(self.device))
        columns = {name: [] for name in self.schema.names}
        outputs = iter(results) if good else iter(())
        for row, (path, error) in enumerate(zip(paths, errors)):
            produced = {"error": error} if error else next(outputs)
            for record in produced if isinstance(produced, list) else [produced]:
                record.setdefault("path", path)
                if self.task == "evaluate":
                    record["target"] = int(batch["target"][row])
                for name in columns:
                    columns[name].append(record.get(name))
        return pa.table(columns, schema=self.schema)

    def _classify(self, pixels) -> list[list[dict]]:
        from .tasks.classify import class_probabilities, top_classes
        probabilities = class_probabilities(self.model, pixels).cpu()
        return [[ranked._asdict() for ranked in row]
                for row in top_classes(probabilities, self.card, self.top)]

    def _evaluate(self, pixels) -> list[dict]:
        from .tasks.classify import class_probabilities
        probabilities = class_probabilities(self.model, pixels)
        best = probabilities.topk(self.top, dim=1).indices.cpu().tolist()
        return [{"predicted": row} for row in best]

    def _features(self, pixels) -> list[dict]:
        from .tasks.features import features_of_batch
        values = features_of_batch(self.model, self.refs, pixels, self.pool, self.tap)
        flat = {name: value.reshape(value.shape[0], -1).numpy() for name, value in values.items()}
        return [{name: flat[name][row] for name in flat} for row in range(pixels.shape[0])]


# ---------------------------------------------------------------------------- datasets (public)


@dataclass(frozen=True)
class PoolOptions:
    """How the pipeline runs on the cluster (see ``classify_dataset``)."""

    batch_size: int = INFERENCE_BATCH
    actors: int | tuple[int, int] | None = None
    cpus_per_actor: float = 1.0
    threads_per_actor: int | None = None
    decode_cpus: float = DECODE_CPUS
    gpus_per_actor: float | None = None


def _pipeline(ds, source, card, task: str, options: PoolOptions, ten_crop: bool, draft: bool,
              **stage):
    ray = _import_ray()
    if card.preprocess.crop is None:
        raise ImagezooError(f"{card.name}: Ray batches need a card with a crop size "
                            f"(every image the same shape)")
    draft_size = (card.preprocess.resize or card.preprocess.crop) if draft else None
    if isinstance(source, _Loaded):  # one copy in the object store, not one per actor task
        source = _Shipped(ray.put(source.module), source.backend, source.precision)
    decoded = ds.map_batches(decode_batch, batch_format="numpy", batch_size=options.batch_size,
                             num_cpus=options.decode_cpus, memory=DECODE_MEMORY,
                             fn_kwargs={"spec": card.preprocess, "ten_crop": ten_crop,
                                        "draft_size": draft_size})
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1 if _cluster_gpus(ray) else 0
    threads = options.threads_per_actor or max(
        1, math.ceil(options.cpus_per_actor * THREADS_PER_ACTOR_CPU))
    return decoded.map_batches(
        ModelStage, batch_format="numpy", batch_size=options.batch_size,
        compute=_pool(ray, options.actors, options.cpus_per_actor, _cluster_gpus(ray) if gpus else 0),
        num_cpus=options.cpus_per_actor, num_gpus=gpus or None,
        fn_constructor_kwargs={"source": source, "task": task, "batch_size": options.batch_size,
                               "threads": threads, "ten_crop": ten_crop, **stage})


def _card_of(source):
    return source.load().card


def classify_dataset(ds, model, top: int = 5, batch_size: int = INFERENCE_BATCH,
                     ten_crop: bool = False, actors: int | tuple[int, int] | None = None,
                     cpus_per_actor: float = 1.0, threads_per_actor: int | None = None,
                     decode_cpus: float = DECODE_CPUS, gpus_per_actor: float | None = None,
                     card=None):
    """A Ray dataset of ``path`` (and ``bytes``, as ``read_binary_files(...,
    include_paths=True)`` gives them) rows -> a lazy dataset of ``path, rank, index, label,
    probability, error`` rows (one per rank; one with the ``error`` for an input that failed).

    ``model``: a ``ModelSpec``, a name or path, a loaded model or a function that makes one.
    ``actors``: the pool's size, or ``(min, max)`` to autoscale; by default one actor per GPU,
    else one to a quarter of the CPUs. ``cpus_per_actor`` / ``gpus_per_actor`` (by default one
    GPU each when the cluster has GPUs) are what each actor reserves, ``threads_per_actor``
    its PyTorch threads (by default two per CPU it reserves), ``decode_cpus`` what each
    decode task reserves. ``card``: the model's card when the caller has it (else it is loaded)."""
    source = model_source(model)
    card = card or _card_of(source)
    from .tasks.classify import capped_top
    options = PoolOptions(batch_size, actors, cpus_per_actor, threads_per_actor, decode_cpus,
                          gpus_per_actor)
    return _pipeline(ds, source, card, "classify", options, ten_crop,
                     draft=source.precision == "fast", top=capped_top(top, card))


def features_dataset(ds, model, layers: list[str] | str, pool: str | None = None,
                     batch_size: int = INFERENCE_BATCH, ten_crop: bool = False,
                     actors: int | tuple[int, int] | None = None, cpus_per_actor: float = 1.0,
                     threads_per_actor: int | None = None, decode_cpus: float = DECODE_CPUS,
                     gpus_per_actor: float | None = None, loaded=None):
    """Rows of ``path`` (and ``bytes``) -> a lazy dataset of ``path, <layer>..., error`` rows:
    each layer's output (``pool`` ``avg``/``max`` reduces maps to vectors) as a flat float32
    vector, its shape in the schema's metadata (``imagezoo.shapes``). Options as for
    ``classify_dataset``; ``loaded``: the model when the caller has it loaded already."""
    from .choices import POOLS
    layers = [layers] if isinstance(layers, str) else list(layers)
    if pool is not None and pool not in POOLS:
        raise ImagezooError(f"pool must be one of {POOLS}, not {pool!r}")
    source = model_source(model)
    model = loaded if loaded is not None else source.load()
    shapes = feature_shapes(model, layers, pool, ten_crop)
    options = PoolOptions(batch_size, actors, cpus_per_actor, threads_per_actor, decode_cpus,
                          gpus_per_actor)
    return _pipeline(ds, source, model.card, "features", options, ten_crop, draft=False,
                     layers=tuple(layers), pool=pool, shapes=shapes)


def feature_shapes(model, layers: list[str], pool: str | None, ten_crop: bool = False
                   ) -> dict[str, tuple[int, ...]]:
    """Each layer's output shape for one image, from a dry run on zeros (unknown layers fail
    here, before any image is read)."""
    import torch
    from .models.layers import resolve_layers
    from .tasks.features import features_of_batch
    refs = resolve_layers(model, layers)
    size = model.card.preprocess.crop
    with torch.inference_mode():
        values = features_of_batch(model.eval(), refs, torch.zeros(1, 3, size, size), pool)
    return {name: tuple(value.shape[1:]) for name, value in values.items()}


# ---------------------------------------------------------------------------- the commands


@dataclass
class RayRun:
    """What a run did: the file written, how many inputs it holds (``resumed`` of them kept
    from before), those that failed with their errors, the files of the folders left out."""

    out: Path
    inputs: int
    failures: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    resumed: int = 0

    @property
    def succeeded(self) -> int:
        return self.inputs - len(self.failures)


@dataclass(frozen=True)
class RunOptions:
    """The options every runner takes besides its own (see ``run_classify``)."""

    batch_size: int = INFERENCE_BATCH
    ten_crop: bool = False
    all_files: bool = False
    ordered: bool = False
    actors: int | tuple[int, int] | None = None
    cpus_per_actor: float = 1.0
    threads_per_actor: int | None = None
    decode_cpus: float = DECODE_CPUS
    gpus_per_actor: float | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = None

    @property
    def pool(self) -> PoolOptions:
        return PoolOptions(self.batch_size, self.actors, self.cpus_per_actor,
                           self.threads_per_actor, self.decode_cpus, self.gpus_per_actor)


def run_classify(sources, model_spec, out_path, top: int = 5, address: str | None = None,
                 resume: bool = False, **options) -> RayRun:
    """``imagezoo classify SOURCES --ray [ADDRESS] --out OUT [--resume]``: classify every
    image of ``sources`` (files, folders, list files, http(s) URLs, and URIs Ray reads) on
    Ray and write ``path, rank, index, label, probability, error`` rows to ``out_path``
    (``.parquet`` or ``.jsonl``).

    ``address``: a Ray cluster to join (else ``$RAY_ADDRESS``, else a new local instance;
    a process that already called ``ray.init`` keeps its instance). ``resume``: keep the
    inputs already in ``out_path`` (or in its journal ``OUT.partial`` from a stopped run) and
    process only the others. ``options`` (``RunOptions``): ``batch_size``, ``ten_crop``,
    ``all_files``, ``ordered`` (rows in input order), the pool (``actors``,
    ``cpus_per_actor``, ``threads_per_actor``, ``decode_cpus``, ``gpus_per_actor``) and a
    local instance's size (``num_cpus``, ``object_store_memory`` in bytes)."""
    _import_ray()   # before anything else: without Ray, one line
    run = RunOptions(**options)
    inputs = _inputs_or_fail(sources, run.all_files, out_path)
    source = model_source(model_spec)
    model = source.load()
    from .tasks.classify import capped_top
    top = capped_top(top, model.card)
    schema = classify_schema(_settings(source, model, "classify", top=top, ten_crop=run.ten_crop))
    _prepare_engine(source, model, run, len(inputs.local) + len(inputs.remote))

    def build(ds):
        return classify_dataset(ds, source, top, ten_crop=run.ten_crop, card=model.card,
                                **asdict(run.pool))
    return _run(inputs, schema, out_path, resume, address, run, build)


def run_features(sources, model_spec, out_path, layers: list[str] | str, pool: str | None = None,
                 address: str | None = None, resume: bool = False, **options) -> RayRun:
    """``imagezoo features SOURCES --layers L1,L2 [--pool avg] --ray [ADDRESS] --out OUT``:
    ``path, <layer>..., error`` rows (flat float32 vectors, shapes in the schema's metadata).
    Arguments as for ``run_classify``."""
    _import_ray()   # before anything else: without Ray, one line
    run = RunOptions(**options)
    layers = [layers] if isinstance(layers, str) else list(layers)
    inputs = _inputs_or_fail(sources, run.all_files, out_path)
    source = model_source(model_spec)
    model = source.load()
    shapes = feature_shapes(model, layers, pool, run.ten_crop)
    if source.backend not in ("torch", "auto"):
        # The layer engine exported and checked once here, found in the cache by the actors.
        from .engine import layer_engine
        from .models.layers import resolve_layers
        layer_engine(model, resolve_layers(model, layers), source.backend,
                     batch_size=run.batch_size * (10 if run.ten_crop else 1))
    schema = features_schema(shapes, _settings(source, model, "features", layers=layers,
                                               pool=pool, ten_crop=run.ten_crop))

    def build(ds):
        return features_dataset(ds, source, layers, pool, ten_crop=run.ten_crop, loaded=model,
                                **asdict(run.pool))
    return _run(inputs, schema, out_path, resume, address, run, build)


def run_evaluate(dataset, model_spec, out_path=None, top: int = 5, address: str | None = None,
                 resume: bool = False, classes_file=None, **options):
    """``imagezoo evaluate DATASET --ray [ADDRESS] [--out ROWS]``: one ``path, target,
    predicted, error`` row per image (``predicted``: the top-k class indices, best first),
    written to ``out_path`` (or a temporary file), then the accuracy figures computed from
    those rows: the ``Evaluation`` that ``imagezoo.evaluate`` gives. ``dataset`` and
    ``classes_file`` as for ``imagezoo.evaluate`` (mapping file or class folders; CIFAR-10's
    in-memory sets are not for Ray). Other arguments as for ``run_classify``."""
    _import_ray()   # before anything else: without Ray, one line
    from .data.datasets import cifar10_path
    from .tasks.evaluate import _labelled_set_for_model
    run = RunOptions(**options)
    if out_path is not None:
        from .tasks.row_files import output_format
        output_format(out_path)
    source = model_source(model_spec)
    model = source.load()
    card = model.card
    if cifar10_path(dataset) is not None or type(dataset).__name__ == "Cifar10Set":
        raise DatasetError("CIFAR-10 sets are held in memory; evaluate them without --ray")
    if top < 1:
        raise ImagezooError(f"top must be at least 1, not {top}")
    labelled = _labelled_set_for_model(dataset, card, classes_file)
    k = min(top, card.num_classes)
    targets = {}
    for path, label in zip(labelled.paths, labelled.labels):
        targets.setdefault(path, {"target": int(label)})
    inputs = Inputs(local=list(targets))
    schema = evaluate_schema(_settings(source, model, "evaluate", top=k, ten_crop=run.ten_crop))
    _prepare_engine(source, model, run, len(targets))

    def build(ds):
        return _pipeline(ds, source, card, "evaluate", run.pool, run.ten_crop,
                         draft=source.precision == "fast", top=k)
    with tempfile.TemporaryDirectory(prefix="imagezoo-ray-") as scratch:
        out = Path(out_path) if out_path is not None else Path(scratch) / "rows.parquet"
        result = _run(inputs, schema, out, resume and out_path is not None, address, run, build,
                      extra=targets)
        from .tasks.row_files import read_rows
        rows = [row for batch in read_rows(result.out, schema) for row in batch.to_pylist()]
    return evaluation_from_rows(rows, card, k, order=list(targets))


def evaluation_from_rows(rows: list[dict], card, k: int, order: list[str] | None = None):
    """``imagezoo.evaluate``'s figures from per-image rows (``path, target, predicted,
    error``); ``order`` (the set's paths) orders the failures as the set lists them."""
    from collections import Counter
    from .tasks.evaluate import MAX_CONFUSIONS, Evaluation, distinct_names
    position = {path: index for index, path in enumerate(order or [])}
    rows = sorted(rows, key=lambda row: position.get(row["path"], len(position)))
    names = distinct_names(card.labels)
    images, correct, mistakes = Counter(), Counter(), Counter()
    hits_top1 = hits_topk = 0
    failed = []
    for row in rows:
        if row["error"] is not None:
            failed.append((row["path"], row["error"]))
            continue
        true, best = row["target"], row["predicted"]
        images[true] += 1
        if best[0] == true:
            correct[true] += 1
            hits_top1 += 1
        else:
            mistakes[true, best[0]] += 1
        hits_topk += true in best
    count = sum(images.values())
    per_class = {names[label]: {"accuracy": correct[label] / images[label], "count": images[label]}
                 for label in sorted(images)}
    worst = sorted(mistakes.items(), key=lambda item: (-item[1], item[0]))[:MAX_CONFUSIONS]
    return Evaluation(top1=hits_top1 / count if count else None,
                      topk=hits_topk / count if count else None, k=k, count=count,
                      failed=failed, per_class=per_class,
                      confusions=[(names[t], names[p], n) for (t, p), n in worst])


def _inputs_or_fail(sources, all_files: bool, out_path=None) -> Inputs:
    """The inputs, after a look at the output's name (a wrong one fails before any loading)."""
    if out_path is not None:
        from .tasks.row_files import output_format
        output_format(out_path)
    inputs = split_inputs(sources, all_files)
    if not inputs:
        named = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
        raise ImagezooError("no images found in " + ", ".join(str(s) for s in named))
    return inputs


def _settings(source, model, task: str, **more) -> dict:
    """What makes the rows what they are, recorded in the output and checked on resume."""
    card = model.card
    described = asdict(source) if isinstance(source, ModelSpec) else {
        "backend": source.backend, "precision": source.precision}
    return {"task": task, "model": card.name, "sha256": card.sha256, "source": card.source,
            **described, **more}


def _prepare_engine(source, model, run: RunOptions, count: int) -> None:
    """Build (or find) the engine once on the driver, so that this machine's actors load it
    from the cache instead of building it side by side (and a long run tunes it once)."""
    if source.eager or (run.gpus_per_actor or 0) > 0:
        return
    _engine(source, model, run.batch_size, "cpu", images=count)


def _run(inputs: Inputs, schema, out_path, resume: bool, address, run: RunOptions, build,
         extra: dict | None = None) -> RayRun:
    from .tasks.row_files import RowJournal
    with RowJournal(out_path, schema, resume=resume) as journal:
        kept = journal.kept
        done = set(journal.done)
        todo = [path for path in inputs.local if path not in done]
        if todo or inputs.remote:
            with ray_session(address, run.num_cpus, run.object_store_memory) as ray:
                context = ray.data.DataContext.get_current()
                ordered_before = context.execution_options.preserve_order
                context.execution_options.preserve_order = run.ordered
                try:
                    dataset = _input_dataset(ray, inputs, done, run.all_files, extra)
                    if dataset is not None:
                        for rows in build(dataset).iter_batches(batch_size=None,
                                                                batch_format="pyarrow"):
                            journal.add(rows)
                finally:
                    context.execution_options.preserve_order = ordered_before
        out = journal.finish()
        return RayRun(out, journal.inputs, list(journal.failures), inputs.skipped, kept)
