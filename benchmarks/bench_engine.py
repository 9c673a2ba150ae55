#!/usr/bin/env python
"""How fast are imagezoo's inference engines, next to PyTorch, ONNX Runtime and OpenVINO run
directly, and do the fast precisions keep the answers?

Everything is measured in one process, side by side, so every contender sees the same machine:

1. Model only, for each model and batch size: every engine ``imagezoo.optimize`` builds
   (``backend`` torch, torch-fast, onnxruntime, openvino and auto, each at ``precision`` exact
   and fast; the precision actually used is recorded, since the fast guard may fall back to
   float32) against the peers, run directly rather than through imagezoo: eager PyTorch under
   ``torch.no_grad()``; ONNX Runtime on the same ONNX file with default session options, in
   float32 and statically quantised to int8 (QDQ, per-channel, calibrated on
   ``imagezoo.engine.sample_inputs``); OpenVINO compiling that file for the CPU with
   ``INFERENCE_PRECISION_HINT`` f32 and bf16 and its default performance hints. All
   contenders are called in rounds (each round in a new random order) after a warm-up, and
   each one's figure comes from its fastest call: other load can only slow a call down. A
   contender whose calls are short is called in a burst of back-to-back calls each round, so
   that most of them do not start while the previous runtime's idle threads still spin.
   Other processes' share of the CPU is recorded per case. The ResNets' random weights get
   batch-norm statistics from the sample photos first (``settle_batch_norm``), so their
   activations have a trained network's scale.
2. Accuracy of the fast precisions on real photos with ``efficientnet_lite0``'s real weights:
   the card's four sample photos and more photos from ``skimage.data``, each also mirrored;
   for every engine, top-1 agreement with eager float32, the largest change of the float32
   top-1's probability, and how many inputs are "ties" (float32 top-2 within 0.05).
3. End to end: a folder of generated 1600x1200 JPEGs through the ``imagezoo classify``
   command (a subprocess, ``--backend auto``, exact and fast), with ``$IMAGEZOO_CACHE`` in a
   temporary folder warmed by one untimed run so the tuning is not timed, against the
   model-only rate of the engine that run chose.

The report ends with the targets (exact auto / best float32 peer >= 1.1, fast auto / best
peer >= 1.2, fast top-1 unchanged on every real photo, end to end >= 80% of model-only),
computed from the measured figures.

    python benchmarks/bench_engine.py            # full run, rewrites benchmarks/RESULTS-engine.md
    python benchmarks/bench_engine.py --quick    # smoke run: batch 1 and 8, one model

The contenders are built in engine_contenders.py and the report is written by engine_report.py.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import imagezoo
from imagezoo.data.batches import INFERENCE_BATCH
from imagezoo.engine import PRECISIONS, FAST_PROBABILITY_SHIFT, engine_cache, is_tuned, optimize
from imagezoo.engine.backends import onnx_file

# What every benchmark shares (this script's folder is on sys.path when it runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_contenders import (Case, imagezoo_contenders, peer_contenders,  # noqa: E402
                               settle_batch_norm)
from engine_report import ACCURACY_MODEL, E2E_MODEL, full_report  # noqa: E402
from harness import (BENCHMARKS, VENV_BIN, OtherLoad, bench_arguments, log,  # noqa: E402
                     make_photos, quiet_moment, read_all, warm_up, write_report)

DEFAULT_OUT = BENCHMARKS / "RESULTS-engine.md"


@dataclass(frozen=True)
class Settings:
    """How much work each measurement does; ``--quick`` swaps in a much smaller set."""

    # Model name -> the ``weights`` argument of ``load_model``: speed does not depend on the
    # weights' values, so the ResNets run with random ones.
    models: tuple[tuple[str, str | None], ...] = (
        ("resnet50", "random"), ("resnet152", "random"), ("efficientnet_lite0", None))
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup_seconds: float = 0.5     # per contender and case, but always at least one call
    target_seconds: float = 1.5     # timed seconds wanted per contender and case
    min_rounds: int = 3
    slow_min_rounds: int = 2        # when a call takes longer than slow_call_seconds
    slow_call_seconds: float = 1.5
    max_rounds: int = 25
    # A call right after another runtime finds that runtime's idle threads still spinning
    # (OpenMP, ONNX Runtime and TBB spin a while before they sleep). Measured here with
    # resnet50 at batch 1: eager PyTorch 30 ms after itself, 59 ms right after ONNX Runtime;
    # OpenVINO 18 ms after itself, 33 ms after ONNX Runtime. So a contender whose call takes
    # less than burst_below_seconds is called in a burst of back-to-back calls lasting about
    # burst_seconds each round (2 to 50 calls), and the order of the contenders is shuffled
    # every round. The fastest call counts, i.e. the engine in steady use, as when a folder
    # of images is classified.
    burst_seconds: float = 0.1
    burst_below_seconds: float = 1.0
    quiet_wait_seconds: float = 8   # longest wait for a quiet moment before timing a case
    image_count: int = 64
    e2e_batch: int = 8              # the batch size `imagezoo classify` runs at (its default)
    model_only_batch: int = 32      # the model-only figure e2e is compared with (in batch_sizes)
    e2e_runs: int = 2               # timed runs per precision


FULL = Settings()
QUICK = Settings(models=(("efficientnet_lite0", None),),
                 batch_sizes=(1, 8), warmup_seconds=0.0, target_seconds=0.3, min_rounds=2,
                 max_rounds=6, quiet_wait_seconds=0, image_count=16, e2e_batch=8, model_only_batch=8,
                 e2e_runs=1)


# ---------------------------------------------------------------------------- timing

def time_case(case: Case, settings: Settings) -> None:
    """Warm every contender up, then call each (in a burst, if its calls are short) once per
    round, the contenders in a new random order every round."""
    batch = case.batch
    x = torch.randn(batch, 3, case.input_size, case.input_size, generator=torch.Generator().manual_seed(0))
    timed = [c for c in case.contenders if c.call is not None and c.same_as is None]
    calls = {c.name: (lambda c=c: c.call(x)) for c in timed}
    burst_seconds = []
    for contender in timed:
        seconds = warm_up(calls[contender.name], settings.warmup_seconds)
        if seconds < settings.burst_below_seconds:
            count = min(50, max(2, math.ceil(settings.burst_seconds / max(seconds, 1e-6))))
        else:
            count = 1
        case.bursts[contender.name] = count
        burst_seconds.append(seconds * count)
    typical = statistics.mean(burst_seconds)
    floor = settings.slow_min_rounds if typical > settings.slow_call_seconds else settings.min_rounds
    case.rounds = max(floor, min(settings.max_rounds, math.ceil(settings.target_seconds / typical)))
    quiet_moment(settings.quiet_wait_seconds, 2.0)
    other = OtherLoad()
    shuffler = random.Random(0)
    for _ in range(case.rounds):
        order = list(timed)
        shuffler.shuffle(order)
        for contender in order:
            for _ in range(case.bursts[contender.name]):
                started = time.perf_counter()
                calls[contender.name]()
                contender.seconds.append(time.perf_counter() - started)
    case.other_share = other.share()


def bench_case(name: str, model, batch: int, cache: Path, work: Path, settings: Settings,
               accuracy: dict | None) -> Case:
    log(f"model only: {name} batch {batch}")
    # auto times the backends while it builds, so it too should see a quiet machine
    quiet_moment(settings.quiet_wait_seconds, 2.0)
    build_load = OtherLoad()
    started = time.perf_counter()
    path = onnx_file(model, engine_cache(model, cache))   # exported once per model, then cached
    export_seconds = time.perf_counter() - started
    engines, auto_notes = imagezoo_contenders(model, batch, cache)
    peer_folder = work / f"{name}-peers"
    peer_folder.mkdir(parents=True, exist_ok=True)
    case = Case(name, batch, engines + peer_contenders(model, path, peer_folder),
                input_size=model.card.preprocess.input_size or 224,
                export_seconds=export_seconds, auto_notes=auto_notes)
    case.build_share = build_load.share()
    log(f"  timing {sum(c.call is not None and c.same_as is None for c in case.contenders)} "
        f"contenders")
    time_case(case, settings)
    if accuracy is not None:
        log("  accuracy on real photos")
        accuracy.update(measure_accuracy(model, case))
    for contender in case.contenders:   # keep the figures, free the sessions
        contender.call = None
    gc.collect()
    return case


# ---------------------------------------------------------------------------- accuracy

def real_photos(card) -> list[tuple[str, torch.Tensor]]:
    """(name, preprocessed 3xHxW) for the card's sample photos and photos from skimage.data
    (grey ones as RGB), each followed by its mirror image."""
    from importlib import resources

    import skimage.data
    photos: list[tuple[str, object]] = []
    for file in ("cat.png", "coffee.jpg", "astronaut.jpg", "rocket.jpg"):
        with resources.as_file(resources.files("imagezoo.resources").joinpath(file)) as path:
            photos.append((f"{file} (calibration)", imagezoo.preprocess(path, card)[0]))
    # chelsea is cat.png byte for byte, so it is left out; coffee, astronaut and rocket are
    # the lossless originals of the bundled JPEGs.
    loaders = {
        "skimage coffee": skimage.data.coffee, "skimage astronaut": skimage.data.astronaut,
        "skimage rocket": skimage.data.rocket, "camera": skimage.data.camera,
        "immunohistochemistry": skimage.data.immunohistochemistry,
        "hubble_deep_field": skimage.data.hubble_deep_field,
        "motorcycle_left": lambda: skimage.data.stereo_motorcycle()[0],
        "motorcycle_right": lambda: skimage.data.stereo_motorcycle()[1],
        "retina": skimage.data.retina, "coins": skimage.data.coins, "moon": skimage.data.moon,
        "clock": skimage.data.clock, "brick": skimage.data.brick, "grass": skimage.data.grass,
        "gravel": skimage.data.gravel, "cell": skimage.data.cell, "page": skimage.data.page,
    }
    for name, load in loaders.items():
        try:
            array = np.asarray(load())
        except Exception as error:   # some skimage images need a download; skip those
            log(f"  skipping skimage {name}: {error}")
            continue
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        photos.append((name, imagezoo.preprocess(np.ascontiguousarray(array[..., :3]), card)[0]))
    inputs = []
    for name, tensor in photos:
        inputs.append((name, tensor))
        inputs.append((f"{name}, mirrored", torch.flip(tensor, dims=[2])))
    return inputs


@dataclass
class AccuracyRow:
    contender: str
    numerics: str
    agree: int = 0
    changed_decided: int = 0      # top-1 changed where float32's top-2 are 0.05 or more apart
    changed_ties: int = 0
    max_shift: float = 0.0        # largest change of float32's top-1 probability
    max_shift_input: str = ""
    max_logit_diff: float = 0.0
    per_input: list[tuple[bool, float, int]] = field(default_factory=list)


def measure_accuracy(model, case: Case) -> dict:
    """Every contender against eager float32 on real photos, one image per call."""
    inputs = real_photos(model.card)
    labels = model.card.labels
    reference = case.eager
    exact = []
    for _, tensor in inputs:
        logits = reference.logits(tensor.unsqueeze(0))[0]
        exact.append((logits, torch.softmax(logits, 0)))
    photo_rows = []
    for (name, _), (_, probs) in zip(inputs, exact):
        top2 = probs.topk(2)
        margin = float(top2.values[0] - top2.values[1])
        photo_rows.append({"input": name, "top1": labels[int(top2.indices[0])],
                           "p": float(top2.values[0]), "second": labels[int(top2.indices[1])],
                           "margin": margin, "tie": margin < FAST_PROBABILITY_SHIFT})
    rows = []
    for contender in case.contenders:
        if contender is reference or contender.call is None or contender.same_as:
            continue
        row = AccuracyRow(contender.name, contender.numerics)
        for (name, tensor), (exact_logits, probs), photo in zip(inputs, exact, photo_rows):
            logits = contender.logits(tensor.unsqueeze(0))[0]
            fast = torch.softmax(logits, 0)
            top = int(probs.argmax())
            new_top = int(fast.argmax())
            shift = float((fast[top] - probs[top]).abs())
            same = new_top == top
            row.agree += same
            if not same:
                if photo["tie"]:
                    row.changed_ties += 1
                else:
                    row.changed_decided += 1
            if shift > row.max_shift:
                row.max_shift, row.max_shift_input = shift, name
            row.max_logit_diff = max(row.max_logit_diff, float((logits - exact_logits).abs().max()))
            row.per_input.append((same, shift, new_top))
        rows.append(row)
    return {"batch": case.batch, "photos": photo_rows, "rows": rows}


# ---------------------------------------------------------------------------- end to end

@dataclass
class EndToEndRow:
    precision: str
    images: int
    first_run_seconds: float      # the untimed warm-up run, which tunes and builds
    chosen: str                   # backend (precision) the command's auto picked
    model_only: float | None      # img/s of that engine in the model-only table
    seconds: list[float] = field(default_factory=list)
    one_image_seconds: list[float] = field(default_factory=list)   # the same command, 1 image
    top1: list[int] = field(default_factory=list)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.images / min(self.seconds)

    @property
    def steady_rate(self) -> float | None:
        """The rate once started: the extra images over the extra time of the full folder
        against a one-image folder (which pays the same start-up: interpreter, imports, model
        and engine load)."""
        if not self.one_image_seconds:
            return None
        extra = min(self.seconds) - min(self.one_image_seconds)
        return (self.images - 1) / extra if extra > 0 else None


def run_classify(folder: Path, precision: str, batch: int, env: dict) -> tuple[float, list[int], str]:
    command = [str(VENV_BIN / "imagezoo"), "classify", str(folder), "--json", "--backend", "auto",
               "--precision", precision]
    if batch != INFERENCE_BATCH:   # the command's default
        command += ["--batch-size", str(batch)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited with {done.returncode}: {done.stderr[-800:]}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    failed = [r for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"imagezoo classify failed on {len(failed)} images: {failed[0]}")
    top1 = [r["predictions"][0]["index"] for r in sorted(results, key=lambda r: r["input"])]
    return seconds, top1, done.stderr.strip()


def bench_end_to_end(model, cases: dict[tuple[str, int], Case], work: Path,
                     settings: Settings) -> tuple[list[EndToEndRow], float, float]:
    folder, single = work / "photos", work / "one-photo"
    folder.mkdir()
    single.mkdir()
    log(f"end to end: writing {settings.image_count} JPEGs")
    paths = make_photos(folder, settings.image_count)
    (single / paths[0].name).write_bytes(paths[0].read_bytes())
    photo_bytes = statistics.mean(p.stat().st_size for p in paths)
    read_all(paths)
    cache = work / "e2e-cache"
    env = dict(os.environ, IMAGEZOO_CACHE=str(cache))
    env.pop("IMAGEZOO_BACKEND", None)
    batch = settings.e2e_batch
    rows = {}
    for precision in PRECISIONS:   # warm the cache: tuning and building are not timed
        # A short run never times the backends (it takes a rule's choice): tune the way a user
        # does, with `imagezoo engines`, so that the timed runs use what auto picks by timing.
        log(f"  tuning: imagezoo engines --precision {precision} --batch-size {batch}")
        subprocess.run([str(VENV_BIN / "imagezoo"), "engines", "--precision", precision,
                        "--batch-size", str(batch)], check=True, capture_output=True, env=env)
        log(f"  warming up imagezoo classify --precision {precision}")
        seconds, top1, stderr = run_classify(folder, precision, batch, env)
        run_classify(single, precision, batch, env)   # one image: batch 1, tuned separately
        chosen, model_only, note = chosen_engine(model, precision, batch, cache, cases,
                                                 settings.model_only_batch)
        messages = [line for line in stderr.splitlines() if "warn" in line.lower() or "fall" in line.lower()]
        rows[precision] = EndToEndRow(precision, len(paths), seconds, chosen, model_only, top1=top1,
                                      note="; ".join(filter(None, [note] + messages))[:400])
    quiet_moment(settings.quiet_wait_seconds, 2.0)
    other = OtherLoad()
    for run_index in range(settings.e2e_runs):
        order = list(PRECISIONS) if run_index % 2 == 0 else list(reversed(PRECISIONS))
        for precision in order:
            log(f"  timing imagezoo classify --precision {precision}")
            seconds, top1, _ = run_classify(folder, precision, batch, env)
            rows[precision].seconds.append(seconds)
            rows[precision].top1 = top1
            seconds, _, _ = run_classify(single, precision, batch, env)
            rows[precision].one_image_seconds.append(seconds)
    return list(rows.values()), photo_bytes, other.share()


def chosen_engine(model, precision: str, batch: int, cache: Path,
                  cases: dict[tuple[str, int], Case], model_only_batch: int) -> tuple[str, float | None, str]:
    """The engine the command's auto chose at ``batch`` (read back from its cache, no
    re-timing), and the same engine's model-only rate at ``model_only_batch``."""
    if not is_tuned(model, precision, batch, cache):
        return "?", None, "could not read the command's choice (its cache key differs from this process's)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = optimize(model, precision=precision, backend="auto", batch_size=batch, cache_dir=cache)
    case = cases.get((E2E_MODEL, model_only_batch))
    name = f"imagezoo {engine.backend} {engine.precision}"
    contender = case.find(name) if case else None
    rate = case.rate(contender) if contender else None
    return f"{engine.backend} {engine.precision} ({engine.numerics})", rate, ""


