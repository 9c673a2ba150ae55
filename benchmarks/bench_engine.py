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
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
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
from typing import Callable

import numpy as np
import torch

import imagezoo
from imagezoo.data.batches import INFERENCE_BATCH, default_workers
from imagezoo.engine.optimizer import tuning_file  # noqa: E402
from imagezoo.engine import (BACKENDS, PRECISIONS, FAST_PROBABILITY_SHIFT, engine_cache,
                             is_tuned, optimize, sample_inputs)
from imagezoo.engine.backends import onnx_file

# The machine description, the other-load meter and the photo generator are the
# classification benchmark's, so the reports describe the machine the same way. (This
# script's folder is on sys.path when it is run as a script.)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import (BUSY_SHARE, JPEG_QUALITY, PHOTO_SIZE, OtherLoad,  # noqa: E402
                            cpu_model, git_revision, make_photos, read_all, wait_for_quiet,
                            bench_arguments, log, warm_up)

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS-engine.md"
VENV_BIN = Path(sys.executable).parent
ACCURACY_MODEL = "efficientnet_lite0"   # the only model with real weights, and the default
E2E_MODEL = "efficientnet_lite0"        # what `imagezoo classify` runs without --model
BUSY_REPORT_SHARE = 0.25                # above this the report calls the case "busy"

# What a fast imagezoo engine runs at, by backend (see imagezoo/engine/backends.py).


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


# ---------------------------------------------------------------------------- contenders

@dataclass
class Contender:
    """One way of running the model: an imagezoo engine or a peer run directly."""

    name: str                    # row label
    side: str                    # "imagezoo" or "peer"
    requested: str               # imagezoo: exact | fast; peers: fp32 | int8 | bf16
    numerics: str                # what it actually computes in: fp32, bf16, int8
    call: Callable[[torch.Tensor], object] | None   # NCHW float32 tensor -> logits
    build_seconds: float = 0.0
    backend: str | None = None   # the imagezoo backend actually used
    note: str = ""
    same_as: str | None = None   # an identical engine timed under that name instead
    seconds: list[float] = field(default_factory=list)

    @property
    def exact_class(self) -> bool:
        """Compared with float32 peers (exact engines, fp32 peers) or with every peer."""
        return self.requested in ("exact", "fp32")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.call(x)
        return out.float() if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))


@dataclass
class Case:
    model: str
    batch: int
    contenders: list[Contender]
    rounds: int = 0
    bursts: dict[str, int] = field(default_factory=dict)   # back-to-back calls per round
    other_share: float = 0.0
    input_size: int = 224
    build_share: float = 0.0     # other processes' CPU share while the engines were built
    export_seconds: float = 0.0
    auto_notes: list[str] = field(default_factory=list)

    def rate(self, contender: Contender) -> float | None:
        source = self.find(contender.same_as) if contender.same_as else contender
        if source is None or not source.seconds:
            return None
        return self.batch / min(source.seconds)

    def spread(self, contender: Contender) -> float | None:
        source = self.find(contender.same_as) if contender.same_as else contender
        if source is None or not source.seconds:
            return None
        return statistics.median(source.seconds) / min(source.seconds) - 1.0

    def find(self, name: str) -> Contender | None:
        return next((c for c in self.contenders if c.name == name), None)

    def peers(self, exact_class: bool) -> list[Contender]:
        return [c for c in self.contenders if c.side == "peer" and self.rate(c)
                and (c.exact_class or not exact_class)]

    def best_peer(self, exact_class: bool) -> Contender | None:
        return max(self.peers(exact_class), key=self.rate, default=None)

    @property
    def eager(self) -> Contender:
        return self.find("PyTorch eager")


