"""``optimize``: the fastest faithful way to run a model on this machine (see ``__init__``).

    engine = imagezoo.optimize(model)                      # exact float32, fastest backend
    engine = imagezoo.optimize(model, precision="fast")    # bf16 / int8 where they agree
    logits = engine(x)                                     # x: preprocessed NCHW float32

``precision="exact"``: float32 only; every candidate's logits are checked against the eager
model on sample images (rtol 1e-4, atol 1e-4) and a candidate that misses is dropped.
``precision="fast"``: bfloat16 and int8 are allowed, guarded: on the calibration images the
fast engine must give the exact engine's top-1 everywhere and move the top-1 probability by at
most 0.05, else imagezoo warns and falls back to the exact engine.

An engine that passed its check on the sample images is remembered in the cache
(``checked.json``, beside the engine files and under the same key), so a later run loads it
without running the eager model again; calibration images the caller gives are always checked.

``backend="auto"`` times each available backend for this architecture, batch size and
precision (tens of seconds, once) and caches the table (``records.py``: keyed by the
architecture, the CPU and the library versions, so other weights of the same network and
other batch sizes reuse it). Timing only pays on a long run: a run of fewer than
``TUNE_MIN_IMAGES`` images that finds no table chooses by rule instead, at once
(``rule_choice``). Files built ahead of time (ONNX, int8 ONNX, OpenVINO's compiled blobs, the
frozen TorchScript graph) are cached per model (its SHA-256), machine and versions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..choices import INFERENCE_BATCH
from ..errors import ImagezooError
from ..weights.store import resolve_cache_dir
from ..cache import touch_entry
from . import records
from .backends import (BACKENDS, FAST_NUMERICS, INT8_FILE, BackendUnavailable, build,
                       engine_files, input_size)

log = logging.getLogger(__name__)

from ..choices import PRECISIONS  # noqa: E402,F401 (defined once, re-exported)
EXACT_TOLERANCE = 1e-4
FAST_PROBABILITY_SHIFT = 0.05
# Timing every backend costs 30-60 s on two cores and saves 10-25 ms per image against eager
# PyTorch (ResNet-50 and EfficientNet-Lite0 here): it pays from about two thousand images.
TUNE_MIN_IMAGES = 2000


class Engine(nn.Module):
    """A compiled model: ``engine(x)`` -> logits (a torch tensor), with ``.backend``,
    ``.precision`` (exact or fast), ``.numerics`` (fp32, bf16 or int8: what it computes in),
    ``.card`` and ``.figures`` (img/s of each engine timed, when tuned)."""

    def __init__(self, run, backend: str, precision: str, card, figures: dict | None = None,
                 note: str | None = None, numerics: str = "fp32"):
        super().__init__()
        self._run = run
        self.backend = backend
        self.precision = precision
        self.numerics = numerics
        self.card = card
        self.figures = figures or {}
        self.note = note

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Engines run on the CPU they were built for; inputs from elsewhere come and go back.
        return self._run(x.cpu()).to(x.device)

    def to(self, *args, **kwargs) -> "Engine":  # runs where it was built
        return self

    def __repr__(self) -> str:
        return (f"Engine(backend={self.backend!r}, precision={self.precision!r}, "
                f"numerics={self.numerics!r})")


@dataclass
class Candidate:
    backend: str
    precision: str           # what was asked: exact or fast
    images_per_second: float | None = None
    problem: str | None = None
    extra: dict = field(default_factory=dict)
    numerics: str = "fp32"   # what it computes in

    @property
    def label(self) -> str:
        return self.backend if self.precision == "exact" else f"{self.backend} {self.numerics}"


def numerics_to_try(backend: str, precision: str) -> tuple[str, ...]:
    """What ``backend`` computes in for ``precision``, in the order they are tried."""
    return ("fp32",) if precision == "exact" else FAST_NUMERICS[backend]


class Reference:
    """The inputs engines are checked on and eager PyTorch's logits for them, each computed on
    first use: a restart that loads an engine checked before needs neither."""

    def __init__(self, model: nn.Module, calibration: torch.Tensor | None):
        self.model = model
        self.user_given = calibration is not None
        if calibration is not None:
            self.samples = calibration

    @cached_property
    def samples(self) -> torch.Tensor:
        return sample_inputs(self.model)

    @cached_property
    def int8_file(self) -> str:
        """The cached int8 file these inputs calibrate: the caller's own images get one of
        their own, named by their digest, instead of the one made from the sample photos."""
        if not self.user_given:
            return INT8_FILE
        pixels = self.samples.detach().float().contiguous().cpu().numpy()
        digest = hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()
        return f"model.int8-{digest[:16]}.onnx"

    @cached_property
    def logits(self) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(self.samples)


def optimize(model: nn.Module, precision: str = "exact", backend: str = "auto",
             batch_size: int | None = None, calibration: torch.Tensor | None = None,
             cache_dir: str | os.PathLike | None = None, retune: bool = False,
             images: int | None = None, progress: bool = False) -> Engine:
    """Build the engine for ``model`` (see the module docstring).

    ``images``: how many images the caller is about to run. With ``backend="auto"`` and no
    timing table yet, fewer than ``TUNE_MIN_IMAGES`` are run at once on the backend
    ``rule_choice`` picks (the engine's ``note`` says which rule); ``None`` (the default for
    the API) or a long run times the backends. ``progress`` shows each tuning step on stderr."""
    if isinstance(model, Engine):
        return model
    if precision not in PRECISIONS:
        raise ImagezooError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if backend != "auto" and backend not in BACKENDS:
        raise ImagezooError(f"backend must be auto or one of {', '.join(BACKENDS)}, not {backend!r}")
    model = model.eval()
    batch_size = batch_size or INFERENCE_BATCH
    cache = engine_cache(model, cache_dir)
    reference = Reference(model, calibration)
    if reference.user_given:
        reference.logits  # images the caller gives must run in the model: fail here if not
    checks = CheckRecord(cache, on_samples=not reference.user_given, reuse=not retune)
    if backend != "auto":
        return _checked_engine(model, backend, precision, batch_size, cache, reference, checks, {})
    if not retune and images is not None and images < TUNE_MIN_IMAGES \
            and not is_tuned(model, precision, batch_size, cache_dir):
        chosen, reason = rule_choice(model, cache)
        engine = _checked_engine(model, chosen, "exact", batch_size, cache, reference, checks, {})
        engine.note = engine.note or reason
        return engine
    table = tuning_table(model, precision, batch_size, cache, reference, checks, retune,
                         cache_dir, progress)
    figures = {c.label: c.images_per_second for c in table}
    ranked = sorted((c for c in table if c.images_per_second), key=lambda c: -c.images_per_second)
    if precision == "exact":
        chosen = ranked[0].backend if ranked else "torch"
        return _checked_engine(model, chosen, "exact", batch_size, cache, reference, checks, figures)
    problems = [f"{c.label}: {c.problem}" for c in table if c.problem]
    for candidate in ranked:  # the fastest fast engine that passes its guard now
        try:
            run = _built_and_checked(candidate.backend, model, candidate.numerics, batch_size,
                                     cache, reference, checks)
            return Engine(run, candidate.backend, "fast", model.card, figures,
                          numerics=candidate.numerics)
        except Exception as error:  # any backend failure falls back, never crashes a run
            problems.append(f"{candidate.label}: {type(error).__name__}: {error}"[:300])
    warnings.warn(f"imagezoo: no fast engine passed the guard ({'; '.join(problems)}); "
                  f"falling back to exact float32", stacklevel=2)
    return optimize(model, "exact", "auto", batch_size, calibration, cache_dir, retune)


def _checked_engine(model, backend, precision, batch_size, cache, reference: "Reference",
                    checks: "CheckRecord", figures) -> Engine:
    """``backend``'s first fast numerics (in ``FAST_NUMERICS`` order) that passes the guard,
    else its float32 engine if that passes the exact check, else eager PyTorch (with the
    reason as ``note``)."""
    card = model.card
    if precision == "fast":
        problems = []
        for numerics in numerics_to_try(backend, "fast"):
            try:
                run = _built_and_checked(backend, model, numerics, batch_size, cache, reference, checks)
                return Engine(run, backend, "fast", card, figures, numerics=numerics)
            except (BackendUnavailable, EngineRejected) as error:
                problems.append(f"{numerics}: {error}")
            except Exception as error:  # any backend failure falls back, never crashes a run
                problems.append(f"{numerics}: {type(error).__name__}: {error}"[:300])
        reason = "; ".join(problems) or f"{backend} has no fast numerics"
        warnings.warn(f"imagezoo: the fast {backend} engine was not used ({reason}); "
                      f"falling back to exact float32", stacklevel=3)
    try:
        run = _built_and_checked(backend, model, "fp32", batch_size, cache, reference, checks)
        problem = None
    except (BackendUnavailable, EngineRejected) as error:
        run, problem = None, str(error)
    except Exception as error:  # any backend failure falls back, never crashes a run
        run, problem = None, f"{type(error).__name__}: {error}"[:300]
    if problem is not None:
        log.warning("%s backend not used (%s); running eager PyTorch", backend, problem)
        return Engine(build("torch", model, "fp32", batch_size, cache, lambda: reference.samples),
                      "torch", "exact", card, figures, note=problem)
    return Engine(run, backend, "exact", card, figures)


class EngineRejected(ImagezooError):
    """An engine whose outputs miss the check of its precision."""


def _built_and_checked(backend, model, numerics, batch_size, cache, reference: Reference,
                       checks: "CheckRecord"):
    """The engine, checked against eager PyTorch on the sample images unless the same engine
    (same model digest, machine, library versions, backend, numerics, batch size and engine
    files) passed that check on an earlier run; inputs the caller gives are always checked."""
    run = build(backend, model, numerics, batch_size, cache, lambda: reference.samples,
                reference.int8_file)
    if (backend, numerics) == ("torch", "fp32"):
        return run  # eager float32 is the reference the others are checked against
    problem = checks.check(
        f"{backend}/{numerics}/batch{batch_size}", engine_files(backend, numerics, batch_size, cache),
        run, input_size(model),
        lambda: check_problem(numerics, run(reference.samples), reference.logits))
    if problem is not None:
        raise EngineRejected(problem)
    touch_entry(cache)  # the cache's least-recently-used eviction spares what runs
    if backend in ("onnxruntime", "openvino") and numerics == "fp32":
        remember_source(model, cache)   # both run without PyTorch next time (engine/light.py)
    return run


def keep_cache_bounded(cache: Path) -> None:
    """After new engine files: evict the least recently used engines beyond the cache's cap
    (``imagezoo.cache``; 2 GiB unless ``IMAGEZOO_CACHE_MAX`` says otherwise), never this one."""
    from ..cache import evict
    try:
        for entry in evict(cache_dir=cache.parents[2], keep=cache):
            log.info("evicted %s (%d bytes) from the engine cache", entry.path, entry.size)
    except ImagezooError as error:  # a cache that cannot be trimmed still runs
        log.warning("%s", error)


def remember_source(model: nn.Module, cache: Path) -> None:
    """Point the model's ``sources`` record (how the user named it) at this engine folder and
    put the card there, so that the next run finds the engine before loading anything
    (``light.find_light_engine``)."""
    named = getattr(model, "source_args", None)
    key = records.source_key(*named) if named else None
    if key is None:
        return
    cache_root = cache.parents[2]  # <cache>/engines/<model digest>/<machine>
    path = records.source_record_path(key, cache_root)
    if records.read_json(path).get("engine_dir") == str(cache) and (cache / "card.json").is_file():
        return
    from ..model_folder import write_card
    try:
        write_card(cache, model.card)
        records.write_json(path, {"engine_dir": str(cache), "source": key})
    except OSError as error:  # a read-only cache only costs the fast start next time
        log.warning("could not record the engine of %s: %s", key, error)
    keep_cache_bounded(cache)


class CheckRecord:
    """``checked.json`` in the engine cache: which engines passed their check here, each with
    the size and modification time of the files it was built from, so that a file rebuilt or
    replaced since is checked again. Only checks on the sample photos are recorded
    (``on_samples``); ``reuse=False`` (a retune) checks again whatever the record says."""

    def __init__(self, cache: Path, on_samples: bool = True, reuse: bool = True):
        self.path = cache / "checked.json"
        self.on_samples = on_samples
        self.reuse = reuse

    def _read(self) -> dict:
        return records.read_json(self.path)

    _stamp = staticmethod(records.file_stamps)

    def passed(self, key: str, files: list[Path]) -> bool:
        return self._recorded(key, files, True)

    def failed(self, key: str, files: list[Path]) -> bool:
        """Whether these very files missed their check before (a retune aside)."""
        return self._recorded(key, files, False)

    def _recorded(self, key: str, files: list[Path], passed: bool) -> bool:
        return (self.on_samples and self.reuse
                and self._read().get(key) == {"passed": passed, "files": self._stamp(files)})

    def check(self, key: str, files: list[Path], run, size: tuple[int, int],
              problem_of: Callable[[], str | None]) -> str | None:
        """``problem_of()`` (None when the engine passes), recorded; skipped for an engine
        recorded as passed, which then only runs once on zeros so that a broken one still
        fails here rather than in the caller."""
        if self.passed(key, files):
            run(torch.zeros(1, 3, *size))
            return None
        problem = problem_of()
        self.record(key, files, problem is None)
        return problem

    def record(self, key: str, files: list[Path], passed: bool) -> None:
        if not self.on_samples:
            return
        recorded = self._read()
        recorded[key] = {"passed": passed, "files": self._stamp(files)}
        try:
            records.write_json(self.path, recorded)
        except OSError as error:  # a read-only cache costs a check next time, nothing more
            log.warning("could not record the engine check in %s: %s", self.path, error)


def check_problem(numerics: str, logits: torch.Tensor, reference: torch.Tensor) -> str | None:
    """The exact check for float32 engines, the fast guard for the others."""
    return (exact_problem if numerics == "fp32" else fast_problem)(logits, reference)


def exact_problem(logits: torch.Tensor, reference: torch.Tensor) -> str | None:
    if torch.allclose(logits.float(), reference, rtol=EXACT_TOLERANCE, atol=EXACT_TOLERANCE):
        return None
    worst = float((logits.float() - reference).abs().max())
    return f"logits differ from eager PyTorch by up to {worst:.2e}"


def fast_problem(logits: torch.Tensor, reference: torch.Tensor) -> str | None:
    """None when the fast logits keep every top-1 and its probability within 0.05.

    One refinement: where the exact top-1 leads the runner-up by less than the allowed shift
    (0.05), the two classes are a tie at that tolerance (the cat photo is 'tiger cat' 37.9%
    against 'Egyptian cat' 37.5%), so a swap between them is not counted as a changed top-1;
    the top-1 probability must still move by at most 0.05.
    """
    fast, exact = torch.softmax(logits.float(), 1), torch.softmax(reference, 1)
    top = exact.argmax(1)
    best_two = exact.topk(2, dim=1).values
    decided = (best_two[:, 0] - best_two[:, 1]) >= FAST_PROBABILITY_SHIFT
    changed = (fast.argmax(1) != top) & decided
    if changed.any():
        return f"top-1 changed on {int(changed.sum())} of {len(top)} calibration images"
    shift = float((fast.gather(1, top[:, None]) - exact.gather(1, top[:, None])).abs().max())
    if shift > FAST_PROBABILITY_SHIFT:
        return f"top-1 probability moved by {shift:.3f} (> {FAST_PROBABILITY_SHIFT})"
    return None


def tuning_file(model: nn.Module, cache_dir=None) -> Path:
    """The timing table of ``model``'s architecture on this machine (see ``records``)."""
    return records.tuning_path(model.card.architecture, input_size(model)[0], cache_dir)


