"""Evaluation without PyTorch: ``evaluate``'s figures from a cached ONNX Runtime engine
(``engine/light.py``), Pillow and NumPy, when ``imagezoo evaluate`` finds the model's checked
engine. The set, the tally and the report are ``evaluation.py``'s, shared with the PyTorch
loop; decoding and preprocessing are ``classify_light``'s (``data/items.prepare_item``,
``transforms.preprocess_array``), so both paths give the same accuracies.
"""
from __future__ import annotations

import sys

from PIL import Image
from tqdm import tqdm

from ..choices import INFERENCE_BATCH
from ..data.decode_guard import preprocess_reason
from ..data.items import prepare_item
from ..data.transforms import preprocess_array, preprocess_ten_crop_array
from .evaluation import Evaluation, Tally, labelled_inputs, top_indices
from .light_batches import prepared_batches, probabilities


def evaluate_light(engine, dataset, top: int = 5, ten_crop: bool = False,
                   batch_size: int = INFERENCE_BATCH, progress: bool = False,
                   classes_file=None) -> Evaluation:
    """``tasks.evaluate.evaluate`` on ``engine`` (a ``LightEngine``): same arguments and result."""
    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")
    card = engine.card
    labelled = labelled_inputs(dataset, card, classes_file)
    transform = preprocess_ten_crop_array if ten_crop else preprocess_array
    k = min(top, card.num_classes)
    tally = Tally(card.labels, k)

    def prepare(index: int):
        if labelled.paths is not None:
            return prepare_item(labelled.paths[index], transform, card.preprocess)
        try:
            return transform(Image.fromarray(labelled.images[index]), card.preprocess), None, []
        except Exception as error:  # noqa: BLE001 - one input's problem, never the run's
            return None, f"{labelled.names[index]}: {preprocess_reason(error)}", []
    # CIFAR-10's 32x32 arrays cost less to preprocess than a thread hand-off.
    threads = 1 if labelled.images is not None else None
    bar = tqdm(total=len(labelled), unit="img", desc="evaluate", file=sys.stderr,
               disable=not (progress or sys.stderr.isatty()))
    with bar:
        for chunk in prepared_batches(len(labelled), prepare, batch_size, threads):
            good = [(index, array) for index, array, error, _ in chunk if error is None]
            for index, _, error, _ in chunk:
                if error is not None:
                    tally.fail(labelled.names[index], error)
            if good:
                ranked = top_indices(probabilities(engine, [a for _, a in good], ten_crop), k)
                for (index, _), best in zip(good, ranked):
                    tally.add(labelled.labels[index], best)
            bar.update(len(chunk))
    return tally.result()
