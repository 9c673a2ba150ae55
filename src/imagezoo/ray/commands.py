"""The command-level runners the CLI calls: run_classify, run_features, run_evaluate."""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


from ..choices import INFERENCE_BATCH
from ..errors import DatasetError, ImagezooError

from .common import DECODE_CPUS, _import_ray
from .datasets import PoolOptions, _pipeline, classify_dataset, feature_shapes, features_dataset
from .inputs import Inputs, _input_dataset, split_inputs
from .session import ray_session
from ..engine.light import LightEngine
from .stages import (ModelSpec, _engine, classify_schema, evaluate_schema, features_schema,
                     light_engine_of, model_source)

log = logging.getLogger(__name__)

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
    model = _light_or_loaded(source, run)
    from ..tasks.results import capped_top
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
        from ..engine import layer_engine
        from ..models.layers import resolve_layers
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
    from ..data.datasets import cifar10_path
    from ..tasks.evaluation import labelled_set_for_model
    run = RunOptions(**options)
    if out_path is not None:
        from ..tasks.row_files import output_format
        output_format(out_path)
    source = model_source(model_spec)
    model = _light_or_loaded(source, run)
    card = model.card
    if cifar10_path(dataset) is not None or type(dataset).__name__ == "Cifar10Set":
        raise DatasetError("CIFAR-10 sets are held in memory; evaluate them without --ray")
    if top < 1:
        raise ImagezooError(f"top must be at least 1, not {top}")
    labelled = labelled_set_for_model(dataset, card, classes_file)
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
        from ..tasks.row_files import read_rows
        rows = [row for batch in read_rows(result.out, schema) for row in batch.to_pylist()]
    return evaluation_from_rows(rows, card, k, order=list(targets))


def evaluation_from_rows(rows: list[dict], card, k: int, order: list[str] | None = None):
    """``imagezoo.evaluate``'s figures from per-image rows (``path, target, predicted,
    error``); ``order`` (the set's paths) orders the failures as the set lists them."""
    from ..tasks.evaluation import Tally
    position = {path: index for index, path in enumerate(order or [])}
    rows = sorted(rows, key=lambda row: position.get(row["path"], len(position)))
    tally = Tally(card.labels, k)
    for row in rows:
        if row["error"] is not None:
            tally.fail(row["path"], row["error"])
        else:
            tally.add(row["target"], row["predicted"])
    return tally.result()


def _inputs_or_fail(sources, all_files: bool, out_path=None) -> Inputs:
    """The inputs, after a look at the output's name (a wrong one fails before any loading)."""
    if out_path is not None:
        from ..tasks.row_files import output_format
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


def _light_or_loaded(source, run: RunOptions):
    """The model's PyTorch-free engine when the actors will run it (``stages.light_engine_of``:
    the driver then needs no PyTorch either), else the model, loaded."""
    light = None if (run.gpus_per_actor or 0) > 0 else light_engine_of(source, run.batch_size)
    return light if light is not None else source.load()


def _prepare_engine(source, model, run: RunOptions, count: int) -> None:
    """Build (or find) the engine once on the driver, so that this machine's actors load it
    from the cache instead of building it side by side (and a long run tunes it once)."""
    if source.eager or (run.gpus_per_actor or 0) > 0 or isinstance(model, LightEngine):
        return
    _engine(source, model, run.batch_size, "cpu", images=count)


def _run(inputs: Inputs, schema, out_path, resume: bool, address, run: RunOptions, build,
         extra: dict | None = None) -> RayRun:
    from ..tasks.row_files import RowJournal
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