def is_tuned(model: nn.Module, precision: str, batch_size: int, cache_dir=None) -> bool:
    """Whether ``backend="auto"`` will find a timing table for this precision (measured at
    this batch size or another: the nearest serves)."""
    return records.nearest_table(records.read_json(tuning_file(model, cache_dir)),
                                 precision, batch_size) is not None


def rule_choice(model: nn.Module, cache: Path) -> tuple[str, str]:
    """The backend for a short run with no timing table, from what is known without timing:
    an ONNX Runtime engine of this model already built and checked here runs at once and is
    about twice as fast as eager PyTorch for the ResNets and five times for
    EfficientNet-Lite0 (benchmarks/RESULTS-engine.md); without one, exporting it would cost
    more than a short run takes, so eager PyTorch runs. Returns (backend, why)."""
    if onnxruntime_checked(cache):
        return "onnxruntime", "the ONNX Runtime engine built for this model earlier"
    return "torch", ("eager PyTorch: no engine of this model is cached yet "
                     "('imagezoo engines' builds and times them)")


def onnxruntime_checked(cache: Path) -> bool:
    """Whether this model's float32 ONNX Runtime engine passed its check here (any batch)."""
    return any(records.check_recorded(cache, key, [cache / "model.onnx"])
               for key in records.read_json(cache / records.CHECKED_FILE)
               if key.startswith("onnxruntime/fp32/"))


