"""The public dataset functions: classify_dataset, features_dataset."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass


from ..choices import INFERENCE_BATCH
from ..errors import ImagezooError

from .common import DECODE_CPUS, DECODE_MEMORY, THREADS_PER_ACTOR_CPU, _import_ray
from .session import _cluster_gpus, _pool
from .stages import ModelStage, _Loaded, _Shipped, decode_batch, model_source

log = logging.getLogger(__name__)

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
    from ..tasks.results import capped_top
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
    from ..choices import POOLS
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
    from ..models.layers import resolve_layers
    from ..tasks.features import features_of_batch
    refs = resolve_layers(model, layers)
    size = model.card.preprocess.crop
    with torch.inference_mode():
        values = features_of_batch(model.eval(), refs, torch.zeros(1, 3, size, size), pool)
    return {name: tuple(value.shape[1:]) for name, value in values.items()}
