"""The inference backends: each turns an eval-mode model into a function NCHW float32 -> logits.

* ``torch``: the model as it is, eager (the reference).
* ``torch-fast``: batch norm folded into the convolutions, channels-last memory layout (what
  oneDNN's convolutions prefer), traced and frozen so oneDNN fuses each convolution with its
  ReLU; with ``fast`` precision the folded model runs eagerly under bfloat16 autocast
  (AVX512-BF16 / AMX). ``torch.compile`` was left out: on two cores its compile time (tens of
  seconds per batch size) does not pay off for a command-line run.
* ``onnxruntime``: the model exported to ONNX (cached on disk), run with all graph
  optimisations; ``fast`` precision uses a statically quantised int8 copy (QDQ, per-channel
  weights) calibrated on sample images.
* ``openvino``: the same ONNX file compiled by OpenVINO for the CPU; ``fast`` precision runs
  the int8 file above (OpenVINO executes its quantised convolutions with AMX-INT8 or VNNI
  kernels: on a Sapphire Rapids core about three times ONNX Runtime's int8 rate) or, when that
  misses the guard, asks for bfloat16 inference.

Numerics: ``fp32`` is what ``exact`` runs; ``FAST_NUMERICS`` lists what each backend tries for
``fast``, in order (int8 before bf16: the faster where both run).

A backend whose Python package is missing raises ``BackendUnavailable`` with the package to
install; ``optimize`` skips it with that message.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import ImagezooError
from .fold import fold_batch_norm

log = logging.getLogger(__name__)

Runner = Callable[[torch.Tensor], torch.Tensor]
from ..choices import BACKENDS  # noqa: E402,F401 (defined once, re-exported)
FAST_NUMERICS = {"torch": (), "torch-fast": ("bf16",), "onnxruntime": ("int8",),
                 "openvino": ("int8", "bf16")}


class BackendUnavailable(ImagezooError):
    """A backend that cannot run here (its package is missing or it cannot build the model)."""


# The int8 file calibrated on the card's sample photos; a caller's own calibration images get
# a file named by their digest, so neither is mistaken for the other.
INT8_FILE = "model.int8.onnx"


def build(backend: str, model: nn.Module, numerics: str, batch_size: int, cache: Path,
          calibration: Callable[[], torch.Tensor], int8_file: str = INT8_FILE) -> Runner:
    """The runner of ``backend`` computing in ``numerics`` (fp32, bf16 or int8).

    ``calibration()`` gives the images int8 quantisation is calibrated on (called only when
    the quantised file ``int8_file`` is not in the cache yet)."""
    if backend not in BACKENDS:
        raise ImagezooError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if numerics != "fp32" and numerics not in FAST_NUMERICS[backend]:
        raise BackendUnavailable(f"the {backend} backend does not run {numerics}" + (
            "; it is the float32 reference" if backend == "torch" else ""))
    if backend == "torch":
        return _torch(model)
    if backend == "torch-fast":
        return _torch_fast(model, numerics, batch_size, cache)
    if backend == "onnxruntime":
        return _onnxruntime(model, numerics, cache, calibration, int8_file)
    return _openvino(model, numerics, cache, calibration, int8_file)


def engine_files(backend: str, numerics: str, batch_size: int, cache: Path) -> list[Path]:
    """The cached files the engine ``build`` makes for these arguments is built from (int8:
    the file calibrated on the sample photos, the only one whose checks are recorded)."""
    if backend == "torch-fast" and numerics == "fp32":
        return [cache / f"torch-fast-b{min(batch_size, TORCH_CHUNK)}.pt"]
    if backend in ("onnxruntime", "openvino"):
        return [cache / (INT8_FILE if numerics == "int8" else "model.onnx")]
    return []


# PyTorch's CPU kernels run a large batch much slower per image than a few small ones
# (ResNet-50 here: 15 img/s at batch 32, 25 img/s as four batches of 8): the big activation
# buffers go back to the operating system after every call and fault in again. The torch
# backends therefore split a batch into chunks of this size; the results are the same numbers.
TORCH_CHUNK = 8


def in_chunks(forward: Runner) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= TORCH_CHUNK:
            return forward(x)
        return torch.cat([forward(part) for part in x.split(TORCH_CHUNK)])
    return run


def _torch(model: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return in_chunks(run)


def _torch_fast(model: nn.Module, numerics: str, batch_size: int, cache: Path) -> Runner:
    folded = fold_batch_norm(model).to(memory_format=torch.channels_last)
    if numerics == "bf16":
        # bfloat16 autocast runs oneDNN's bf16 kernels (AVX512-BF16 / AMX); measured faster
        # eager than traced, whose frozen graph keeps float32 weights around each op.
        def run_bf16(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), _bf16(True):
                return folded(x.contiguous(memory_format=torch.channels_last)).float()
        return in_chunks(run_bf16)
    chunk = min(batch_size, TORCH_CHUNK)
    example = torch.zeros(chunk, 3, *input_size(model)).to(memory_format=torch.channels_last)
    graph_file, = engine_files("torch-fast", "fp32", batch_size, cache)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if graph_file.exists():  # built by an earlier run: no tracing to pay for again
            traced = torch.jit.load(str(graph_file))
        else:
            # Freezing inlines the weights so oneDNN can fuse each convolution with its ReLU.
            traced = torch.jit.freeze(torch.jit.trace(folded, example, check_trace=False))
            from ..fileio import atomic_path
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(graph_file) as temporary:
                torch.jit.save(traced, str(temporary))
        traced(example)  # the first calls let the JIT specialise; pay for them here
        traced(example)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return traced(x.contiguous(memory_format=torch.channels_last))
    return in_chunks(run)


def _bf16(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def input_size(model: nn.Module) -> tuple[int, int]:
    spec = model.card.preprocess
    side = spec.crop or spec.resize or 224
    return side, side


def onnx_file(model: nn.Module, cache: Path) -> Path:
    """The model (normalised input -> logits) as ONNX, exported once into the cache. A module
    with several outputs (a ``LayerTap``) names them in its ``output_names``."""
    path = cache / "model.onnx"
    if path.exists():
        return path
    from ..fileio import atomic_path
    cache.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, *input_size(model))
    with atomic_path(path) as temporary, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(model.eval(), (example,), str(temporary), dynamo=True,
                          input_names=["input"],
                          output_names=list(getattr(model, "output_names", ["logits"])),
                          dynamic_shapes={"x": {0: batch}}, external_data=False)
    return path


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _onnxruntime(model: nn.Module, numerics: str, cache: Path,
                 calibration: Callable[[], torch.Tensor], int8_file: str) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from None
    path = onnx_file(model, cache)
    if numerics == "int8":
        path = _quantized(path, calibration, int8_file)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = _threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return one_or_tuple(session.run(None, {input_name: array}))
    return run


def one_or_tuple(outputs: list) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A model's output as torch tensors: the logits alone, or a tuple of several outputs."""
    tensors = tuple(torch.from_numpy(np.asarray(output)) for output in outputs)
    return tensors[0] if len(tensors) == 1 else tensors


