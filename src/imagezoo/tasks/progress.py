"""The fine-tuning progress table, in the spirit of CNTK's ProgressPrinter.

One line per epoch on stderr: the epoch, the average loss over every example seen so far, the
loss since the last line (this epoch), the metric (classification error) of this epoch, the
examples seen so far and the learning rate; then ``Finished evaluation: metric = 20.00% * 10``
for a test set. The same figures go, as JSON Lines, to a second stream when asked (``--json``)
and, written by the trainer, to ``history.jsonl``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class EpochRecord:
    epoch: int
    average_loss: float     # over every example seen since the start
    loss: float             # over this epoch's examples ("since last")
    metric: float           # classification error of this epoch, 0..1
    examples: int           # examples seen since the start
    learning_rate: float
    seconds: float


HEADER = (f"{'epoch':>6} {'average loss':>13} {'since last':>11} {'metric':>8} "
          f"{'examples':>9} {'learning rate':>14}")


class ProgressTable:
    def __init__(self, stream: TextIO | None, json_stream: TextIO | None = None,
                 epochs: int | None = None):
        self.stream = stream
        self.json_stream = json_stream
        self.epochs = epochs
        self.header_shown = False

    def epoch(self, record: EpochRecord) -> None:
        if self.stream is not None:
            if not self.header_shown:
                print(HEADER, file=self.stream)
                self.header_shown = True
            of = f"/{self.epochs}" if self.epochs else ""
            print(f"{str(record.epoch) + of:>6} {record.average_loss:>13.6f} {record.loss:>11.6f} "
                  f"{record.metric:>8.2%} {record.examples:>9} {record.learning_rate:>14.6g}",
                  file=self.stream, flush=True)
        self._json(epoch_event(record))

    def evaluation(self, name: str, error: float, count: int) -> None:
        if self.stream is not None:
            print(f"Finished evaluation: metric = {error:.2%} * {count}", file=self.stream, flush=True)
        self._json(evaluation_event(name, error, count))

    def _json(self, record: dict) -> None:
        if self.json_stream is not None:
            print(json.dumps(record), file=self.json_stream, flush=True)


def epoch_event(record: EpochRecord) -> dict:
    return {"event": "epoch", **asdict(record)}


def evaluation_event(name: str, error: float, count: int) -> dict:
    return {"event": "evaluation", "set": name, "metric": error, "count": count}


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
