"""The fine-tuning benchmark's runs (``bench_finetune.py``): ``imagezoo.finetune`` in this
process with its one-off passes timed, and the ``finetune`` command in one process or under
torchrun, its epochs read from ``--json`` as they arrive."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import imagezoo
from imagezoo.models.heads import head_of
from imagezoo.tasks import finetune as finetune_module

from harness import VENV_BIN, OtherLoad

if TYPE_CHECKING:
    from bench_finetune import Settings

MODEL = "efficientnet_lite0"
PROCESSES = 2
CORES = os.cpu_count() or 1


# ---------------------------------------------------------------------------- in process

# Trainer methods whose time is recorded in part 1 (each one-off, except the checkpoints).
TIMED_METHODS = {
    "_new_model": "set-up",          # load the base model, new head, freeze
    "_features": "one-off pass",     # cached path: the backbone over every image, once
    "_readable": "one-off pass",     # full path: decode every image once to drop bad ones
    "_save_checkpoint": "checkpoints",
}


@contextlib.contextmanager
def timed_trainer_methods(totals: dict[str, float]):
    """Add the wall time of each call of the Trainer methods above to ``totals``."""
    trainer = finetune_module.Trainer
    originals = {name: getattr(trainer, name) for name in TIMED_METHODS if hasattr(trainer, name)}

    def timed(name, method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                key = TIMED_METHODS[name]
                totals[key] = totals.get(key, 0.0) + time.perf_counter() - started
        return wrapper

    for name, method in originals.items():
        setattr(trainer, name, timed(name, method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(trainer, name, method)


@dataclass
class InProcessRun:
    path: str                        # "cached" or "full"
    wall: float                      # the whole finetune() call
    parts: dict[str, float]          # TIMED_METHODS' totals
    epochs: list[float]              # EpochRecord.seconds
    final_loss: float
    final_error: float
    examples: int                    # examples seen, as the last EpochRecord reports them
    head: tuple[torch.Tensor, torch.Tensor]
    other_share: float

    @property
    def one_off(self) -> float:
        return self.parts.get("one-off pass", float("nan"))

    @property
    def rest(self) -> float:
        """Everything that is neither an epoch nor the one-off pass: set-up, checkpoints, final save."""
        return self.wall - sum(self.epochs) - self.one_off


def run_in_process(path: str, train: Path, out: Path, settings: Settings) -> InProcessRun:
    other = OtherLoad()
    parts: dict[str, float] = {}
    with timed_trainer_methods(parts):
        started = time.perf_counter()
        result = imagezoo.finetune(train, out, model=MODEL, epochs=settings.epochs,
                                   batch_size=settings.batch_size, seed=settings.seed,
                                   cache_features=(path == "cached"), log_stream=None)
        wall = time.perf_counter() - started
    head = head_of(result.model)
    last = result.history[-1]
    return InProcessRun(path, wall, parts, [r.seconds for r in result.history], last.loss,
                        last.metric, last.examples,
                        (head.weight.detach().clone(), head.bias.detach().clone()),
                        other.share())


def warm_up_model() -> None:
    """One small untimed forward pass, so the first timed run does not pay the process's
    first-call costs (allocations, kernel choices) that the second would not."""
    model = imagezoo.load_model(MODEL)
    with torch.inference_mode():
        model.forward_features(torch.zeros(8, 3, 224, 224))


def head_difference(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


# ---------------------------------------------------------------------------- subprocesses

@dataclass
class CommandRun:
    path: str
    processes: int
    threads: int                          # intra-op threads of each process
    command: list[str]
    wall: float
    epochs: list[float] = field(default_factory=list)
    first_line_at: float = float("nan")   # seconds from start to epoch 1's JSON line
    last_line_at: float = float("nan")
    final_loss: float = float("nan")
    final_error: float = float("nan")
    examples: int = 0
    head: tuple[torch.Tensor, torch.Tensor] | None = None
    other_share: float = 0.0

    @property
    def before_first_epoch(self) -> float:
        """Start-up, imports, model load, process group and the one-off pass (the first JSON
        line comes after epoch 1 and its checkpoint; the checkpoint of a head is tiny)."""
        return self.first_line_at - self.epochs[0]

    @property
    def after_last_epoch(self) -> float:
        return self.wall - self.last_line_at


def threads_per_process(processes: int) -> int:
    """What imagezoo gives each process under torchrun (and torch's default for one)."""
    return max(1, CORES // processes)


def finetune_command(processes: int, train: Path, out: Path, path: str, settings: Settings) -> list[str]:
    arguments = ["finetune", "--train", str(train), "--out", str(out), "--model", MODEL,
                 "--epochs", str(settings.epochs), "--batch-size", str(settings.batch_size),
                 "--seed", str(settings.seed), "--json"]
    if path == "full":
        arguments.append("--no-feature-cache")
    if processes == 1:
        return [sys.executable, "-m", "imagezoo", *arguments]
    return [str(VENV_BIN / "torchrun"), f"--nproc_per_node={processes}", "--standalone",
            "-m", "imagezoo", *arguments]


def run_command(path: str, processes: int, threads: int, train: Path, out: Path,
                settings: Settings) -> CommandRun:
    """Run one command, reading its JSON lines as they come. ``OMP_NUM_THREADS`` sets the
    threads of a single process; under torchrun imagezoo sets each process's threads itself
    (to ``threads_per_process``), and the variable only keeps torchrun from warning."""
    command = finetune_command(processes, train, out, path, settings)
    run = CommandRun(path, processes, threads, command, wall=float("nan"))
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    other = OtherLoad()
    with tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True,
                                   env=environment)
        assert process.stdout is not None
        for line in process.stdout:
            arrived = time.perf_counter() - started
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "epoch":
                if not run.epochs:
                    run.first_line_at = arrived
                run.last_line_at = arrived
                run.epochs.append(event["seconds"])
                run.final_loss, run.final_error = event["loss"], event["metric"]
                run.examples = event["examples"]
        status = process.wait()
        run.wall = time.perf_counter() - started
        if status != 0 or len(run.epochs) != settings.epochs:
            errors.seek(0)
            raise RuntimeError(f"{shlex.join(command)} exited with {status} after "
                               f"{len(run.epochs)} epochs:\n{errors.read()[-3000:]}")
    run.other_share = other.share()
    head = head_of(imagezoo.load_model(out))
    run.head = (head.weight.detach().clone(), head.bias.detach().clone())
    return run


RunKey = tuple[str, int, int]        # path, processes, threads per process


def command_configurations() -> list[RunKey]:
    """Per path: one process with all cores (what a user gets), ``PROCESSES`` under torchrun,
    and one process with one thread (a control: is any gain from the processes or from
    running single-threaded?). Full path first, then the cached one in the reverse order."""
    full = [("full", 1, CORES), ("full", PROCESSES, threads_per_process(PROCESSES)), ("full", 1, 1)]
    cached = [("cached", *key[1:]) for key in reversed(full)]
    return list(dict.fromkeys(full + cached))   # one core: the control is the default run


def describe(key: RunKey) -> str:
    _, processes, threads = key
    return (f"{processes} process{'es' if processes > 1 else ''} x {threads} "
            f"thread{'s' if threads > 1 else ''}")
