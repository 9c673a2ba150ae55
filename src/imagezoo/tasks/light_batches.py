"""The PyTorch-free loop's two shared steps: inputs prepared by a pool of threads a little
ahead of the engine, and an engine's logits turned into class probabilities in NumPy.

``classify`` and ``evaluate`` take this path when the model's ONNX Runtime engine is cached
(``engine/light.py``); ``serve`` runs its batches through ``probabilities`` too.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

# How many batches the decoding threads may run ahead of the engine: enough to keep it fed,
# few enough that a folder of thousands of photos never piles up its decoded images.
BATCHES_AHEAD = 2

Prepared = tuple[int, Any, "str | None", list]   # index, array or None, error or None, notes


def prepared_batches(count: int, prepare: Callable[[int], tuple[Any, str | None, list]],
                     batch_size: int, threads: int | None = None) -> Iterator[list[Prepared]]:
    """``prepare(i)`` for i in 0..count-1, in order, one list of up to ``batch_size``
    (i, array, error, notes) per batch. The calls run in ``threads`` threads (one per core by
    default: Pillow releases the GIL while it decodes and resizes), at most
    ``BATCHES_AHEAD`` batches ahead of the consumer."""
    threads = max(1, min(count, threads or os.cpu_count() or 1))
    pool = ThreadPoolExecutor(threads)
    try:
        pending: deque = deque()
        submitted = 0
        for start in range(0, count, batch_size):
            while submitted < min(count, start + (1 + BATCHES_AHEAD) * batch_size):
                pending.append((submitted, pool.submit(prepare, submitted)))
                submitted += 1
            chunk = []
            for _ in range(min(batch_size, count - start)):
                index, future = pending.popleft()
                chunk.append((index, *future.result()))
            yield chunk
    finally:
        # An error, Ctrl-C or a consumer that stops early: the images not yet started are
        # dropped rather than decoded for nobody.
        pool.shutdown(wait=True, cancel_futures=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float32) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def probabilities(engine: Callable[[np.ndarray], np.ndarray], arrays: list[np.ndarray],
                  ten_crop: bool) -> np.ndarray:
    """N x C class probabilities of N preprocessed inputs (3 x H x W, or 10 x 3 x H x W with
    ``ten_crop``, whose crops' probabilities are averaged)."""
    batch = np.stack(arrays)
    if not ten_crop:
        return softmax(engine(batch))
    images, crops = batch.shape[:2]
    result = softmax(engine(batch.reshape(images * crops, *batch.shape[2:])))
    return result.reshape(images, crops, -1).mean(axis=1)
