"""The engine benchmark's contenders (``bench_engine.py``): every engine ``imagezoo.optimize``
builds, and the peers run directly on their own APIs from the same ONNX file (eager PyTorch,
ONNX Runtime fp32 and int8, OpenVINO f32 and bf16)."""
from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from imagezoo.engine import BACKENDS, PRECISIONS, optimize, sample_inputs
from imagezoo.engine.optimizer import tuning_file

from harness import log


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
