"""Weightless graphs: each registry architecture as ONNX, shipped in the package, filled with
weights at run time, so that a model runs in ONNX Runtime before any engine is cached and
without importing PyTorch (``light.py``).

``resources/graphs/<name>.onnx`` is the network as ``backends.onnx_file`` exports it (the
dynamo exporter, input ``input`` with a dynamic batch, output ``logits``, onnxscript's
optimiser), with two differences that keep the weights out:

* every initializer that holds a state-dict tensor is an external-data reference to a file
  that is never shipped (``location`` ``WEIGHTS_LOCATION``), so the file holds the network's
  structure only (tens of kilobytes);
* so that each such initializer *is* one state-dict tensor, the optimiser runs while the
  weights are graph inputs rather than constants: it then cannot fold batch norm into the
  convolutions (which would make new tensors out of four), nor merge equal tensors. Batch
  norm stays a ``BatchNormalization`` node, which ONNX Runtime folds into the convolution when
  it builds the session: the weights are given to the session
  (``SessionOptions.add_external_initializers``) before it optimises the graph.

``<name>.json`` beside it holds the architecture (the spec's ``to_dict()``), the input side,
every state-dict key with its dtype and shape (the strict check ``load_state_dict`` makes)
and which key fills which initializer. ``index.json`` lists the graphs by architecture and
side, which is how ``find_graph`` looks one up.

``python -m imagezoo.engine.graphs --write [NAMES...]`` (re)writes them; it needs PyTorch and
onnx, everything else here needs neither (NumPy and ONNX Runtime only).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import WeightsMismatchError

GRAPH_FORMAT = 1
INDEX_FILE = "index.json"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# The external-data location every weight initializer names: no such file exists; the
# weights are handed to ONNX Runtime in memory (graph_session).
WEIGHTS_LOCATION = "weights-given-at-run-time.bin"
# The graphs written by default: the default model, the ImageNet ResNets (each only when its
# graph stays small) and the CIFAR ResNets.
SIZE_LIMIT = 200_000
DEFAULT_GRAPHS = ("efficientnet_lite0", "resnet18", "resnet34", "resnet50", "resnet101",
                  "resnet152", "resnet20_cifar", "resnet32_cifar", "resnet44_cifar",
                  "resnet56_cifar", "resnet110_cifar")


def graphs_dir() -> Path:
    return Path(str(resources.files("imagezoo") / "resources" / "graphs"))


@dataclass(frozen=True)
class Graph:
    """A shipped weightless graph and what its sidecar says about it."""

    name: str
    onnx_path: Path
    sidecar_path: Path

    @cached_property
    def sidecar(self) -> dict:
        return json.loads(self.sidecar_path.read_text(encoding="utf-8"))

    @property
    def architecture(self) -> dict:
        return self.sidecar["architecture"]

    @property
    def side(self) -> int:
        return int(self.sidecar["input"]["side"])

    @property
    def initializers(self) -> dict[str, str]:
        """Initializer name -> the state-dict key that fills it."""
        return {name: entry["key"] for name, entry in self.sidecar["initializers"].items()}

    @property
    def state_dict(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Every key of the model's state dict -> (dtype, shape), in the model's order."""
        return {key: (entry["dtype"], tuple(entry["shape"]))
                for key, entry in self.sidecar["state_dict"].items()}

    def fit_problems(self, arrays: dict[str, np.ndarray]) -> tuple[list, list, list]:
        """(missing, unexpected, misshapen) as ``torch_state.load_state_dict`` counts them for
        the model this graph is of: a tensor the model lacks, one it has that the arrays lack
        (``num_batches_tracked`` aside), one of another shape."""
        from ..weights.state_files import OPTIONAL_SUFFIXES
        expected = self.state_dict
        missing = [key for key in expected
                   if key not in arrays and not key.endswith(OPTIONAL_SUFFIXES)]
        unexpected = [key for key in arrays if key not in expected]
        misshapen = [(key, tuple(np.shape(arrays[key])), shape)
                     for key, (_dtype, shape) in expected.items()
                     if key in arrays and tuple(np.shape(arrays[key])) != shape]
        return missing, unexpected, misshapen


