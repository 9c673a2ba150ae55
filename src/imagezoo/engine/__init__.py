"""``optimize``: the fastest faithful way to run a model on this machine.

    engine = imagezoo.optimize(model)                      # exact float32, fastest backend
    engine = imagezoo.optimize(model, precision="fast")    # bf16 / int8 where they agree
    logits = engine(x)                                     # x: preprocessed NCHW float32

The package's modules: ``optimizer.py`` (checks, the guard, tuning), ``backends.py`` (each
backend's runner), ``records.py`` (the cache's JSON records, readable without PyTorch),
``light.py`` (an ONNX Runtime engine run without PyTorch: the cached one, else the shipped
graph of the architecture filled with the weights), ``graphs.py`` (those weightless graphs),
``fold.py`` and
``layer_engines.py``. Names are imported from them on first use, so that importing
``imagezoo.engine.records`` or ``imagezoo.engine.light`` does not import PyTorch.
"""
from __future__ import annotations

from ..choices import BACKENDS, PRECISIONS  # noqa: F401 (defined once, re-exported)
from ..lazy import lazy_exports

_EXPORTS = {
    "Engine": ".optimizer", "optimize": ".optimizer", "is_tuned": ".optimizer",
    "engine_cache": ".optimizer", "model_digest": ".optimizer", "sample_inputs": ".optimizer",
    "tuning_table": ".optimizer", "CheckRecord": ".optimizer", "images_per_second": ".optimizer",
    "FAST_PROBABILITY_SHIFT": ".optimizer", "EXACT_TOLERANCE": ".optimizer",
    "SAMPLE_PHOTOS": ".optimizer", "build": ".optimizer",
    "machine_facts": ".records", "cpu_model": ".records", "ENGINE_FORMAT": ".records",
    "layer_engine": ".layer_engines", "LAYER_BACKENDS": ".layer_engines",
}

__all__ = sorted([*_EXPORTS, "BACKENDS", "PRECISIONS"])

__getattr__ = lazy_exports(__name__, _EXPORTS)
