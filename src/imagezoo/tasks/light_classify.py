"""Classification without PyTorch: a cached ONNX Runtime engine (``engine/light.py``), Pillow
and NumPy. ``imagezoo classify`` takes this path when the model's checked engine is in the
cache, so a short run starts in a fraction of a second instead of importing PyTorch.

The results are ``classify``'s: the same decoding and errors (``data/items.prepare_item``),
the same preprocessing numbers (``transforms.preprocess_array`` is what the PyTorch path
wraps), the same ONNX file, the softmax in float32, and ten crops averaged the same way.
Images are decoded by a pool of threads a batch or two ahead of the engine
(``light_batches.py``).
"""
from __future__ import annotations

import sys

from tqdm import tqdm

from ..choices import INFERENCE_BATCH
from ..data.items import prepare_item
from ..data.transforms import preprocess_array, preprocess_ten_crop_array
from .light_batches import prepared_batches, probabilities
from .results import Prediction, Predictions, ranked_rows


def classify_light(engine, sources: list[str], top: int = 5, batch_size: int = INFERENCE_BATCH,
                   ten_crop: bool = False, progress: bool = False, skipped=()) -> Predictions:
    """One ``Prediction`` per source, in order (see the module docstring)."""
    card = engine.card
    transform = preprocess_ten_crop_array if ten_crop else preprocess_array
    results = Predictions([], skipped)
    bar = tqdm(total=len(sources), unit="img", file=sys.stderr,
               disable=not (progress or sys.stderr.isatty()))

    def prepare(index: int):
        return prepare_item(sources[index], transform, card.preprocess)
    with bar:
        for chunk in prepared_batches(len(sources), prepare, batch_size):
            good = [array for _, array, error, _ in chunk if error is None]
            ranked = iter(ranked_rows(probabilities(engine, good, ten_crop), card.labels, top)
                          if good else [])
            for index, _, error, notes in chunk:
                if error is None:
                    results.append(Prediction(sources[index], predictions=next(ranked), notes=notes))
                else:
                    results.append(Prediction(sources[index], error=error, notes=notes))
            bar.update(len(chunk))
    return results
