"""Features from named layers, collected by forward hooks in one pass over each batch."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from ..data.batches import INFERENCE_BATCH, image_batches
from ..data.sources import expand_sources
from ..models.layers import LayerRef, named_layers, resolve_layers
from .classify import image_dataset, resolve_device, show_progress

log = logging.getLogger(__name__)

from ..choices import POOLS  # noqa: E402,F401 (defined once, re-exported)


@contextmanager
def capture(model: nn.Module, refs: list[LayerRef]) -> Iterator[dict[str, torch.Tensor]]:
    """While active, each forward pass leaves the requested layers' outputs in the dict."""
    modules = named_layers(model)
    captured: dict[str, torch.Tensor] = {}

    def hook_for(ref: LayerRef):
        def hook(_module, _inputs, output):
            # Cloned: ResNet blocks apply their ReLU in place, which would otherwise
            # overwrite a captured batch-norm output after the fact.
            value = output.detach().clone()
            if ref.after == "relu":
                value = torch.relu(value)
            elif ref.after == "softmax":
                value = torch.softmax(value, dim=1)
            captured[ref.name] = value
        return hook

    hooks = [modules[ref.module].register_forward_hook(hook_for(ref)) for ref in refs]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


class LayerTap(nn.Module):
    """``model`` as a module whose outputs are the requested layers' values, in ``refs``
    order (its logits are computed and dropped): what a compiled engine runs for features."""

    def __init__(self, model: nn.Module, refs: list[LayerRef]):
        super().__init__()
        self.model = model
        self.refs = refs
        self.card = model.card
        self.output_names = [ref.name for ref in refs]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with capture(self.model, self.refs) as captured:
            self.model(x)
        return tuple(captured[ref.name] for ref in self.refs)


def reduce_spatial(value: torch.Tensor, pool: str | None) -> torch.Tensor:
    """``pool="avg"``/``"max"`` turns N x C x H x W maps into N x C vectors."""
    if pool is None:
        return value
    if value.dim() == 4:
        return value.mean(dim=(2, 3)) if pool == "avg" else value.amax(dim=(2, 3))
    return value.flatten(1)


def features_of_batch(model: nn.Module, refs: list[LayerRef], batch: torch.Tensor,
                      pool: str | None = None, tap=None) -> dict[str, torch.Tensor]:
    """One forward pass; a crop batch (N x K x 3 x H x W) averages each image's K maps.
    ``tap`` (a compiled ``LayerTap``: batch -> {layer name: value}, see
    ``imagezoo.engine.layer_engine``) runs instead of the model's hooks when given."""
    crops = batch.shape[1] if batch.dim() == 5 else None
    inputs = batch.flatten(0, 1) if crops else batch
    if tap is not None:
        captured = tap(inputs.cpu())
    else:
        with capture(model, refs) as captured:
            model(inputs)
    result = {}
    for ref in refs:
        value = reduce_spatial(captured[ref.name], pool)
        if crops:
            value = value.view(-1, crops, *value.shape[1:]).mean(dim=1)
        result[ref.name] = value.cpu()
    return result


@dataclass
class FeatureBatch:
    inputs: list[str]                       # the images of these rows, in order
    features: dict[str, torch.Tensor]       # layer name -> len(inputs) x ...
    failures: list[tuple[str, str]]         # (input, error) of the images that failed
    notes: list[tuple[str, str]] = field(default_factory=list)  # (input, what the decoder said)


def iter_features(model: nn.Module, sources: list[str], layers: list[str], pool: str | None = None,
                  ten_crop: bool = False, batch_size: int = INFERENCE_BATCH, workers: int | None = None,
                  device: str = "auto", progress: bool = False,
                  backend: str = "torch") -> Iterator[FeatureBatch]:
    """Feature batches in input order: memory stays bounded by one batch, whatever the count.

    ``backend``: ``"torch"`` (forward hooks on the model) or ``"onnxruntime"``/``"openvino"``
    (the layers exported as outputs of one graph, checked against the hooks; see
    ``imagezoo.engine.layer_engine``, which falls back to the hooks with a warning)."""
    if pool is not None and pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, not {pool!r}")
    refs = resolve_layers(model, layers)
    target = resolve_device(device)
    model = model.to(target).eval()
    from ..engine import layer_engine
    tap = layer_engine(model, refs, backend, batch_size=batch_size * (10 if ten_crop else 1))
    dataset = image_dataset(sources, model.card, ten_crop)
    bar = tqdm(total=len(sources), unit="img", file=sys.stderr, disable=not show_progress(progress))
    with torch.inference_mode(), bar:
        for batch in image_batches(dataset, batch_size=batch_size, workers=workers):
            failures = [(sources[i], message) for i, message in batch.failures]
            features = ({} if batch.tensor is None else
                        features_of_batch(model, refs, batch.tensor.to(target), pool, tap))
            notes = [(sources[i], note) for i, note in batch.notes]
            yield FeatureBatch([sources[i] for i in batch.indices], features, failures, notes)
            bar.update(len(batch.indices) + len(batch.failures))


class FeatureSet(dict):
    """``layer name -> tensor`` (rows in input order), with ``inputs`` (the images of the rows)
    and ``failures`` (the images that could not be read, with their errors)."""

    inputs: list[str]
    failures: list[tuple[str, str]]


def extract_features(model: nn.Module, inputs: torch.Tensor | str | os.PathLike | Iterable,
                     layers: list[str] | str, pool: str | None = None, ten_crop: bool = False,
                     batch_size: int = INFERENCE_BATCH, workers: int | None = None, device: str = "auto",
                     progress: bool = False, backend: str = "torch") -> FeatureSet:
    """The outputs of ``layers`` for ``inputs``, in memory.

    ``inputs`` is an already preprocessed N x 3 x H x W tensor, or image sources (files,
    folders, list files, URLs). Images that cannot be read are left out of the rows and listed
    in ``result.failures`` (and logged); ``result.inputs`` names the image of each row. For
    more images than fit in memory use ``iter_features`` or the ``features`` command, which
    streams to an HDF5 file. ``backend`` as for ``iter_features``.
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    result = FeatureSet()
    if isinstance(inputs, torch.Tensor):
        refs = resolve_layers(model, layers)
        from ..engine import layer_engine
        tap = layer_engine(model.eval(), refs, backend, batch_size=max(1, inputs.shape[0]))
        with torch.inference_mode():
            result.update(features_of_batch(model.eval(), refs, inputs, pool, tap))
        result.inputs, result.failures = [f"tensor[{i}]" for i in range(inputs.shape[0])], []
        return result
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    result.inputs, result.failures = [], []
    for batch in iter_features(model, expand_sources(inputs), layers, pool, ten_crop, batch_size,
                               workers, device, progress, backend):
        result.inputs.extend(batch.inputs)
        result.failures.extend(batch.failures)
        for name, value in batch.features.items():
            chunks[name].append(value)
    for source, error in result.failures:
        log.warning("skipped %s", error)
    for name in layers:
        result[name] = torch.cat(chunks[name]) if chunks[name] else torch.empty(0)
    return result
