"""The pipeline's stages: how actors load the model, decoding in CPU tasks, the model in actors."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..choices import DEFAULT_MODEL, INFERENCE_BATCH
from ..errors import ImageDecodeError, ImagezooError


log = logging.getLogger(__name__)

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
        from ..loader import load_model, random_seed
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


def light_engine_of(source, batch_size: int):
    """The model's PyTorch-free engine (``engine/light.py``: the cached ONNX Runtime or
    OpenVINO engine, or the shipped graph) when a ``ModelSpec`` names it, no GPU would take
    the run and one is found; else None (then PyTorch loads the model)."""
    from ..engine.light import find_light_engine, gpu_present
    if not isinstance(source, ModelSpec) or source.pretrained is not None or gpu_present():
        return None
    name, weights = source.model, source.weights
    if name is None and weights is not None and not weights.startswith("random"):
        name, weights = weights, None   # a weight file alone names its own model (``load``)
    return find_light_engine(name, weights, source.precision, source.backend, batch_size)


def _engine(source, model, batch_size: int, device: str, images: int | None = None):
    """The module that runs: the model itself, or its ``imagezoo.optimize`` engine (CPU only)."""
    if source.eager or device != "cpu":
        return model
    from ..engine import optimize
    return optimize(model, precision=source.precision, backend=source.backend,
                    batch_size=batch_size, images=images)



# ---------------------------------------------------------------------------- decoding (CPU tasks)


def decode_batch(batch: dict, spec, ten_crop: bool = False, draft_size: int | None = None) -> dict:
    """``path`` (and ``bytes``) rows -> ``path, pixels, error`` rows, other columns kept.

    A CPU task of the pipeline: imagezoo's guarded decoding and the card's NumPy
    preprocessing; an input that fails keeps zeros as pixels and its error in words, exactly
    the message of the single-process commands."""
    from ..data.items import prepare_item
    from ..data.transforms import preprocess_array, preprocess_ten_crop_array
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
    from ..data.decode_guard import preprocess_reason
    from ..data.images import decode_bytes
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
    from ..tasks.row_files import with_settings
    schema = pa.schema([("path", pa.string()), ("rank", pa.int64()), ("index", pa.int64()),
                        ("label", pa.string()), ("probability", pa.float64()),
                        ("error", pa.string())])
    return with_settings(schema, settings) if settings else schema


def evaluate_schema(settings: dict | None = None):
    import pyarrow as pa
    from ..tasks.row_files import with_settings
    schema = pa.schema([("path", pa.string()), ("target", pa.int64()),
                        ("predicted", pa.list_(pa.int64())), ("error", pa.string())])
    return with_settings(schema, settings) if settings else schema


def features_schema(shapes: dict[str, tuple[int, ...]], settings: dict | None = None):
    """``path``, one flat float32 column per layer, ``error``; the shapes in the metadata."""
    import pyarrow as pa
    from ..tasks.row_files import with_settings
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
        self.task, self.top, self.pool = task, top, pool
        # Classify and evaluate run the cached engine (or shipped graph) without PyTorch.
        self.light = light_engine_of(source, batch_size) if task != "features" else None
        if self.light is not None:
            self.card, self.torch, self.device = self.light.card, None, "cpu"
            self.schema = classify_schema() if task == "classify" else evaluate_schema()
            return
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = source.load().to(self.device).eval()
        self.card = model.card
        if task == "features":
            from ..engine import layer_engine
            from ..models.layers import resolve_layers
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
        if good and self.light is not None:
            results = self._without_torch(np.ascontiguousarray(batch["pixels"][good]))
        elif good:
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

    def _without_torch(self, pixels: np.ndarray) -> list:
        from ..tasks.evaluation import top_indices
        from ..tasks.light_batches import probabilities
        from ..tasks.results import ranked_rows
        rows = probabilities(self.light, list(pixels), ten_crop=pixels.ndim == 5)
        if self.task == "classify":
            return [[ranked._asdict() for ranked in row]
                    for row in ranked_rows(rows, self.card.labels, self.top)]
        return [{"predicted": best} for best in top_indices(rows, self.top)]

    def _classify(self, pixels) -> list[list[dict]]:
        from ..tasks.classify import class_probabilities, top_classes
        probabilities = class_probabilities(self.model, pixels).cpu()
        return [[ranked._asdict() for ranked in row]
                for row in top_classes(probabilities, self.card, self.top)]

    def _evaluate(self, pixels) -> list[dict]:
        from ..tasks.classify import class_probabilities
        probabilities = class_probabilities(self.model, pixels)
        best = probabilities.topk(self.top, dim=1).indices.cpu().tolist()
        return [{"predicted": row} for row in best]

    def _features(self, pixels) -> list[dict]:
        from ..tasks.features import features_of_batch
        values = features_of_batch(self.model, self.refs, pixels, self.pool, self.tap)
        flat = {name: value.reshape(value.shape[0], -1).numpy() for name, value in values.items()}
        return [{name: flat[name][row] for name in flat} for row in range(pixels.shape[0])]