def find_graph(architecture: dict, side: int) -> Graph | None:
    """The shipped graph of this architecture (a spec's ``to_dict()``) at this input side."""
    folder = graphs_dir()
    try:
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in index.get("graphs", []):
        if entry.get("architecture") == architecture and entry.get("side") == side:
            graph = Graph(entry["name"], folder / f"{entry['name']}.onnx",
                          folder / f"{entry['name']}.json")
            if graph.onnx_path.is_file() and graph.sidecar_path.is_file():
                return graph
    return None


def graph_session(graph: Graph, arrays: dict[str, np.ndarray], threads: int | None = None,
                  source: str | None = None):
    """An ONNX Runtime session of ``graph`` with its initializers filled from ``arrays`` (a
    state dict in imagezoo's names, as ``numpy_state.read_arrays`` gives it). A tensor the
    graph needs that is missing or of another shape raises ``WeightsMismatchError``."""
    import onnxruntime as ort
    names, values, missing, misshapen = [], [], [], []
    for name, entry in graph.sidecar["initializers"].items():
        key, shape = entry["key"], tuple(entry["shape"])
        if key not in arrays:
            missing.append(key)
            continue
        array = np.ascontiguousarray(arrays[key], dtype=np.dtype(entry["dtype"]))
        if array.shape != shape:
            misshapen.append((key, array.shape, shape))
            continue
        names.append(name)
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
    if missing or misshapen:
        raise WeightsMismatchError(source or f"the weights of {graph.name}", missing, [],
                                   misshapen)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    # Replaced by name when the session loads the graph, before its optimisations run (so
    # batch norm is still folded into the convolutions).
    options.add_external_initializers(names, values)
    session = ort.InferenceSession(graph.onnx_path.read_bytes(), options,
                                   providers=["CPUExecutionProvider"])
    session.imagezoo_weights = values  # ONNX Runtime uses these buffers: they live as long
    return session


# --- writing (developers only: needs PyTorch, onnx and onnxscript) ----------------------------

def export_graph(architecture: dict, side: int):
    """(ONNX ModelProto without weights, sidecar dict) of ``architecture`` at ``side``."""
    import contextlib
    import io
    import logging
    import warnings

    import onnx_ir as ir
    import torch
    from onnx_ir.passes.common import ClearMetadataAndDocStringPass

    from ..models.registry import build_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(architecture).eval()
    state = model.state_dict()
    example = torch.zeros(2, 3, side, side)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(model, (example,), None, dynamo=True,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes={"x": {0: batch}}, optimize=False)
        graph = program.model.graph
        # The weights become graph inputs while the optimiser runs (see the module docstring).
        weights = []
        for name in list(graph.initializers):
            if name in state:
                value = graph.initializers.pop(name)
                value.const_value = None
                graph.inputs.append(value)
                weights.append(value)
        program.optimize()  # what torch.onnx.export(optimize=True) runs
        graph = program.model.graph
    if [value.name for value in graph.inputs[1:]] != [value.name for value in weights] \
            or any(value.name not in state for value in weights):
        raise RuntimeError("the optimiser renamed or dropped a weight input")
    offset = 0
    initializers = {}
    for value in weights:
        graph.inputs.remove(value)
        tensor = state[value.name]
        dtype = ir.DataType.from_numpy(tensor.numpy().dtype)
        length = tensor.numel() * tensor.element_size()
        value.const_value = ir.ExternalTensor(WEIGHTS_LOCATION, offset=offset, length=length,
                                              dtype=dtype, shape=ir.Shape(tuple(tensor.shape)),
                                              name=value.name, base_dir="")
        graph.register_initializer(value)
        initializers[value.name] = {"key": value.name, "dtype": str(tensor.numpy().dtype),
                                    "shape": list(tensor.shape)}
        offset += length
    ClearMetadataAndDocStringPass()(program.model)
    proto = ir.serde.serialize_model(program.model)
    del proto.graph.value_info[:]  # intermediate shapes: ONNX Runtime infers them again
    sidecar = {
        "format": GRAPH_FORMAT,
        "architecture": architecture,
        "input": {"name": INPUT_NAME, "side": side, "channels": 3, "batch": "dynamic"},
        "output": OUTPUT_NAME,
        "state_dict": {key: {"dtype": str(tensor.numpy().dtype), "shape": list(tensor.shape)}
                       for key, tensor in state.items()},
        "initializers": initializers,
        "exported_with": _versions(),
    }
    return proto, sidecar


