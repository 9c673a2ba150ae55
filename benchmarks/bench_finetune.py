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

The runs themselves are in finetune_runs.py; this script has the settings and the report.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from imagezoo.demo import write_digits

# What every benchmark shares (this script's folder is on sys.path when it runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_runs import (CORES, MODEL, PROCESSES, CommandRun, InProcessRun,  # noqa: E402
                           RunKey, command_configurations, describe, finetune_command,
                           head_difference, run_command, run_in_process, threads_per_process,
                           warm_up_model)
from harness import (BENCHMARKS, BUSY_SHARE, OtherLoad, bench_arguments, log,  # noqa: E402
                     machine_cpu, other_load_fact, report_header, versions, write_report)

DEFAULT_OUT = BENCHMARKS / "RESULTS-finetune.md"


@dataclass(frozen=True)
class Settings:
    """How much work each run does; ``--quick`` swaps in a much smaller set."""

    per_class: int = 20             # training images per digit (10 digits)
    epochs: int = 3
    batch_size: int = 32
    seed: int = 0


FULL = Settings()
QUICK = Settings(per_class=3, epochs=2)


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
    lines = report_header("imagezoo fine-tuning benchmark", "bench_finetune.py", [
        f"CPU: {machine_cpu()} (os.cpu_count), no GPU used",
        other_load_fact(load_before, other, "; per row in the tables"),
        versions("torch", torch_threads=f"{torch.get_num_threads()} intra-op threads in this "
                                        f"process"),
        f"Training: `{MODEL}` (bundled ImageNet weights), backbone frozen, new 10-class head, "
        f"SGD lr 0.01 momentum 0.9, batch {settings.batch_size}, seed {settings.seed}, "
        f"{settings.epochs} epochs, no augmentation; {images} training images "
        f"({settings.per_class} per digit, 64x64 PNGs from scikit-learn's digits, resized to "
        f"256 and cropped to 224 by the model's card); DataLoader workers: imagezoo's default "
        f"(per process)",
    ], command_note=(" (quick smoke run: few images and epochs, figures not representative)"
                     if quick else ""))
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

        warm_up_model()
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
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
