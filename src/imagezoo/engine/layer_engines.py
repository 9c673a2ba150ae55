"""Compiled engines for features: the requested layers as the outputs of one exported graph.

A forward hook cannot reach inside a compiled graph, so ``layer_engine`` exports a
``LayerTap`` (the model with the layers' values as its outputs) to ONNX, cached per layer set
beside the model's other engines, and runs it in ONNX Runtime or OpenVINO in float32. Before
use it is checked against the hooks on the sample photos: every layer within rtol 1e-4 and an
atol of 1e-4 times the layer's scale (its largest magnitude, at least 1), since intermediate
maps reach hundreds where logits stay near ten. An engine that misses, or a backend that is
missing or cannot build the graph, gives way to the hooks with a warning, never a crash.

``torch-fast`` cannot serve features (it folds batch norm into the convolutions, so its layers
are no longer the model's), and ``auto`` keeps the hooks: timing every layer set would cost a
short run more than it saves.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings

import torch
from torch import nn

from ..data.batches import INFERENCE_BATCH
from ..models.layers import LayerRef
from ..tasks.features import LayerTap
from .backends import BackendUnavailable, build

LAYER_BACKENDS = ("onnxruntime", "openvino")
LAYER_TOLERANCE = 1e-4


def layer_engine(model: nn.Module, refs: list[LayerRef], backend: str,
                 batch_size: int = INFERENCE_BATCH, cache_dir: str | os.PathLike | None = None):
    """A function NCHW batch -> the layers' values (a tuple in ``refs`` order), or None when
    the hooks should run: for ``torch`` and ``auto``, and (with a warning) when ``backend``
    cannot give the layers or its values miss the check."""
    from . import engine_cache, sample_inputs  # the package imports this module
    if backend in ("torch", "auto"):
        return None
    if backend not in LAYER_BACKENDS:
        warnings.warn(f"imagezoo: features run on the torch backend ({backend} cannot give "
                      f"the model's own layers; use {' or '.join(LAYER_BACKENDS)})", stacklevel=3)
        return None
    tap = LayerTap(model.eval(), refs)
    layer_set = json.dumps([[ref.name, ref.module, ref.after] for ref in refs])
    cache = engine_cache(model, cache_dir) / f"layers-{hashlib.sha256(layer_set.encode()).hexdigest()[:16]}"
    samples = sample_inputs(model)
    try:
        run = build(backend, tap, "fp32", batch_size, cache, lambda: samples)
        with torch.inference_mode():
            problem = layer_problem(refs, as_tuple(run(samples)), tap(samples))
    except BackendUnavailable as error:
        problem = str(error)
    except Exception as error:  # any backend failure falls back, never crashes a run
        problem = f"{type(error).__name__}: {error}"[:300]
    if problem is not None:
        warnings.warn(f"imagezoo: features run on the torch backend ({backend}: {problem})",
                      stacklevel=3)
        return None
    return lambda x: as_tuple(run(x))


def as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def layer_problem(refs: list[LayerRef], actual: tuple[torch.Tensor, ...],
                  expected: tuple[torch.Tensor, ...]) -> str | None:
    """None when every layer matches the hooks' values (see the module docstring)."""
    for ref, value, reference in zip(refs, actual, expected):
        scale = max(1.0, float(reference.abs().max()))
        if value.shape != reference.shape:
            return f"layer {ref.name} has shape {tuple(value.shape)}, not {tuple(reference.shape)}"
        if not torch.allclose(value, reference, rtol=LAYER_TOLERANCE, atol=LAYER_TOLERANCE * scale):
            worst = float((value - reference).abs().max())
            return f"layer {ref.name} differs from the hooks by up to {worst:.2e} (scale {scale:.3g})"
    return None