def tuning_table(model, precision, batch_size, cache, reference: Reference, checks: CheckRecord,
                 retune=False, cache_dir=None, progress: bool = False) -> list[Candidate]:
    """Each backend (and, for fast, each of its numerics) timed at this batch size, cached in
    the architecture's ``tuning.json``; without ``retune``, a table measured at another batch
    size serves (the nearest)."""
    record_path = tuning_file(model, cache_dir)
    tables = records.read_json(record_path)
    nearest = records.nearest_table(tables, precision, batch_size)
    if nearest is not None and not retune:
        return [Candidate(**c) for c in nearest[1]]
    table = []
    reference.logits  # the eager model must run on the samples: fail here, not per backend
    example = torch.randn(batch_size, 3, *input_size(model), generator=torch.Generator().manual_seed(0))
    steps = [(backend, numerics) for backend in BACKENDS
             for numerics in numerics_to_try(backend, precision)]
    from tqdm import tqdm
    bar = tqdm(steps, desc="timing backends", unit="engine", file=sys.stderr,
               disable=not (progress or sys.stderr.isatty()), leave=False)
    for backend, numerics in bar:
        bar.set_description(f"building and timing {backend} {numerics}")
        candidate = Candidate(backend, precision, numerics=numerics)
        try:
            run = _built_and_checked(backend, model, numerics, batch_size, cache, reference,
                                     checks)
            candidate.images_per_second = images_per_second(run, example)
        except (BackendUnavailable, EngineRejected) as error:
            candidate.problem = str(error)
        except Exception as error:  # a backend that breaks on this model is skipped, not fatal
            candidate.problem = f"{type(error).__name__}: {error}"[:300]
        log.info("engine %s/%s: %s", candidate.label, precision,
                 candidate.problem or f"{candidate.images_per_second:.1f} img/s")
        table.append(candidate)
    tables[records.table_key(precision, batch_size)] = [c.__dict__ for c in table]
    records.write_json(record_path, tables)
    keep_cache_bounded(cache)
    return table


