"""What the server runs: any served model as a NumPy function, batch in, logits out.

The server decodes and preprocesses in NumPy (``transforms.preprocess_array``, the numbers the
PyTorch path wraps) and ranks in NumPy, so that a model whose ONNX Runtime engine is cached
(``engine/light.py``'s ``LightEngine``) is served without importing PyTorch at all. A PyTorch
model, an ``Engine`` or an ``OnnxModel`` is wrapped here, and only then is PyTorch imported.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


def is_array_model(model) -> bool:
    """Whether ``model`` already maps a NumPy batch to NumPy logits (a ``LightEngine``)."""
    from ..engine.light import LightEngine
    return isinstance(model, LightEngine)


def array_forward(model) -> Forward:
    """``model`` as a function of a float32 N x 3 x H x W array, returning N x C logits."""
    if is_array_model(model):
        return model
    import torch
    parameters = getattr(model, "parameters", None)
    parameter = next(parameters(), None) if callable(parameters) else None
    device = parameter.device if parameter is not None else None

    def forward(batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if device is not None:
            tensor = tensor.to(device)
        with torch.inference_mode():
            logits = model(tensor)
        return logits.float().cpu().numpy()
    return forward
