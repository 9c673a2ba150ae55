"""Classification without PyTorch: a cached ONNX Runtime engine (``engine/light.py``), Pillow
and NumPy. ``imagezoo classify`` takes this path when the model's checked engine is in the
cache, so a short run starts in a fraction of a second instead of importing PyTorch.

The results are ``classify``'s: the same decoding and errors (``data/items.prepare_item``),
the same preprocessing numbers (``transforms.preprocess_array`` is what the PyTorch path
wraps), the same ONNX file, the softmax in float32, and ten crops averaged the same way.
Images are decoded by a pool of threads, one per core (Pillow releases the GIL while it
decodes and resizes), a batch ahead of the engine.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from ..choices import INFERENCE_BATCH
from ..data.items import prepare_item
from ..data.transforms import preprocess_array, preprocess_ten_crop_array
from .results import Prediction, Predictions, ranked_rows


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float32) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def classify_light(engine, sources: list[str], top: int = 5, batch_size: int = INFERENCE_BATCH,
                   ten_crop: bool = False, progress: bool = False, skipped=()) -> Predictions:
    """One ``Prediction`` per source, in order (see the module docstring)."""
    card = engine.card
    transform = preprocess_ten_crop_array if ten_crop else preprocess_array
    results = Predictions([], skipped)
    threads = max(1, min(len(sources), os.cpu_count() or 1))
    bar = tqdm(total=len(sources), unit="img", file=sys.stderr,
               disable=not (progress or sys.stderr.isatty()))
    with ThreadPoolExecutor(threads) as pool, bar:
        items = pool.map(lambda source: prepare_item(source, transform, card.preprocess), sources)
        for start in range(0, len(sources), batch_size):
            chunk = [next(items) for _ in sources[start:start + batch_size]]
            good = [array for array, error, _ in chunk if error is None]
            ranked = iter(ranked_rows(_probabilities(engine, good, ten_crop), card.labels, top)
                          if good else [])
            for source, (array, error, notes) in zip(sources[start:start + batch_size], chunk):
                if error is None:
                    results.append(Prediction(source, predictions=next(ranked), notes=notes))
                else:
                    results.append(Prediction(source, error=error, notes=notes))
            bar.update(len(chunk))
    return results


def _probabilities(engine, arrays: list[np.ndarray], ten_crop: bool) -> np.ndarray:
    batch = np.stack(arrays)
    if not ten_crop:
        return softmax(engine(batch))
    images, crops = batch.shape[:2]
    probabilities = softmax(engine(batch.reshape(images * crops, *batch.shape[2:])))
    return probabilities.reshape(images, crops, -1).mean(axis=1)
