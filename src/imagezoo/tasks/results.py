"""What classification answers, as plain data (no PyTorch): one ``Prediction`` per input."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import ImagezooError


class Ranked(NamedTuple):
    rank: int
    index: int
    label: str
    probability: float


@dataclass
class Prediction:
    """The result for one input: its top-k classes, or the error that stopped it."""

    input: str
    predictions: list[Ranked] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # what the decoder said about this input

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        record: dict = {"input": self.input}
        if self.error is not None:
            record["error"] = self.error
        else:
            record["predictions"] = [r._asdict() for r in self.predictions]
        if self.notes:
            record["warnings"] = self.notes
        return record


class Predictions(list):
    """``classify``'s answer: one ``Prediction`` per image in input order, and ``skipped``,
    the files of the folders walked that were not taken as images, with the reason."""

    def __init__(self, items=(), skipped=()):
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = list(skipped)


def ranked_rows(probabilities: np.ndarray, labels: list[str], k: int) -> list[list[Ranked]]:
    """Each row of an N x C probability matrix -> its ``k`` most likely classes, best first
    (ties in the order of their class index, as ``torch.topk`` on the CPU gives them)."""
    k = max(1, min(k, probabilities.shape[1]))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[Ranked(rank + 1, int(c), labels[int(c)], float(row[c])) for rank, c in enumerate(best)]
            for row, best in zip(probabilities, order)]


def capped_top(top: int, card) -> int:
    """How many classes a top-``top`` list can hold: ``top``, or every class of a model that
    has fewer (a 2-class model asked for its top 5 ranks both). The CLI says when it caps."""
    if top < 1:
        raise ImagezooError(f"top must be at least 1, not {top}")
    return min(top, card.num_classes)