def imagezoo_contenders(model, batch: int, cache: Path) -> tuple[list[Contender], list[str]]:
    """Every engine ``optimize`` builds for this batch: each backend at each precision, then
    auto at each precision. Warnings (the fast guard's fallbacks) go into the notes."""
    contenders: list[Contender] = []
    timed: dict[tuple[str, str], str] = {}   # (backend, precision) -> first contender's name
    auto_notes: list[str] = []
    for backend in BACKENDS + ("auto",):
        for precision in PRECISIONS:
            name = f"imagezoo {backend} {precision}"
            log(f"  building {name}")
            started = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    engine = optimize(model, precision=precision, backend=backend,
                                      batch_size=batch, cache_dir=cache)
                except Exception as error:  # a broken engine is a row, not the end of the run
                    contenders.append(Contender(name, "imagezoo", precision, "-", None,
                                                note=f"failed: {type(error).__name__}: {error}"[:200]))
                    continue
            seconds = time.perf_counter() - started
            messages = [str(w.message) for w in caught if "imagezoo" in str(w.message)]
            contender = Contender(name, "imagezoo", precision, engine.numerics, engine, seconds,
                                  engine.backend, "; ".join(messages))
            if engine.note:
                contender.note = "; ".join(filter(None, [contender.note, engine.note]))
            key = (engine.backend, engine.precision)
            if backend != "auto" and key in timed:
                contender.same_as = timed[key]   # e.g. torch fast, which falls back to torch exact
            elif backend != "auto":
                timed[key] = name
            if backend == "auto":
                auto_notes.append(auto_summary(model, engine, precision, batch, cache))
            contenders.append(contender)
    return contenders, auto_notes


def auto_summary(model, engine, precision: str, batch: int, cache: Path) -> str:
    """What auto chose at this batch, and its own tuning table (with any backend's problem)."""
    record = tuning_file(model, cache)
    rows = json.loads(record.read_text()).get(f"{precision}/batch{batch}", []) if record.exists() else []
    parts = []
    for row in rows:
        label = f"{row['backend']} {row.get('numerics', 'fp32')}"
        if row.get("images_per_second"):
            parts.append(f"{label} {row['images_per_second']:.1f}")
        else:
            parts.append(f"{label} not used ({(row.get('problem') or '?')[:90]})")
    return (f"auto {precision} chose **{engine.backend} {engine.numerics}** ({engine.precision}); "
            f"its tuning, img/s: "
            + ", ".join(parts))


class CalibrationReader:
    """ONNX Runtime's calibration protocol over ``sample_inputs`` (one image per call)."""

    def __init__(self, samples: torch.Tensor, input_name: str):
        self.items = iter([{input_name: s.unsqueeze(0).numpy()} for s in samples])

    def get_next(self):
        return next(self.items, None)


