#!/usr/bin/env python
"""How fast does imagezoo classify on this machine, next to plain PyTorch and Pillow?

Two measurements, each run side by side in one process so both sides see the same machine:

1. Model only: imagezoo's module called the way ``classify`` calls it (under
   ``torch.inference_mode()``) against a plain eager loop over the same module under
   ``torch.no_grad()``, on the same random input, at batch 1 and batch 32.
2. End to end: a folder of generated 1600x1200 JPEGs through ``imagezoo.classify`` (decoding
   and resizing in its DataLoader workers) against a plain loop that decodes with Pillow,
   applies the same card preprocessing in the main process and runs the model in batches.

The two sides are timed in alternating rounds (and alternating order), so a slow spell on a
shared machine hits both rather than one. Figures come from each side's fastest round: other
load can only slow a round down, so the fastest is the best estimate of the machine's own
speed. On a shared machine that is not enough when another job keeps both cores busy, so
in the full run each row first waits briefly for a quiet moment and is measured once more
when other processes took more than a few percent of the CPU meanwhile (all waiting shares
one budget, so a machine that never goes quiet costs at most that much extra time). The
report says how much CPU other processes took, per row and overall, so a disturbed figure
can still be recognised.

    python benchmarks/bench_classify.py            # full run, rewrites benchmarks/RESULTS.md
    python benchmarks/bench_classify.py --quick    # smoke run: smaller batches, fewer images
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

import imagezoo
from imagezoo.data.batches import default_workers
from imagezoo.data.transforms import preprocess_image

# What every benchmark shares (this script's folder is on sys.path when it runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (BENCHMARKS, BUSY_SHARE, JPEG_QUALITY, PHOTO_SIZE, OtherLoad,  # noqa: E402
                     QuietWaiter, bench_arguments, iterations_for, log, machine_cpu,
                     make_photos, measure_quietly, other_load_fact, read_all, report_header,
                     time_alternating, versions, warm_up, write_report)

# Model name -> the ``weights`` argument of ``load_model``. Only efficientnet_lite0 ships
# weights; random ones run at exactly the same speed, which is all that is measured here.
MODELS: dict[str, str | None] = {"efficientnet_lite0": None, "resnet50": "random"}

DEFAULT_OUT = BENCHMARKS / "RESULTS.md"


@dataclass(frozen=True)
class Settings:
    """How much work each measurement does; ``--quick`` swaps in a much smaller set."""

    batch_sizes: tuple[int, ...] = (1, 32)
    warmup_seconds: float = 1.0     # per side and case, but always at least one call
    target_seconds: float = 6.0     # timed seconds wanted per side and case
    min_iterations: int = 3         # even when one call takes longer than the target
    max_iterations: int = 200
    image_count: int = 64
    e2e_batch: int = 32             # must be one of batch_sizes (for the e2e/model-only ratio)
    e2e_rounds: int = 3
    attempts: int = 2               # measurements per row when other processes disturb it
    quiet_wait_seconds: float = 20  # longest wait for a quiet moment before each attempt
    quiet_wait_budget: float = 90   # total waiting allowed over the whole run


FULL = Settings()
QUICK = Settings(batch_sizes=(1, 8), warmup_seconds=0.0, target_seconds=0.3, min_iterations=2,
                 max_iterations=10, image_count=16, e2e_batch=8, e2e_rounds=1,
                 attempts=1, quiet_wait_seconds=0, quiet_wait_budget=0)


@dataclass
class Timing:
    """Per-call durations of one side of a comparison."""

    seconds: list[float]
    items_per_call: int

    @property
    def rate(self) -> float:
        """Items per second of the fastest call (interference only ever adds time)."""
        return self.items_per_call / min(self.seconds)

    @property
    def spread(self) -> float:
        """How much slower the median call was than the fastest: a noise figure for the table."""
        return statistics.median(self.seconds) / min(self.seconds) - 1.0


@dataclass
class ModelOnlyRow:
    model: str
    batch: int
    imagezoo: Timing
    baseline: Timing
    other_share: float              # other processes' share of the CPU while this row ran


@dataclass
class EndToEndRow:
    model: str
    images: int
    batch: int
    workers: int
    imagezoo: Timing
    baseline: Timing
    imagezoo_model_only: float      # img/s of the same side's model-only run at this batch
    baseline_model_only: float
    top1_agreement: int             # images where both sides picked the same class
    other_share: float


# ---------------------------------------------------------------------------- model only

def imagezoo_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # The way imagezoo.classify runs the model.
    with torch.inference_mode():
        return model(x)


def baseline_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # What a plain PyTorch user would write.
    with torch.no_grad():
        return model(x)


def bench_model_only(name: str, model: nn.Module, batch: int, settings: Settings) -> ModelOnlyRow:
    other = OtherLoad()
    size = model.card.preprocess.input_size or 224
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    ours = functools.partial(imagezoo_forward, model, x)
    plain = functools.partial(baseline_forward, model, x)
    call_seconds = max(warm_up(ours, settings.warmup_seconds),
                       warm_up(plain, settings.warmup_seconds))
    rounds = iterations_for(call_seconds, settings)
    ours_times, plain_times = time_alternating(ours, plain, rounds)
    return ModelOnlyRow(name, batch, Timing(ours_times, batch), Timing(plain_times, batch),
                        other.share())


# ---------------------------------------------------------------------------- end to end

def imagezoo_end_to_end(model: nn.Module, sources: str | list[str], batch: int) -> list[int]:
    """imagezoo's own path: sources -> DataLoader workers decode/resize -> batched forward."""
    results = imagezoo.classify(model, sources, batch_size=batch)
    failed = [result.error for result in results if not result.ok]
    if failed:
        raise RuntimeError(f"imagezoo failed on {len(failed)} images, e.g. {failed[0]}")
    return [result.predictions[0].index for result in results]


