"""An ONNX Runtime or OpenVINO engine, found and run without PyTorch.

Two ways, tried in this order by ``find_light_engine``:

1. **The cached engine.** When ``optimize`` has built and checked the float32 ONNX Runtime
   or OpenVINO engine of a model that the user names the same way again
   (``records.source_key``: the default model, a registry name with a weight file or
   ``random:SEED``, a model folder, a weight file), its ``sources`` record points at the
   engine's folder, which holds ``model.onnx`` and the card. The file must still be the one
   that passed its check for the backend that runs it: the named one, or with ``auto`` the
   fastest exact one of the architecture's timing table (ONNX Runtime without a table).
2. **The shipped graph** (``graphs.py``), when no checked engine is recorded: a registry name
   whose architecture has a weightless graph in the package, with weights read without
   PyTorch (``weights/numpy_state.py``): the name's bundled weights (the default model's) or
   a ``.pth``/``.safetensors`` file given with ``--weights``. The weights must fit exactly as
   ``load_model`` would load them (the same unwrapping and renaming, every tensor present and
   of the right shape, the bundled file's published SHA-256); anything else returns None, and
   the caller's PyTorch path loads the model and reports what is wrong. Seeded random weights
   (``random:SEED``) are drawn by PyTorch and take that path too. Nothing is written to the
   cache.

Either way the engine runs only when ``backend`` and ``precision`` (``exact``) would run it:
with ``auto``, a timing table of the architecture must not prefer a backend that needs
PyTorch (without one, the rule prefers ONNX Runtime's engine). ``fast`` engines (bf16, int8)
take the PyTorch path, which guards their top-1 on the sample photos. The
numbers are the PyTorch path's: same preprocessing (``transforms.preprocess_array``), the
same network in ONNX, checked against eager PyTorch (the cached engine on this machine; the
shipped graphs by the test suite, within 1e-4).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from . import records

log = logging.getLogger(__name__)

CACHED_ENGINE = "cached engine"
# The backends whose engines run here without PyTorch.
LIGHT_BACKENDS = ("onnxruntime", "openvino")


class LightEngine:
    """``engine(batch)`` -> logits, both NumPy float32 arrays (N x 3 x H x W -> N x C).

    ``origin`` says where the engine came from: ``CACHED_ENGINE`` ("cached engine"), or a
    phrase naming the shipped graph and the weights it was filled with."""

    backend, precision, numerics = "onnxruntime", "exact", "fp32"

    def __init__(self, onnx_file: Path | None, card, session=None, origin: str = CACHED_ENGINE):
        if session is None:
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            session = ort.InferenceSession(str(onnx_file), options,
                                           providers=["CPUExecutionProvider"])
        self.session = session
        self.input_name = self.session.get_inputs()[0].name
        self.card = card
        self.origin = origin

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]


class OpenVinoEngine(LightEngine):
    """The cached, checked float32 OpenVINO engine, compiled from the same ``model.onnx`` with
    the settings ``backends._openvino`` checked it with (its compiled-model cache reused)."""

    backend = "openvino"

    def __init__(self, onnx_file: Path, card):
        import openvino as ov
        self.core = ov.Core()   # kept: OpenVINO objects must not outlive the core that made them
        self.core.set_property({"CACHE_DIR": str(onnx_file.parent / "openvino")})
        threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        self.compiled = self.core.compile_model(str(onnx_file), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.card, self.origin = card, CACHED_ENGINE

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        results = self.request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return np.array(results[self.compiled.outputs[0]])


def gpu_present() -> bool:
    """Whether a CUDA GPU may be there (``auto`` would take it), asked without PyTorch."""
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidia0")


def find_light_engine(name_or_path: str | None, weights: str | None, precision: str,
                      backend: str, batch_size: int, cache_dir=None) -> LightEngine | None:
    """The float32 engine of the model named so, when ``backend`` (``auto``, ``onnxruntime`` or
    ``openvino``) and ``precision`` (``exact``) would run it: the cached, checked engine
    (ONNX Runtime or OpenVINO, whichever the timing table prefers), else the shipped graph
    filled with the weights, in ONNX Runtime (see the module docstring); else None."""
    if precision != "exact" or backend not in ("auto", *LIGHT_BACKENDS):
        return None
    key = records.source_key(name_or_path, weights)
    if key is None:
        return None
    engine_dir = records.read_json(records.source_record_path(key, cache_dir)).get("engine_dir")
    if engine_dir:
        found = _cached_engine(Path(engine_dir), backend, batch_size, cache_dir)
        if found is not False:
            return found
    if not _installed("onnxruntime"):
        return None
    return _shipped_graph_engine(name_or_path, weights, key, backend, batch_size, cache_dir)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _cached_engine(engine_dir: Path, backend: str, batch_size: int, cache_dir):
    """The checked engine in ``engine_dir``; None when it exists but this run should not use
    it; False when there is none to use (the shipped graph may serve instead)."""
    onnx_file = engine_dir / "model.onnx"
    checks = records.read_json(engine_dir / records.CHECKED_FILE)

    def checked(engine: str, passed: bool = True) -> bool:
        return onnx_file.is_file() and any(
            records.check_recorded(engine_dir, check, [onnx_file], passed=passed)
            for check in checks if check.startswith(f"{engine}/fp32/"))
    if backend in ("auto", "onnxruntime") and checked("onnxruntime", passed=False):
        return None  # ONNX Runtime missed the check for this model here: PyTorch it is
    if not (checked("onnxruntime") or checked("openvino")):
        return False
    from ..model_folder import read_card
    try:
        card = read_card(engine_dir)
    except Exception:  # noqa: BLE001 - a damaged record means the usual path, not an error
        return False
    wanted = _wanted_backend(card, backend, batch_size, cache_dir)
    if wanted is None or not checked(wanted) or not _installed(wanted):
        return None  # another backend runs this, or this one was not checked: the usual path
    try:
        return OpenVinoEngine(onnx_file, card) if wanted == "openvino" else LightEngine(onnx_file, card)
    except Exception as error:  # noqa: BLE001 - a runtime that fails here: the usual path says why
        log.debug("the cached %s engine in %s did not load: %s", wanted, engine_dir, error)
        return None


def _input_side(card) -> int:
    return card.preprocess.crop or card.preprocess.resize or 224


def _wanted_backend(card, backend: str, batch_size: int, cache_dir) -> str | None:
    """Which engine this run takes: ``backend`` when named; with ``auto``, the fastest exact
    one of the architecture's timing table (measured at the nearest batch size), or ONNX
    Runtime without a table (the rule). None when that is a backend that needs PyTorch."""
    if backend != "auto":
        return backend
    tables = records.read_json(records.tuning_path(card.architecture, _input_side(card), cache_dir))
    nearest = records.nearest_table(tables, "exact", batch_size)
    if nearest is None:
        return "onnxruntime"
    winner = records.fastest(nearest[1])
    return winner["backend"] if winner and winner["backend"] in LIGHT_BACKENDS else None


def _shipped_graph_engine(name_or_path: str | None, weights: str | None, key: str,
                          backend: str, batch_size: int, cache_dir) -> LightEngine | None:
    """The shipped graph of a registry name filled with its weights, or None when the weights
    would not load exactly so (``loader.load_model`` then says why)."""
    from ..choices import DEFAULT_MODEL
    from ..models.registry import MODELS, default_card
    from ..weights.numpy_state import read_arrays
    from ..weights.state_files import state_dict_kind
    from .graphs import find_graph, graph_session
    name = str(name_or_path or DEFAULT_MODEL)
    entry = MODELS.get(name)
    if entry is None or Path(name).exists():  # a path is a file or folder, not the name
        return None
    try:
        card = default_card(name)
        graph = find_graph(card.architecture, _input_side(card))
        if graph is None:
            return None
        if _wanted_backend(card, backend, batch_size, cache_dir) != "onnxruntime":
            return None
        if weights is None:  # loader._load_bundled
            if entry.default_weights is None or not entry.default_weights_sha256:
                return None
            path, kind = entry.default_weights(), "torch"
            data = path.read_bytes()  # read once: hashed, then parsed
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry.default_weights_sha256:
                return None  # the PyTorch path says to reinstall the package
        else:  # loader._load_named with a torch or safetensors file
            path = Path(str(weights))
            kind = state_dict_kind(path)
            if kind is None or not key.startswith(f"{name}@file:"):
                return None  # random:SEED (drawn by PyTorch), other formats, not a file
            data = path.read_bytes()  # read once: the bytes hashed are the bytes parsed
            digest = hashlib.sha256(data).hexdigest()
            if digest != key[len(f"{name}@file:"):]:
                return None  # changed since the key was taken
        arrays = read_arrays(path, data)
        if any(graph.fit_problems(arrays)):
            return None  # load_state_dict would raise WeightsMismatchError
        session = graph_session(graph, arrays, source=str(path))
    except Exception as error:  # noqa: BLE001 - any doubt means the PyTorch path, which reports
        log.debug("no shipped-graph engine for %s: %s", name, error)
        return None
    card.source, card.source_format, card.sha256 = path.name, kind, digest
    origin = (f"imagezoo's graph of {name} with the weights of {path.name} "
              f"(no engine cached yet)")
    return LightEngine(None, card, session=session, origin=origin)