def _quantized(path: Path, calibration: Callable[[], torch.Tensor], int8_file: str) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights, calibrated on ``calibration()``),
    cached as ``int8_file`` beside the float file."""
    target = path.with_name(int8_file)
    if target.exists():
        return target
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([{"input": s.unsqueeze(0).numpy()} for s in calibration()])

        def get_next(self):
            return next(self.samples, None)

    from ..fileio import atomic_path
    prepared = path.with_name("model.prepared.onnx")
    if not prepared.exists():
        with atomic_path(prepared) as temporary:
            quant_pre_process(str(path), str(temporary), skip_symbolic_shape=True)
    with atomic_path(target) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(prepared), str(temporary), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return target


def _openvino(model: nn.Module, numerics: str, cache: Path,
              calibration: Callable[[], torch.Tensor], int8_file: str) -> Runner:
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable("openvino is not installed (pip install openvino)") from None
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(cache / "openvino")})
    # int8: the quantised QDQ file, whose remaining float operations run in float32.
    config = {"INFERENCE_PRECISION_HINT": "bf16" if numerics == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": _threads(), "PERFORMANCE_HINT": "LATENCY"}
    path = onnx_file(model, cache)
    if numerics == "int8":
        path = _quantized(path, calibration, int8_file)
    try:
        compiled = core.compile_model(str(path), "CPU", config)
    except RuntimeError as error:
        raise BackendUnavailable(f"OpenVINO cannot compile this model: {error}") from None
    request = compiled.create_infer_request()
    keep_alive = (core, compiled)  # OpenVINO objects must not outlive the core that made them

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        results = request.infer({0: array})
        return one_or_tuple([np.array(results[output]) for output in compiled.outputs])
    run.keep_alive = keep_alive
    return run


__all__ = ["BACKENDS", "FAST_NUMERICS", "BackendUnavailable", "build", "engine_files", "input_size",
           "onnx_file"]