def baseline_end_to_end(model: nn.Module, paths: list[Path], batch: int) -> list[int]:
    """Plain loop: Pillow decode + the card's preprocessing in this process, then forward.

    It does the same top-k work after the forward pass as ``classify`` so that both sides
    produce the same thing.
    """
    spec = model.card.preprocess
    top1: list[int] = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            tensors = []
            for path in paths[start:start + batch]:
                with Image.open(path) as image:
                    tensors.append(preprocess_image(image.convert("RGB"), spec))
            logits = model(torch.stack(tensors))
            _, classes = torch.softmax(logits.float(), dim=1).topk(5, dim=1)
            top1.extend(int(c) for c in classes[:, 0])
    return top1


def bench_end_to_end(name: str, model: nn.Module, folder: Path, paths: list[Path],
                     model_only: dict[tuple[str, int], ModelOnlyRow],
                     settings: Settings) -> EndToEndRow:
    other = OtherLoad()
    batch = settings.e2e_batch
    # A short untimed pass of each side: the first DataLoader start-up in a process and the
    # first decode carry one-off costs (the model is already warm from the model-only runs).
    warm_paths = paths[:4]
    imagezoo_end_to_end(model, [str(p) for p in warm_paths], batch)
    baseline_end_to_end(model, warm_paths, batch)

    predictions: dict[str, list[int]] = {}

    def ours() -> None:
        predictions["imagezoo"] = imagezoo_end_to_end(model, str(folder), batch)

    def plain() -> None:
        predictions["baseline"] = baseline_end_to_end(model, paths, batch)

    ours_times, plain_times = time_alternating(ours, plain, settings.e2e_rounds)
    agreement = sum(a == b for a, b in zip(predictions["imagezoo"], predictions["baseline"]))
    reference = model_only[(name, batch)]
    return EndToEndRow(
        name, len(paths), batch, default_workers(len(paths)),  # what classify picks
        Timing(ours_times, len(paths)), Timing(plain_times, len(paths)),
        reference.imagezoo.rate, reference.baseline.rate, agreement, other.share())


# ---------------------------------------------------------------------------- report

def machine_header(settings: Settings, quick: bool, photo_bytes: float, load_before: float,
                   other: OtherLoad, disturbed: list[str]) -> str:
    lines = report_header(
        "imagezoo classification benchmark", "bench_classify.py", [
            f"CPU: {machine_cpu()} (os.cpu_count), no GPU used",
            other_load_fact(load_before, other, ", counting any time spent waiting for them to "
                                                "stop; per row in the tables"),
            versions("torch", "PIL", "numpy",
                     torch_threads=f"{torch.get_num_threads()} intra-op threads"),
            f"End-to-end input: {settings.image_count} generated {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} "
            f"JPEGs (quality {JPEG_QUALITY}, mean {photo_bytes / 1024:.0f} KiB)",
        ], command_note=(" (quick smoke run: smaller batches and fewer images, figures not "
                         "representative)" if quick else ""),
        preface=[
            "The other benchmarks write beside it: [RESULTS-engine.md](RESULTS-engine.md) (the "
            "inference engines of `imagezoo.optimize` against eager PyTorch, ONNX Runtime and "
            "OpenVINO, the end-to-end rate and the speed targets; `bench_engine.py`), "
            "[RESULTS-features.md](RESULTS-features.md) (features on those engines; "
            "`bench_features.py`) and "
            "[RESULTS-finetune.md](RESULTS-finetune.md) (`bench_finetune.py`)."])
    if disturbed:
        lines += ["", f"**Warning:** other processes took over {BUSY_SHARE:.0%} of the CPU "
                      f"during every attempt at: {', '.join(disturbed)}. Those rows (see their "
                      f"\"other CPU\") are pessimistic and noisy; rerun on a quiet machine "
                      f"before drawing conclusions from them."]
    return "\n".join(lines)


