"""A cached ONNX Runtime engine, found and run without PyTorch.

When ``optimize`` has built and checked the float32 ONNX Runtime engine of a model that the
user names the same way again (``records.source_key``: the default model, a registry name with
a weight file or ``random:SEED``, a model folder, a weight file), its ``sources`` record points
at the engine's folder, which holds ``model.onnx`` and the card. ``find_light_engine`` follows
it, checks that the file is still the one that passed its check and that ``auto`` would choose
ONNX Runtime for this batch size (the architecture's timing table, or, without one, the rule
that prefers a checked ONNX Runtime engine), and returns a ``LightEngine``; anything missing or
changed returns None and the caller takes the usual path. The numbers are the same as the
PyTorch path's: same preprocessing (``transforms.preprocess_array``), same ONNX file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import records


class LightEngine:
    """``engine(batch)`` -> logits, both NumPy float32 arrays (N x 3 x H x W -> N x C)."""

    backend, precision, numerics = "onnxruntime", "exact", "fp32"

    def __init__(self, onnx_file: Path, card):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_file), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.card = card

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]


def find_light_engine(name_or_path: str | None, weights: str | None, precision: str,
                      backend: str, batch_size: int, cache_dir=None) -> LightEngine | None:
    """The cached, checked float32 ONNX Runtime engine of the model named so, when ``backend``
    (``auto`` or ``onnxruntime``) and ``precision`` (``exact``) would run it; else None."""
    if precision != "exact" or backend not in ("auto", "onnxruntime"):
        return None
    try:
        import onnxruntime  # noqa: F401 (without it there is nothing to run)
    except ImportError:
        return None
    key = records.source_key(name_or_path, weights)
    if key is None:
        return None
    engine_dir = Path(records.read_json(records.source_record_path(key, cache_dir)).get("engine_dir", ""))
    onnx_file = engine_dir / "model.onnx"
    if not onnx_file.is_file() or not any(
            records.check_recorded(engine_dir, check, [onnx_file])
            for check in records.read_json(engine_dir / records.CHECKED_FILE)
            if check.startswith("onnxruntime/fp32/")):
        return None
    from ..model_folder import read_card
    try:
        card = read_card(engine_dir)
    except Exception:  # noqa: BLE001 - a damaged record means the usual path, not an error
        return None
    if backend == "auto":
        side = card.preprocess.crop or card.preprocess.resize or 224
        tables = records.read_json(records.tuning_path(card.architecture, side, cache_dir))
        nearest = records.nearest_table(tables, "exact", batch_size)
        winner = records.fastest(nearest[1]) if nearest else None
        if nearest is not None and (winner is None or winner["backend"] != "onnxruntime"):
            return None
    return LightEngine(onnx_file, card)