def images_per_second(run, example: torch.Tensor, budget_seconds: float = 1.5) -> float:
    """Best rate over a few timed calls after one warm-up (the fastest call is the one least
    disturbed by anything else the machine is doing)."""
    run(example)
    best, spent, calls = float("inf"), 0.0, 0
    while calls < 2 or (spent < budget_seconds and calls < 20):
        started = time.perf_counter()
        run(example)
        elapsed = time.perf_counter() - started
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return example.shape[0] / best


SAMPLE_PHOTOS = ("cat.png", "coffee.jpg", "astronaut.jpg", "rocket.jpg")


def sample_inputs(model: nn.Module) -> torch.Tensor:
    """Calibration inputs from the card's sample photos (resources/, see its README): each
    photo's centre crop and its mirror image, preprocessed for ``model``. Real photos have the
    statistics int8 calibration needs, which random noise would not."""
    from importlib import resources
    from ..data.images import load_image
    from ..data.transforms import preprocess_image
    spec = model.card.preprocess
    inputs = []
    for name in SAMPLE_PHOTOS:
        with resources.as_file(resources.files("imagezoo.resources").joinpath(name)) as path:
            image = load_image(path)
        for picture in (image, image.transpose(0)):  # 0: FLIP_LEFT_RIGHT
            inputs.append(preprocess_image(picture, spec))
    return torch.stack(inputs)


def engine_cache(model: nn.Module, cache_dir=None) -> Path:
    """``<cache>/engines/<model digest>/<machine and versions digest>``."""
    return resolve_cache_dir(cache_dir) / "engines" / model_digest(model)[:24] / records.machine_digest()


def model_digest(model: nn.Module) -> str:
    """SHA-256 over the architecture, the preprocessing and every tensor's bytes."""
    digest = hashlib.sha256()
    card = getattr(model, "card", None)
    if card is not None:
        digest.update(json.dumps(card.architecture, sort_keys=True).encode())
        preprocess = card.preprocess.to_dict()
        preprocess["mean_image"] = None
        digest.update(json.dumps(preprocess, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


__all__ = ["Engine", "is_tuned", "optimize", "rule_choice", "tuning_table"]