def _versions() -> dict:
    from importlib import metadata
    found = {}
    for package in ("torch", "onnxscript", "onnx-ir", "onnx"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def registry_side(name: str) -> int:
    from ..models.registry import registry_entry
    preprocess = registry_entry(name).preprocess()
    return preprocess.crop or preprocess.resize or 224


def write_graphs(names: list[str], folder: Path | None = None, size_limit: int | None = None,
                 log=print) -> list[str]:
    """Export each registry name's graph into ``folder`` (the package's by default) and
    update the index; with ``size_limit``, a graph larger than that is left out."""
    from ..fileio import atomic_path, atomic_write_text
    from ..models.registry import registry_entry
    folder = Path(folder) if folder is not None else graphs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {"format": GRAPH_FORMAT, "graphs": []}
    entries = {entry["name"]: entry for entry in index.get("graphs", [])}
    written = []
    for name in names:
        architecture, side = dict(registry_entry(name).architecture), registry_side(name)
        proto, sidecar = export_graph(architecture, side)
        data = proto.SerializeToString()
        if size_limit is not None and len(data) > size_limit:
            log(f"{name}: {len(data)} bytes, more than {size_limit}: left out")
            continue
        sidecar["name"] = name
        with atomic_path(folder / f"{name}.onnx") as temporary:
            temporary.write_bytes(data)
        atomic_write_text(folder / f"{name}.json", _dumps(sidecar))
        entries[name] = {"name": name, "architecture": architecture, "side": side}
        written.append(name)
        log(f"{name}: {len(data)} bytes, {len(sidecar['initializers'])} weight initializers")
    index = {"format": GRAPH_FORMAT,
             "graphs": [entries[name] for name in sorted(entries)]}
    atomic_write_text(index_path, _dumps(index))
    return written


def _dumps(data: dict) -> str:
    """JSON with one entry a line: lists of numbers (shapes, stages) kept on theirs."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[[\d\s,.\-]*\]", lambda match: "[" + ", ".join(
        part.strip() for part in match.group(0)[1:-1].split(",") if part.strip()) + "]",
        text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagezoo.engine.graphs",
                                     description="Write the weightless graphs shipped in "
                                                 "imagezoo/resources/graphs.")
    parser.add_argument("--write", action="store_true", required=True,
                        help="export the graphs (needs PyTorch, onnx and onnxscript)")
    parser.add_argument("names", nargs="*",
                        help=f"registry names (default: {', '.join(DEFAULT_GRAPHS)}, each "
                             f"ImageNet ResNet only when its graph is under {SIZE_LIMIT} bytes)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="write here instead of the package's resources/graphs")
    args = parser.parse_args(argv)
    if args.names:
        write_graphs(args.names, args.folder)
    else:
        always = [name for name in DEFAULT_GRAPHS if not name.startswith("resnet") or "_cifar" in name]
        write_graphs(always, args.folder)
        write_graphs([name for name in DEFAULT_GRAPHS if name not in always], args.folder,
                     size_limit=SIZE_LIMIT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