@contextlib.contextmanager
def quiet_root_logger():
    # onnxruntime.quantization logs its advice on the root logger.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def int8_peer_file(path: Path, model, folder: Path) -> tuple[Path, float]:
    """The ONNX file quantised the way ONNX Runtime's documentation describes for x86: shape
    pre-processing, then static QDQ quantisation, per-channel int8 weights and uint8
    activations (U8S8; the S8S8 default ran resnet50 about 3x slower on this machine).
    Quantised once per model; the seconds are 0 when the file was already there."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    target = folder / "peer.int8.onnx"
    prepared = folder / "peer.prepared.onnx"
    if target.exists():
        return target, 0.0
    started = time.perf_counter()
    input_name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with quiet_root_logger(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), CalibrationReader(sample_inputs(model), input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return target, time.perf_counter() - started


def onnxruntime_peer(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {input_name: x.numpy()})[0]
    return run


def openvino_peer(path: Path, hint: str) -> tuple[Callable[[torch.Tensor], np.ndarray], str]:
    import openvino as ov
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    facts = []
    for prop in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS"):
        with contextlib.suppress(Exception):
            facts.append(f"{prop}={compiled.get_property(prop)}")

    def run(x: torch.Tensor) -> np.ndarray:
        return request.infer({0: x.numpy()})[0]
    return run, ", ".join(facts)


def peer_contenders(model, path: Path, folder: Path) -> list[Contender]:
    """The peers, built directly on their own APIs from the same ONNX file."""
    contenders = []

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)
    contenders.append(Contender("PyTorch eager", "peer", "fp32", "fp32", eager,
                                note="`with torch.no_grad(): model(x)`"))
    def int8() -> tuple[Callable[[torch.Tensor], np.ndarray], str]:
        quantized, seconds = int8_peer_file(path, model, folder)
        return onnxruntime_peer(quantized), (f"quantisation {seconds:.1f} s" if seconds
                                             else "quantised file of the model's first case")
    builders = [
        ("ONNX Runtime fp32", "fp32", lambda: (onnxruntime_peer(path), "")),
        ("ONNX Runtime int8", "int8", int8),
        ("OpenVINO fp32", "fp32", lambda: openvino_peer(path, "f32")),
        ("OpenVINO bf16", "bf16", lambda: openvino_peer(path, "bf16")),
    ]
    for name, numerics, builder in builders:
        log(f"  building {name}")
        started = time.perf_counter()
        try:
            run, note = builder()
        except Exception as error:
            contenders.append(Contender(name, "peer", numerics, numerics, None,
                                        note=f"failed: {type(error).__name__}: {error}"[:200]))
            continue
        contenders.append(Contender(name, "peer", numerics, numerics, run,
                                    time.perf_counter() - started, note=note))
    return contenders


def settle_batch_norm(model: torch.nn.Module) -> None:
    """Give a randomly initialised model realistic activation scales: each batch norm's
    running statistics are set from the sample photos (one training-mode pass, weights
    untouched). Fresh statistics (mean 0, variance 1) make every batch norm the identity, and
    the residual sums then grow block after block: ResNet-152's logits reach magnitudes where
    float32 rounding alone exceeds imagezoo's 1e-4 exact check, so every exact engine fell
    back to eager PyTorch. A trained network does not look like that; its speed is the same."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None      # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(sample_inputs(model))
    model.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


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
    if settings.quiet_wait_seconds > 0 and not wait_for_quiet(settings.quiet_wait_seconds, 2.0):
        log(f"  the machine did not go quiet within {settings.quiet_wait_seconds:.0f} s")
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
    if settings.quiet_wait_seconds > 0 and not wait_for_quiet(settings.quiet_wait_seconds, 2.0):
        log(f"  the machine did not go quiet within {settings.quiet_wait_seconds:.0f} s")
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
        log(f"  warming up imagezoo classify --precision {precision}")
        seconds, top1, stderr = run_classify(folder, precision, batch, env)
        run_classify(single, precision, batch, env)   # one image: batch 1, tuned separately
        chosen, model_only, note = chosen_engine(model, precision, batch, cache, cases,
                                                 settings.model_only_batch)
        messages = [line for line in stderr.splitlines() if "warn" in line.lower() or "fall" in line.lower()]
        rows[precision] = EndToEndRow(precision, len(paths), seconds, chosen, model_only, top1=top1,
                                      note="; ".join(filter(None, [note] + messages))[:400])
    if settings.quiet_wait_seconds > 0 and not wait_for_quiet(settings.quiet_wait_seconds, 2.0):
        log(f"  the machine did not go quiet within {settings.quiet_wait_seconds:.0f} s")
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


# ---------------------------------------------------------------------------- report

def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def versions() -> str:
    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__} "
             f"({torch.get_num_threads()} intra-op threads)"]
    for package in ("onnxruntime", "openvino", "onnx", "numpy"):
        try:
            parts.append(f"{package} {__import__(package).__version__}")
        except ImportError:
            parts.append(f"{package} not installed")
    parts.append(f"imagezoo {imagezoo.__version__} at {git_revision()}")
    return ", ".join(parts)


def header(args, settings: Settings, load_before: float, other: OtherLoad, busy: list[str]) -> str:
    command = "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    flags = cpu_flags()
    flag_text = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in
                          ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"))
    lines = [
        "# imagezoo inference engine benchmark",
        "",
        "Written by `benchmarks/bench_engine.py`; rerun it to refresh (the file is overwritten).",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Command: `{command}`" + (" (quick smoke run: batch 1 and 8, one model, few "
                                     "calls; figures not representative)" if args.quick else ""),
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores (os.cpu_count), no GPU used; "
        f"flags: {flag_text}",
        f"- {versions()}",
        f"- Other load: 1-minute load average {load_before:.2f} before the run and "
        f"{os.getloadavg()[0]:.2f} after; other processes used {other.cpu_seconds():.0f} CPU-s "
        f"during it ({other.share():.0%} of the machine; per case below)",
    ]
    if busy:
        lines += ["", f"**Warning:** other processes took more than {BUSY_REPORT_SHARE:.0%} of the "
                      f"CPU while these were timed: {', '.join(busy)}. Their figures are "
                      f"pessimistic and noisier (all contenders of a case alternate, so the "
                      f"ratios suffer less than the rates)."]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def burst_text(case: Case) -> str:
    counts = sorted(set(case.bursts.values()))
    if counts == [1]:
        return ", one call per contender per round"
    return (f", each contender called {counts[0]} to {counts[-1]} times in a row per round "
            f"(calls shorter than a second, in bursts of about 0.1 s)")