def model_only_table(rows: list[ModelOnlyRow]) -> str:
    lines = [
        "## Model only (forward pass on a random input)",
        "",
        "imagezoo: the module under `torch.inference_mode()`, as `classify` runs it. "
        "Baseline: the same module under `torch.no_grad()`. Rates are from each side's "
        "fastest call; spread = median call / fastest call - 1, the worse of the two sides; "
        "other CPU = share of the machine other processes used while the row ran.",
        "",
        "| model | batch | imagezoo img/s | baseline img/s | imagezoo / baseline "
        "| calls per side | spread | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        spread = max(row.imagezoo.spread, row.baseline.spread)
        lines.append(f"| {row.model} | {row.batch} | {row.imagezoo.rate:.1f} | "
                     f"{row.baseline.rate:.1f} | {row.imagezoo.rate / row.baseline.rate:.2f} | "
                     f"{len(row.imagezoo.seconds)} | {spread:.0%} | {row.other_share:.0%} |")
    return "\n".join(lines)


def end_to_end_table(rows: list[EndToEndRow]) -> str:
    first = rows[0]
    lines = [
        "## End to end (decode + resize + crop + forward + top-k)",
        "",
        f"imagezoo: `imagezoo.classify(model, folder, batch_size={first.batch})`, decoding in "
        f"{first.workers} DataLoader worker process{'es' if first.workers != 1 else ''} "
        f"(its default here). Baseline: Pillow "
        f"`Image.open(...).convert('RGB')` and "
        f"`imagezoo.data.transforms.preprocess_image` in the main process, forward in batches "
        f"of {first.batch} under `torch.no_grad()`. "
        f"\"e2e / model-only\" is each side's end-to-end rate over its own model-only rate at "
        f"batch {first.batch}: 1.00 would mean decoding costs nothing. Rates, spread and "
        f"other CPU as above, over whole runs.",
        "",
        "| model | images | imagezoo img/s | baseline img/s | imagezoo / baseline "
        "| imagezoo e2e / model-only | baseline e2e / model-only | runs per side | spread "
        "| other CPU | same top-1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        spread = max(row.imagezoo.spread, row.baseline.spread)
        lines.append(
            f"| {row.model} | {row.images} | {row.imagezoo.rate:.1f} | {row.baseline.rate:.1f} | "
            f"{row.imagezoo.rate / row.baseline.rate:.2f} | "
            f"{row.imagezoo.rate / row.imagezoo_model_only:.2f} | "
            f"{row.baseline.rate / row.baseline_model_only:.2f} | "
            f"{len(row.imagezoo.seconds)} | {spread:.0%} | {row.other_share:.0%} | "
            f"{row.top1_agreement}/{row.images} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return bench_arguments(__doc__, "batch 1 and 8, 16 images, few iterations", DEFAULT_OUT, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    # Say it explicitly rather than rely on torch's default, which can differ by build.
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    other = OtherLoad()

    waiter = QuietWaiter(settings)
    models = {name: imagezoo.load_model(name, weights=weights) for name, weights in MODELS.items()}

    model_only: dict[tuple[str, int], ModelOnlyRow] = {}
    for name, model in models.items():
        for batch in settings.batch_sizes:
            log(f"model only: {name} batch {batch}")
            model_only[(name, batch)] = measure_quietly(
                functools.partial(bench_model_only, name, model, batch, settings),
                settings.attempts, waiter)

    end_to_end: list[EndToEndRow] = []
    with tempfile.TemporaryDirectory(prefix="imagezoo-bench-") as temp:
        folder = Path(temp)
        log(f"writing {settings.image_count} JPEGs to {folder}")
        paths = make_photos(folder, settings.image_count)
        photo_bytes = statistics.mean(path.stat().st_size for path in paths)
        read_all(paths)
        for name, model in models.items():
            log(f"end to end: {name}")
            end_to_end.append(measure_quietly(functools.partial(
                bench_end_to_end, name, model, folder, paths, model_only, settings),
                settings.attempts, waiter))

    wall = time.perf_counter() - other.started
    disturbed = [f"{row.model} batch {row.batch} (model only)" for row in model_only.values()
                 if row.other_share > BUSY_SHARE]
    disturbed += [f"{row.model} (end to end)" for row in end_to_end if row.other_share > BUSY_SHARE]
    report = "\n\n".join([
        machine_header(settings, args.quick, photo_bytes, load_before, other, disturbed),
        model_only_table(list(model_only.values())),
        end_to_end_table(end_to_end),
        f"Total benchmark time: {wall:.0f} s.",
    ]) + "\n"
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
