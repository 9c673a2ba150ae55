#!/usr/bin/env python
"""How long does fine-tuning take on this machine: cached features or a forward pass every
epoch, one process or two?

Two measurements on scikit-learn's digits (``imagezoo.demo.write_digits``) with the real
pretrained default model, ``efficientnet_lite0``, its backbone frozen and a new 10-class head:

1. In this process, ``imagezoo.finetune`` twice with the same settings and seed:
   ``cache_features=True`` (the backbone's pooled features are computed once, then every epoch
   trains the head on them) and ``cache_features=False`` (the whole network runs over every
   image every epoch, "the CNTK way"). The trainer's one-off passes are timed by wrapping its
   methods (nothing in imagezoo is changed); the epochs' seconds come from ``result.history``.
   Both runs must end with the same head, up to float rounding.
2. The same training as whole commands in subprocesses: ``python -m imagezoo finetune`` (one
   process, all cores) against ``torchrun --nproc_per_node=2 --standalone -m imagezoo
   finetune`` (two processes under DistributedDataParallel, each given its share of the
   cores), on both paths, with a control: one process with one thread. Per-epoch seconds
   come from ``--json`` on standard output, whose lines are timestamped as they arrive, which
   also gives the time before the first epoch (start-up, model load and the one-off pass) and
   after the last one (final save, shutdown).

Each run is done once (fine-tuning is too slow here to repeat it), so the report says how much
CPU other processes took during every row: a row run while the machine was busy is slower and
is not comparable with a quiet one.

    python benchmarks/bench_finetune.py          # full run, rewrites benchmarks/RESULTS-finetune.md
    python benchmarks/bench_finetune.py --quick    # smoke run: 30 images, 2 epochs
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import imagezoo
from imagezoo.demo import write_digits
from imagezoo.models.heads import head_of
from imagezoo.tasks import finetune as finetune_module

# The machine description and the other-load meter are the classification benchmark's, so
# both reports describe the machine the same way. (This script's folder is on sys.path when
# it is run as a script.)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import (BUSY_SHARE, OtherLoad, bench_arguments, cpu_model,  # noqa: E402
                             git_revision, log)

MODEL = "efficientnet_lite0"
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS-finetune.md"
VENV_BIN = Path(sys.executable).parent
PROCESSES = 2
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """How much work each run does; ``--quick`` swaps in a much smaller set."""

    per_class: int = 20             # training images per digit (10 digits)
    epochs: int = 3
    batch_size: int = 32
    seed: int = 0


FULL = Settings()
QUICK = Settings(per_class=3, epochs=2)


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


def warm_up() -> None:
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


# ---------------------------------------------------------------------------- report

def seconds(value: float) -> str:
    if value < 0.1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def epoch_list(values: list[float]) -> str:
    """Every epoch in seconds; short ones in milliseconds (``EpochRecord.seconds`` has 4 decimals)."""
    if max(values) < 0.1:
        return ", ".join(f"{v * 1000:.1f}" for v in values) + " ms"
    return ", ".join(f"{v:.2f}" if v < 10 else f"{v:.1f}" for v in values) + " s"


def machine_header(settings: Settings, quick: bool, images: int, load_before: float,
                   other: OtherLoad) -> str:
    command = "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    lines = [
        "# imagezoo fine-tuning benchmark",
        "",
        "Written by `benchmarks/bench_finetune.py`; rerun it to refresh (the file is overwritten).",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Command: `{command}`" + (" (quick smoke run: few images and epochs, figures not "
                                     "representative)" if quick else ""),
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores (os.cpu_count), no GPU used",
        f"- Other load: 1-minute load average {load_before:.2f} before the run and "
        f"{os.getloadavg()[0]:.2f} after; other processes used {other.cpu_seconds():.0f} "
        f"CPU-s during it ({other.share():.0%} of the machine; per row in the tables)",
        f"- Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads in this process), "
        f"imagezoo {imagezoo.__version__} at {git_revision()}",
        f"- Training: `{MODEL}` (bundled ImageNet weights), backbone frozen, new 10-class head, "
        f"SGD lr 0.01 momentum 0.9, batch {settings.batch_size}, seed {settings.seed}, "
        f"{settings.epochs} epochs, no augmentation; {images} training images "
        f"({settings.per_class} per digit, 64x64 PNGs from scikit-learn's digits, resized to "
        f"256 and cropped to 224 by the model's card); DataLoader workers: imagezoo's default "
        f"(per process)",
    ]
    if other.share() > BUSY_SHARE:
        lines += ["", f"**Warning:** other processes used {other.share():.0%} of the CPU "
                      f"during this run. Every run here is done once, so rows with a high "
                      f"\"other CPU\" figure are pessimistic and noisy, and ratios between rows "
                      f"run under different load are unreliable; rerun on a quiet machine before "
                      f"drawing conclusions from them. A process whose threads must all meet at "
                      f"every operator is hit harder by other load than single-threaded "
                      f"processes are; the 1-thread control rows show how much."]
    return "\n".join(lines)


def in_process_tables(cached: InProcessRun, full: InProcessRun, settings: Settings) -> str:
    rows = []
    for run, one_off in ((cached, "backbone over every image"), (full, "decode every image")):
        rows.append(
            f"| {run.path} | {seconds(run.one_off)} ({one_off}) | {seconds(min(run.epochs))} | "
            f"{seconds(statistics.mean(run.epochs))} | {epoch_list(run.epochs)} | "
            f"{seconds(run.rest)} | {seconds(run.wall)} | {run.final_loss:.4f} | "
            f"{run.final_error:.1%} | {run.examples} | {run.other_share:.0%} |")
    fastest_ratio = min(full.epochs) / min(cached.epochs)
    mean_ratio = statistics.mean(full.epochs) / statistics.mean(cached.epochs)
    saved_per_epoch = statistics.mean(full.epochs) - statistics.mean(cached.epochs)
    feature_pass_in_epochs = cached.one_off / statistics.mean(full.epochs)
    difference = head_difference(cached.head, full.head)
    return "\n".join([
        f"## 1. Cached features against a full forward pass every epoch (one process, "
        f"{settings.epochs} epochs)",
        "",
        f"`imagezoo.finetune(train, out, model=\"{MODEL}\", epochs={settings.epochs}, "
        f"cache_features=True | False)` in this process ({torch.get_num_threads()} threads), "
        f"cached first. One-off pass: the trainer's `_features` (cached) or `_readable` (full) "
        f"call, timed by wrapping it. Per epoch: `EpochRecord.seconds` from `result.history`. "
        f"Rest: set-up (model load, new head), checkpoints after every epoch and the final "
        f"save = total - epochs - one-off pass. Total: the whole `finetune` call, so the "
        f"cached path's total includes its feature pass.",
        "",
        "| path | one-off pass | per epoch, fastest | per epoch, mean | every epoch | rest "
        "| total | last epoch loss | last epoch error | examples seen | other CPU |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "| comparison | value |",
        "|---|---:|",
        f"| per-epoch time, full / cached (fastest epochs) | {fastest_ratio:,.0f}x |",
        f"| per-epoch time, full / cached (mean epochs) | {mean_ratio:,.0f}x |",
        f"| cached path's feature pass, in full-path epochs | {feature_pass_in_epochs:.2f} |",
        f"| time saved per epoch by the cache | {seconds(saved_per_epoch)} |",
        f"| total for {settings.epochs} epochs, full / cached | {full.wall / cached.wall:.2f}x |",
        f"| final head weights and bias, max abs difference (cached vs full) | {difference:.2e} |",
    ])


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


def command_tables(runs: dict[RunKey, CommandRun], settings: Settings) -> str:
    rows = []
    for (path, processes, threads), run in runs.items():
        rows.append(
            f"| {path} | {processes} | {threads} | {seconds(run.wall)} | "
            f"{seconds(run.before_first_epoch)} | {seconds(min(run.epochs))} | "
            f"{seconds(statistics.mean(run.epochs))} | {epoch_list(run.epochs)} | "
            f"{seconds(run.after_last_epoch)} | {run.final_loss:.4f} | {run.final_error:.1%} | "
            f"{run.examples:g} | {run.other_share:.0%} |")
    many = threads_per_process(PROCESSES)
    columns = [(1, CORES), (1, 1), (PROCESSES, many)]
    columns = list(dict.fromkeys(columns))
    baseline, distributed = (1, CORES), (PROCESSES, many)

    def run_of(path: str, column: tuple[int, int]) -> CommandRun:
        return runs[(path, *column)]

    def extra_start(column: tuple[int, int]) -> float:
        # Both commands start the same way; before the first epoch the cached one computes
        # every image's features where the full one only decodes every image.
        return run_of("cached", column).before_first_epoch - run_of("full", column).before_first_epoch

    measures = [
        ("full path: wall time of the command", lambda c: run_of("full", c).wall),
        ("full path: per epoch, fastest", lambda c: min(run_of("full", c).epochs)),
        ("full path: per epoch, mean", lambda c: statistics.mean(run_of("full", c).epochs)),
        ("cached path: wall time of the command", lambda c: run_of("cached", c).wall),
        ("cached path: time before the first epoch",
         lambda c: run_of("cached", c).before_first_epoch),
        ("cached path: feature pass - decode check (estimate, see below)", extra_start),
        ("cached path: per epoch, mean", lambda c: statistics.mean(run_of("cached", c).epochs)),
    ]
    header_columns = " | ".join(describe(("", *c)) for c in columns)
    ratio_names = [f"{describe(('', *distributed))} / {describe(('', *c))}"
                   for c in columns if c != distributed]
    ratio_rows = []
    for name, measure in measures:
        values = {c: measure(c) for c in columns}
        ratios = [f"{values[distributed] / values[c]:.2f}" for c in columns if c != distributed]
        ratio_rows.append(f"| {name} | " + " | ".join(seconds(values[c]) for c in columns)
                          + " | " + " | ".join(ratios) + " |")
    agreement = [f"| {path} | {describe(key)} | "
                 f"{head_difference(runs[(path, *baseline)].head, run.head):.2e} |"
                 for key, run in runs.items() for path in [key[0]] if key[1:] != baseline]
    example_one = shlex.join(["python", *finetune_command(1, Path("TRAIN"), Path("OUT"), "full",
                                                          settings)[1:]])
    example_two = shlex.join(["torchrun", *finetune_command(PROCESSES, Path("TRAIN"), Path("OUT"),
                                                            "full", settings)[1:]])
    return "\n".join([
        f"## 2. One process against {PROCESSES} (whole commands)",
        "",
        f"`{example_one}` against `{example_two}`; the cached path drops "
        f"`--no-feature-cache`. Under torchrun each process takes every {PROCESSES}nd example "
        f"of each global batch of {settings.batch_size}, and imagezoo sets its intra-op threads "
        f"to cores / {PROCESSES} = {many}. One process uses all {CORES} cores by default; the "
        f"\"1 x 1 thread\" runs (`OMP_NUM_THREADS=1`) are a control that separates the effect "
        f"of the processes from that of running single-threaded. Each command is run once, in "
        f"the order of the table. Wall: the whole command, from launch to exit (interpreter "
        f"start, imports, model load, process group, training, final save). Before the first "
        f"epoch: the arrival of epoch 1's `--json` line minus epoch 1's seconds. After the last "
        f"epoch: the final save and shutdown. Loss, error and examples are as the command "
        f"reports them.",
        "",
        "| path | processes | threads each | wall | before first epoch | per epoch, fastest "
        "| per epoch, mean | every epoch | after last epoch | last epoch loss "
        "| last epoch error | examples seen | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"| measure | {header_columns} | " + " | ".join(ratio_names) + " |",
        "|---|" + "---:|" * (len(columns) + len(ratio_names)),
        *ratio_rows,
        "",
        f"A ratio below 1 means {PROCESSES} processes were faster. The cached path's feature pass "
        f"is estimated as the difference of the two paths' time before the first epoch with the "
        f"same processes and threads: that cancels the start-up they share, but subtracts the "
        f"full path's decode-only check of every image (part 1 times both directly).",
        "",
        f"Final head, max abs difference from the same path's {describe(('', *baseline))} run "
        f"(read back from the model folders the commands wrote):",
        "",
        "| path | run | max abs difference |",
        "|---|---|---:|",
        *agreement,
        *reported_figures_note(run_of("full", baseline), run_of("full", distributed),
                               run_of("cached", baseline), run_of("cached", distributed), settings),
    ])


def reported_figures_note(full_one: CommandRun, full_many: CommandRun, cached_one: CommandRun,
                          cached_many: CommandRun, settings: Settings) -> list[str]:
    """Point out when the commands' own per-epoch figures disagree between 1 and N processes
    although they trained the same head (the tables above show them as reported)."""
    lines = []
    for path, a, b in (("full", full_one, full_many), ("cached", cached_one, cached_many)):
        if a.examples == b.examples and abs(a.final_loss - b.final_loss) <= 1e-4 * abs(a.final_loss):
            continue
        lines.append(
            f"- {path} path: 1 process reports loss {a.final_loss:.4f}, error "
            f"{a.final_error:.1%}, {a.examples:g} examples after {settings.epochs} epochs; "
            f"{PROCESSES} processes report loss {b.final_loss:.4f} "
            f"({b.final_loss / a.final_loss:.2f}x), error {b.final_error:.1%}, {b.examples:g} "
            f"examples ({b.examples / a.examples:.2f}x), for a head that matches to "
            f"{head_difference(a.head, b.head):.1e}.")
    if not lines:
        return []
    return ["", f"**The {PROCESSES}-process commands report different training figures for the "
                f"same training:**", "", *lines]


# ---------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return bench_arguments(__doc__, f"{QUICK.per_class * 10} images, {QUICK.epochs} epochs", DEFAULT_OUT, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    # Say it explicitly rather than rely on torch's default, which can differ by build; the
    # one-process command gets the same from torch's default on this machine.
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    other = OtherLoad()

    with tempfile.TemporaryDirectory(prefix="imagezoo-bench-finetune-") as temp:
        folder = Path(temp)
        train, _ = write_digits(folder / "digits", train_per_class=settings.per_class,
                                test_per_class=0, seed=settings.seed)
        images = settings.per_class * 10
        log(f"wrote {images} training images to {train.parent}")

        warm_up()
        in_process: dict[str, InProcessRun] = {}
        for path in ("cached", "full"):
            log(f"in process: {path} path, {settings.epochs} epochs")
            in_process[path] = run_in_process(path, train, folder / f"api-{path}", settings)

        commands: dict[RunKey, CommandRun] = {}
        for key in command_configurations():
            path, processes, threads = key
            log(f"command: {path} path, {describe(key)}")
            commands[key] = run_command(path, processes, threads, train,
                                        folder / f"cli-{path}-{processes}x{threads}", settings)

    wall = time.perf_counter() - other.started
    report = "\n\n".join([
        machine_header(settings, args.quick, images, load_before, other),
        in_process_tables(in_process["cached"], in_process["full"], settings),
        command_tables(commands, settings),
        f"Total benchmark time: {wall:.0f} s.",
    ]) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