def case_table(case: Case) -> str:
    eager = case.rate(case.eager)
    best_fp32, best_any = case.best_peer(True), case.best_peer(False)
    lines = [
        f"### {case.model}, batch {case.batch}",
        "",
        f"Timed in {case.rounds} rounds after warm-up, in a new random order each round"
        + burst_text(case) + f"; other processes took "
        f"{case.other_share:.0%} of the CPU meanwhile ({case.build_share:.0%} while the engines "
        f"were built and auto tuned). Best fp32 peer: "
        f"{best_fp32.name if best_fp32 else '-'}; best peer at any precision: "
        f"{best_any.name if best_any else '-'}.",
        "",
        "| contender | asked | runs as | img/s | vs eager | vs best peer (class) | spread "
        "| build s | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in case.contenders:
        rate = case.rate(c)
        best = best_fp32 if c.exact_class else best_any
        best_rate = case.rate(best) if best else None
        runs_as = f"{c.backend} {c.numerics}" if c.side == "imagezoo" and c.backend else c.numerics
        note = c.note
        if c.same_as:
            note = "; ".join(filter(None, [f"same engine as {c.same_as}, its figure", note]))
        vs_best = f"{rate / best_rate:.2f} ({'fp32' if c.exact_class else 'any'})" if rate and best_rate else "-"
        lines.append(
            f"| {'**' + c.name + '**' if 'auto' in c.name else c.name} | {c.requested} | {runs_as} "
            f"| {fmt(rate)} | {fmt(rate / eager if rate and eager else None, 2)} | {vs_best} "
            f"| {'-' if case.spread(c) is None else f'{case.spread(c):.0%}'} "
            f"| {fmt(c.build_seconds if c.call is not None or c.build_seconds else None)} "
            f"| {note.replace('|', '/')} |")
    lines += [""] + [f"- {note}" for note in case.auto_notes]
    if case.export_seconds > 0.5:
        lines.append(f"- ONNX export (once per model, cached): {case.export_seconds:.1f} s")
    return "\n".join(lines)


def summary_table(cases: list[Case]) -> str:
    lines = [
        "## Summary: imagezoo auto against the peers",
        "",
        "| model | batch | eager img/s | best fp32 peer | auto exact | exact / best fp32 peer "
        "| best peer (any) | auto fast | fast / best peer | other CPU |",
        "|---|---:|---:|---|---|---:|---|---|---:|---:|",
    ]
    for case in cases:
        exact, fast = case.find("imagezoo auto exact"), case.find("imagezoo auto fast")
        best_fp32, best_any = case.best_peer(True), case.best_peer(False)

        def cell(c):
            return f"{fmt(case.rate(c))} ({c.backend} {c.numerics})" if c and case.rate(c) else "-"

        def peer_cell(c):
            return f"{fmt(case.rate(c))} ({c.name})" if c else "-"
        lines.append(
            f"| {case.model} | {case.batch} | {fmt(case.rate(case.eager))} | {peer_cell(best_fp32)} "
            f"| {cell(exact)} | {fmt(ratio(case, exact, best_fp32), 2)} | {peer_cell(best_any)} "
            f"| {cell(fast)} | {fmt(ratio(case, fast, best_any), 2)} | {case.other_share:.0%} |")
    return "\n".join(lines)


def ratio(case: Case, a: Contender | None, b: Contender | None) -> float | None:
    if a is None or b is None or not case.rate(a) or not case.rate(b):
        return None
    return case.rate(a) / case.rate(b)


def accuracy_section(accuracy: dict) -> str:
    photos, rows = accuracy["photos"], accuracy["rows"]
    ties = sum(p["tie"] for p in photos)
    lines = [
        f"## Accuracy on real photos ({ACCURACY_MODEL}, real weights)",
        "",
        f"{len(photos)} inputs: the card's four sample photos (the fast engines' calibration and "
        f"guard set) and {len(photos) // 2 - 4} photos from `skimage.data` (grey ones as RGB), "
        f"each also mirrored; one image per call, engines built at batch {accuracy['batch']}. "
        f"Reference: eager float32. {ties} inputs are ties (float32 top-2 less than "
        f"{FAST_PROBABILITY_SHIFT} apart). \"changed\" counts top-1 changes on the other inputs; "
        f"\"tie swaps\" those on ties. \"max shift\" is the largest change of float32's top-1 "
        f"probability.",
        "",
        "| contender | runs as | same top-1 | changed | tie swaps | max shift | on | max logit diff |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.contender} | {row.numerics} | {row.agree}/{len(photos)} "
                     f"| {row.changed_decided} | {row.changed_ties} | {row.max_shift:.3f} "
                     f"| {row.max_shift_input} | {row.max_logit_diff:.2g} |")
    fast_rows = [r for r in rows if r.numerics in ("bf16", "int8")]
    lines += [
        "",
        "Per input (fast contenders only): `=` same top-1, else the new top-1; then the shift "
        "of float32's top-1 probability.",
        "",
        "| input | float32 top-1 | p | margin | " + " | ".join(r.contender for r in fast_rows) + " |",
        "|---|---|---:|---:|" + "---|" * len(fast_rows),
    ]
    for index, photo in enumerate(photos):
        cells = []
        for row in fast_rows:
            same, shift, new_top = row.per_input[index]
            cells.append(("=" if same else f"**{accuracy['labels'][new_top]}**") + f" {shift:.3f}")
        tie = " (tie)" if photo["tie"] else ""
        lines.append(f"| {photo['input']} | {photo['top1']} | {photo['p']:.3f} "
                     f"| {photo['margin']:.3f}{tie} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def end_to_end_section(rows: list[EndToEndRow], settings: Settings, photo_bytes: float,
                       other_share: float) -> str:
    lines = [
        "## End to end: `imagezoo classify` on a folder of JPEGs",
        "",
        f"{settings.image_count} generated {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs (quality "
        f"{JPEG_QUALITY}, mean {photo_bytes / 1024:.0f} KiB) through `imagezoo classify FOLDER "
        f"--json --backend auto --precision P`"
        + ("" if settings.e2e_batch == INFERENCE_BATCH else f" `--batch-size {settings.e2e_batch}`")
        + f" ({E2E_MODEL}, the default model) in a subprocess; e2e img/s = images / wall time "
        f"from start to exit, so interpreter start-up, imports, model load and engine load from "
        f"the cache are included. `$IMAGEZOO_CACHE` is a fresh folder warmed by one untimed run "
        f"per precision, so the tuning is not timed; the timed runs alternate exact and fast, "
        f"{settings.e2e_runs} each, fastest kept. Model-only: the rate of the engine the command chose "
        f"(at its batch size, {settings.e2e_batch}) at batch {settings.model_only_batch} in the "
        f"model-only table, the machine's best for that engine. To separate start-up from throughput, "
        f"the same command also ran on a folder holding one of the images (its own engine at "
        f"batch 1, also tuned beforehand): \"once started\" = (images - 1) / (full-folder "
        f"time - one-image time). Other processes took {other_share:.0%} of the CPU during the "
        f"timed runs.",
        "",
        "| precision | engine chosen | e2e img/s | model-only img/s | e2e / model-only "
        "| one-image run s | once started img/s | once started / model-only "
        "| first run s (tuning) | timed runs s | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        share = row.rate / row.model_only if row.model_only else None
        steady = row.steady_rate
        steady_share = steady / row.model_only if steady and row.model_only else None
        lines.append(f"| {row.precision} | {row.chosen} | {row.rate:.1f} | {fmt(row.model_only)} "
                     f"| {fmt(share, 2)} | {fmt(min(row.one_image_seconds) if row.one_image_seconds else None, 2)} "
                     f"| {fmt(steady)} | {fmt(steady_share, 2)} | {row.first_run_seconds:.1f} "
                     f"| {', '.join(f'{s:.2f}' for s in row.seconds)} | {row.note} |")
    if len(rows) == 2:
        same = sum(a == b for a, b in zip(rows[0].top1, rows[1].top1))
        lines += ["", f"exact and fast gave the same top-1 on {same}/{rows[0].images} of these "
                      f"generated (noise) images; fast also decodes the JPEGs in libjpeg's "
                      f"reduced-scale draft mode. Decoding runs in "
                      f"{default_workers(rows[0].images)} DataLoader worker(s), `classify`'s "
                      f"default here."]
    return "\n".join(lines)


def targets_section(cases: list[Case], accuracy: dict | None, e2e: list[EndToEndRow]) -> str:
    lines = ["## Targets", ""]
    verdicts = []

    def check(label: str, values: list[tuple[str, float | None]], target: float) -> None:
        known = [(k, v) for k, v in values if v is not None]
        met = bool(known) and len(known) == len(values) and all(v >= target for _, v in known)
        worst = min((v for _, v in known), default=None)
        detail = ", ".join(f"{k} {fmt(v, 2)}" for k, v in values)
        lines.append(f"- {label} (target >= {target:g}): {detail}. "
                     f"**{'MET' if met else 'NOT MET'}**" + (f" (lowest {worst:.2f})" if worst else ""))
        verdicts.append((label, met))

    check("Exact: imagezoo auto exact / best fp32 peer",
          [(f"{c.model} b{c.batch}", ratio(c, c.find("imagezoo auto exact"), c.best_peer(True)))
           for c in cases], 1.1)
    check("Fast: imagezoo auto fast / best peer at any precision",
          [(f"{c.model} b{c.batch}", ratio(c, c.find("imagezoo auto fast"), c.best_peer(False)))
           for c in cases], 1.2)
    if accuracy is not None:
        count = len(accuracy["photos"])
        ties = sum(p["tie"] for p in accuracy["photos"])
        parts, strict, decided = [], True, True
        for row in accuracy["rows"]:
            if not row.contender.startswith("imagezoo") or not row.contender.endswith(" fast"):
                continue
            strict &= row.changed_decided == 0 and row.changed_ties == 0
            decided &= row.changed_decided == 0
            parts.append(f"{row.contender} ({row.numerics}) {row.agree}/{count} same, "
                         f"{row.changed_decided} changed + {row.changed_ties} tie swap(s), "
                         f"max shift {row.max_shift:.3f}")
        verdict = ("MET" if strict else "MET only with ties excused" if decided else "NOT MET")
        lines.append(f"- Fast: top-1 unchanged on every real photo ({count} inputs, {ties} of them "
                     f"ties), for every imagezoo fast engine (auto may pick any of them at another "
                     f"batch size): {'; '.join(parts)}. **{verdict}**"
                     + ("" if strict else " (strictly: no; the accuracy table shows which inputs)"))
        verdicts.append(("fast top-1 unchanged on real photos"
                         + ("" if strict or not decided else " (only with ties excused)"), strict))
    if e2e:
        check("End to end / model-only of the chosen engine",
              [(f"{row.precision} ({row.chosen})",
                row.rate / row.model_only if row.model_only else None) for row in e2e], 0.8)
    met = [label for label, ok in verdicts if ok]
    missed = [label for label, ok in verdicts if not ok]
    lines += ["", f"Met: {', '.join(met) or 'none'}. Not met: {', '.join(missed) or 'none'}."]
    return "\n".join(lines)


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
    wall = time.perf_counter() - other.started
    busy = [f"{c.model} batch {c.batch}" for c in cases.values() if c.other_share > BUSY_REPORT_SHARE]
    if e2e_share > BUSY_REPORT_SHARE:
        busy.append("end to end")
    ordered = list(cases.values())
    report = "\n\n".join(
        [header(args, settings, load_before, other, busy), summary_table(ordered),
         "## Model only, every contender\n\n"
         "Random input, the same tensor for every contender (peers get its numpy view). img/s "
         "from each contender's fastest call; spread = median call / fastest - 1; \"vs best "
         "peer\" compares exact engines and fp32 peers with the best fp32 peer, and fast "
         "engines and int8/bf16 peers with the best peer at any precision. Build s: wall time "
         "of `optimize` (auto: including its tuning) or of the peer's session/compile (int8: "
         "including quantisation); the first case of a model also exports and quantises into "
         "the cache, later cases reuse those files. The ResNets run with random weights "
         "(speed does not depend on the values) whose batch-norm statistics were set from the "
         "sample photos (with fresh statistics ResNet-152's logits reach 1e7 and no float32 "
         "engine can match eager PyTorch within imagezoo's 1e-4), so whether their fast engines pass imagezoo's "
         "guard (same top-1 and top-1 probability within 0.05 on the sample photos) says "
         "little about real weights; a fast engine that fell back runs float32 and is compared "
         "as asked, with the best peer at any precision."]
        + [case_table(case) for case in ordered]
        + ([accuracy_section(accuracy)] if accuracy else [])
        + [end_to_end_section(e2e, settings, photo_bytes, e2e_share),
           targets_section(ordered, accuracy, e2e),
           f"Total benchmark time: {wall:.0f} s."]) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