# ---------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return bench_arguments(__doc__, "batch 1 and 8, efficientnet_lite0 only, few calls", DEFAULT_OUT, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    assert settings.model_only_batch in settings.batch_sizes
    torch.set_num_threads(os.cpu_count() or 1)   # explicit, as imagezoo's CLI sees it
    load_before = os.getloadavg()[0]
    other = OtherLoad()
    cases: dict[tuple[str, int], Case] = {}
    accuracy: dict | None = None
    models = {}
    with tempfile.TemporaryDirectory(prefix="imagezoo-bench-engine-") as temp:
        work = Path(temp)
        cache = work / "cache"      # a fresh engine cache: every build and tuning is measured
        for name, weights in settings.models:
            model = imagezoo.load_model(name, weights=weights).eval()
            if weights == "random":
                settle_batch_norm(model)
            models[name] = model
            for batch in settings.batch_sizes:
                wants_accuracy = name == ACCURACY_MODEL and batch == settings.batch_sizes[0]
                if wants_accuracy:
                    accuracy = {"labels": model.card.labels}
                cases[(name, batch)] = bench_case(name, model, batch, cache, work, settings,
                                                  accuracy if wants_accuracy else None)
        e2e, photo_bytes, e2e_share = bench_end_to_end(models[E2E_MODEL], cases, work, settings)
    report = full_report(args, settings, list(cases.values()), accuracy, e2e, photo_bytes,
                         e2e_share, load_before, other, time.perf_counter() - other.started)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
