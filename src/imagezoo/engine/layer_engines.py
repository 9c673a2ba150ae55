"""Compiled engines for features: the requested layers as the outputs of one exported graph.

A forward hook cannot reach inside a compiled graph, so ``layer_engine`` exports a
``LayerTap`` (the model with the layers' values as its outputs) to ONNX, cached per layer set
beside the model's other engines (a full copy of the model per set: about 100 MB for
ResNet-50, twice that once OpenVINO has cached its compiled form), and runs it in ONNX Runtime
or OpenVINO in float32. It is checked against the hooks on the sample photos: every layer
within rtol 1e-4 and an atol of 1e-4 times the layer's scale (its largest magnitude, at least
1), since intermediate maps reach hundreds where logits stay near ten. A check that passed is
recorded with the engine file's size and time (``checked.json``), so later runs skip it; a
file that fails is exported again once, in case it was stale. An engine that still misses, or
a backend that is missing or cannot build the graph, gives way to the hooks with a warning,
never a crash; so do inputs of another size than the card's crop, which the graph was
exported for.

``torch-fast`` cannot serve features (it folds batch norm into the convolutions, so its layers
are no longer the model's), and ``auto`` keeps the hooks: timing every layer set would cost a
short run more than it saves. The engines run on the CPU; a model on a GPU keeps the hooks.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings

import torch
from torch import nn

from ..data.batches import INFERENCE_BATCH
from ..errors import ImagezooError
from ..models.layers import LayerRef
from ..tasks.features import LayerTap
from .backends import BACKENDS, BackendUnavailable, build, engine_files, input_size

LAYER_BACKENDS = ("onnxruntime", "openvino")
LAYER_TOLERANCE = 1e-4


def layer_engine(model: nn.Module, refs: list[LayerRef], backend: str,
                 batch_size: int = INFERENCE_BATCH, cache_dir: str | os.PathLike | None = None):
    """A function NCHW batch -> {layer name: value}, or None when the hooks should run: for
    ``torch`` and ``auto``, and (with a warning) when ``backend`` cannot give the layers."""
    if backend not in ("auto",) + BACKENDS:
        raise ImagezooError(f"backend must be auto or one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend in ("torch", "auto"):
        return None
    reason = unusable_because(model, backend)
    if reason is None:
        try:
            return _checked_tap(model, refs, backend, batch_size, cache_dir)
        except (BackendUnavailable, LayersDiffer) as error:
            reason = f"{backend}: {error}"
        except Exception as error:  # any backend failure falls back, never crashes a run
            reason = f"{backend}: {type(error).__name__}: {error}"[:300]
    warnings.warn(f"imagezoo: features run on the torch backend ({reason})", stacklevel=3)
    return None


def unusable_because(model: nn.Module, backend: str) -> str | None:
    if backend not in LAYER_BACKENDS:
        return f"{backend} cannot give the model's own layers; use {' or '.join(LAYER_BACKENDS)}"
    if getattr(model, "card", None) is None:
        return "the model has no card to export it by"
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type != "cpu":
        return f"compiled feature engines run on the CPU, the model is on {parameter.device}"
    return None


class LayersDiffer(ImagezooError):
    """A feature engine whose layer values miss the hooks' values."""


def _checked_tap(model, refs, backend, batch_size, cache_dir):
    from .optimizer import CheckRecord, engine_cache, sample_inputs  # optimizer imports this module
    unique = list({ref.name: ref for ref in refs}.values())  # graph outputs need unique names
    tap = LayerTap(model.eval(), unique)
    layer_set = json.dumps([[ref.name, ref.module, ref.after] for ref in unique])
    cache = engine_cache(model, cache_dir) / f"layers-{hashlib.sha256(layer_set.encode()).hexdigest()[:16]}"
    checks = CheckRecord(cache)
    key, files = f"{backend}/fp32", engine_files(backend, "fp32", batch_size, cache)
    size = input_size(model)
    hooks = {}  # the sample photos and the hooks' values, computed once if needed

    def problem_of(run) -> str | None:
        if not hooks:
            hooks["samples"] = sample_inputs(model)
            with torch.inference_mode():
                hooks["values"] = tap(hooks["samples"])
        return layer_problem(unique, as_tuple(run(hooks["samples"])), hooks["values"])

    for attempt in ("cached", "rebuilt"):
        run = build(backend, tap, "fp32", batch_size, cache, lambda: sample_inputs(model))
        if checks.failed(key, files):
            raise LayersDiffer("its values missed the hooks' on an earlier run")
        problem = checks.check(key, files, run, size, lambda: problem_of(run))
        if problem is None:
            break
        if attempt == "rebuilt":
            raise LayersDiffer(problem)
        shutil.rmtree(cache, ignore_errors=True)  # perhaps stale: export once more
    names = [ref.name for ref in unique]
    warned = []

    def run_layers(x: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(x.shape[-2:]) != size:  # the graph was exported for the card's crop size
            if not warned:
                warned.append(True)
                warnings.warn(f"imagezoo: features of {x.shape[-2]}x{x.shape[-1]} inputs run on "
                              f"the torch backend (the {backend} graph takes {size[0]}x{size[1]})",
                              stacklevel=3)
            with torch.inference_mode():
                return dict(zip(names, tap(x)))
        return dict(zip(names, as_tuple(run(x))))
    return run_layers


def as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def layer_problem(refs: list[LayerRef], actual: tuple[torch.Tensor, ...],
                  expected: tuple[torch.Tensor, ...]) -> str | None:
    """None when every layer matches the hooks' values (see the module docstring)."""
    if len(actual) != len(refs):
        return f"the engine gave {len(actual)} outputs for {len(refs)} layers"
    for ref, value, reference in zip(refs, actual, expected):
        scale = max(1.0, float(reference.abs().max()))
        if value.shape != reference.shape:
            return f"layer {ref.name} has shape {tuple(value.shape)}, not {tuple(reference.shape)}"
        if not torch.allclose(value, reference, rtol=LAYER_TOLERANCE, atol=LAYER_TOLERANCE * scale):
            worst = float((value - reference).abs().max())
            return f"layer {ref.name} differs from the hooks by up to {worst:.2e} (scale {scale:.3g})"
    return None
