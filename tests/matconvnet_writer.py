"""Test helper: write MatConvNet-DagNN-style .mat files from an imagezoo ResNet.

The files look like ``imagenet-resnet-50-dag.mat``: a struct array ``params`` (fields ``name``,
``value``) with Caffe ResNet names, ``meta.normalization`` and ``meta.classes``. MATLAB v5 goes
through ``scipy.io.savemat``; v7.3 is laid out with h5py as MATLAB's ``save -v7.3`` does:
a 512-byte text header, arrays stored transposed (column-major), uint16 ``char`` strings,
cell arrays and struct-array fields as object references into ``#refs#``.

``write_net`` keeps the whole network in one variable ``net`` with ``state`` and ``stats``
beside it, as ``cnn_train_dag`` checkpoints do (``net = net_.saveobj() ; save(fileName, 'net',
'state')``, then ``save(fileName, 'stats', '-append')``); ``write_simplenn`` writes a SimpleNN
chain (``layers`` a cell array of structs with ``type`` and ``weights``).

Only tests use this; it is written independently of the importer on purpose.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

BN_EPS = 1e-5  # the Caffe models' epsilon, folded into sigma as import-caffe.py does


class Cell(list):
    """A MATLAB cell array (1 x N) of the values it holds."""


# ---------------------------------------------------------------------------------------------
#                                                                   imagezoo model -> params
# ---------------------------------------------------------------------------------------------

def block_names(layers: tuple[int, ...], numbered_stages: set[int] | None = None) -> list[list[str]]:
    """Caffe names per stage: 2a, 2b, 2c … or, for numbered stages, 4a, 4b1, 4b2, …"""
    names = []
    for index, count in enumerate(layers):
        stage = index + 2
        numbered = count > 6 if numbered_stages is None else stage in numbered_stages
        names.append([f"{stage}a"] + [f"{stage}b{i}" if numbered else f"{stage}{chr(ord('a') + i)}"
                                      for i in range(1, count)])
    return names


def resnet_params(model: torch.nn.Module, numbered_stages: set[int] | None = None,
                  bn_eps: float = BN_EPS) -> dict[str, np.ndarray]:
    """MatConvNet parameters (name -> MATLAB-shaped float32 array) of an imagezoo ResNet."""
    state = {name: tensor.detach().double().numpy() for name, tensor in model.state_dict().items()}
    spec = model.spec
    params: dict[str, np.ndarray] = {}

    def conv(matconvnet: str, imagezoo: str) -> None:
        weight = state[f"{imagezoo}.weight"]                     # Cout x Cin x H x W
        params[f"{matconvnet}_filter"] = _single(weight.transpose(2, 3, 1, 0))
        if f"{imagezoo}.bias" in state:
            params[f"{matconvnet}_bias"] = _single(state[f"{imagezoo}.bias"].reshape(-1, 1))

    def batch_norm(matconvnet: str, imagezoo: str) -> None:
        sigma = np.sqrt(state[f"{imagezoo}.running_var"] + bn_eps)
        params[f"{matconvnet}_mult"] = _single(state[f"{imagezoo}.weight"].reshape(-1, 1))
        params[f"{matconvnet}_bias"] = _single(state[f"{imagezoo}.bias"].reshape(-1, 1))
        params[f"{matconvnet}_moments"] = _single(
            np.stack([state[f"{imagezoo}.running_mean"], sigma], axis=1))

    conv("conv1", "conv1")
    batch_norm("bn_conv1", "bn1")
    branches = [("2a", "conv1", "bn1"), ("2b", "conv2", "bn2")]
    if spec.block == "bottleneck":
        branches.append(("2c", "conv3", "bn3"))
    for stage_index, names in enumerate(block_names(spec.layers, numbered_stages)):
        for block_index, name in enumerate(names):
            prefix = f"layer{stage_index + 1}.{block_index}"
            if f"{prefix}.downsample.0.weight" in state:
                conv(f"res{name}_branch1", f"{prefix}.downsample.0")
                batch_norm(f"bn{name}_branch1", f"{prefix}.downsample.1")
            for branch, conv_name, bn_name in branches:
                conv(f"res{name}_branch{branch}", f"{prefix}.{conv_name}")
                batch_norm(f"bn{name}_branch{branch}", f"{prefix}.{bn_name}")
    fc = state["fc.weight"]                                      # classes x Cin
    params["fc1000_filter"] = _single(fc.T.reshape(1, 1, fc.shape[1], fc.shape[0]))
    params["fc1000_bias"] = _single(state["fc.bias"].reshape(-1, 1))
    return params


def randomize_batch_norm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics, so a mix-up of mean, variance, scale or shift shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.2 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


def meta(average_image: np.ndarray | None = None, descriptions: list[str] | None = None,
         class_names: list[str] | None = None, image_size: int = 224) -> dict:
    """``net.meta`` as MatConvNet's ImageNet models carry it."""
    normalization: dict = {"imageSize": np.array([[image_size, image_size, 3, 1]], dtype=np.float64),
                           "interpolation": "bilinear", "keepAspect": np.array([[1.0]])}
    if average_image is not None:
        normalization["averageImage"] = _single(average_image)
    classes: dict = {}
    if class_names is not None:
        classes["name"] = Cell(class_names)
    if descriptions is not None:
        classes["description"] = Cell(descriptions)
    result: dict = {"normalization": normalization}
    if classes:
        result["classes"] = classes
    return result


def _single(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
#                                                                              MATLAB v5 files
# ---------------------------------------------------------------------------------------------

def write_v5(path: str | Path, params: dict[str, np.ndarray] | None, meta_struct: dict | None,
             compress: bool = True) -> Path:
    import scipy.io
    variables: dict = {}
    if params is not None:
        struct = np.empty((1, len(params)), dtype=[("name", object), ("value", object)])
        for index, (name, value) in enumerate(params.items()):
            struct["name"][0, index] = name
            struct["value"][0, index] = value
        variables["params"] = struct
    if meta_struct is not None:
        variables["meta"] = _to_scipy(meta_struct)
    variables["layers"] = np.zeros((1, 0))
    variables["vars"] = np.zeros((1, 0))
    scipy.io.savemat(str(path), variables, do_compression=compress, oned_as="column")
    return Path(path)


def write_variables_v5(path: str | Path, variables: dict) -> Path:
    """Any variables (dict = struct, list of dicts = 1 x N struct array, Cell, str, array)."""
    import scipy.io
    scipy.io.savemat(str(path), {name: _to_scipy(value) for name, value in variables.items()},
                     do_compression=True, oned_as="column")
    return Path(path)


def _to_scipy(value):
    if isinstance(value, Cell):
        cell = np.empty((1, len(value)), dtype=object)
        for index, item in enumerate(value):
            cell[0, index] = _to_scipy(item)
        return cell
    if isinstance(value, dict):
        return {key: _to_scipy(item) for key, item in value.items()}
    if isinstance(value, list):                      # a struct array: one record per element
        fields = list(value[0])
        struct = np.empty((1, len(value)), dtype=[(field, object) for field in fields])
        for index, record in enumerate(value):
            for field in fields:
                struct[field][0, index] = _to_scipy(record[field])
        return struct
    return value


# ---------------------------------------------------------------------------------------------
#                                                                   MATLAB v7.3 (HDF5) files
# ---------------------------------------------------------------------------------------------

MATLAB_CLASSES = {np.dtype(np.float32): "single", np.dtype(np.float64): "double",
                  np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32"}


def write_v73(path: str | Path, params: dict[str, np.ndarray] | None, meta_struct: dict | None) -> Path:
    import h5py
    path = Path(path)
    with h5py.File(path, "w", userblock_size=512) as handle:
        writer = _V73Writer(handle)
        if params is not None:
            records = [{"name": name, "value": value} for name, value in params.items()]
            writer.write_struct_array(handle, "params", records)
        if meta_struct is not None:
            writer.write(handle, "meta", meta_struct)
    _write_v73_header(path)
    return path


def write_variables_v73(path: str | Path, variables: dict) -> Path:
    """As ``write_variables_v5``, laid out as MATLAB's ``save -v7.3`` does."""
    import h5py
    path = Path(path)
    with h5py.File(path, "w", userblock_size=512) as handle:
        writer = _V73Writer(handle)
        for name, value in variables.items():
            writer.write(handle, name, value)
    _write_v73_header(path)
    return path


def _write_v73_header(path: Path) -> None:
    created = time.strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    header = text.encode("ascii").ljust(116, b" ") + bytes(8) + b"\x00\x02" + b"IM"
    with open(path, "r+b") as raw:
        raw.write(header.ljust(512, b"\x00"))


class _V73Writer:
    def __init__(self, handle):
        self.handle = handle
        self.refs = handle.create_group("#refs#")
        self.counter = 0

    def reference(self, value):
        """Store ``value`` under #refs# and return an object reference to it."""
        name = _ref_name(self.counter)
        self.counter += 1
        self.write(self.refs, name, value)
        return self.refs[name].ref

    def write(self, parent, name: str, value) -> None:
        import h5py
        if isinstance(value, str):
            codes = np.array([ord(c) for c in value], dtype=np.uint16)
            if codes.size == 0:
                node = parent.create_dataset(name, data=np.array([1, 0], dtype=np.uint64))
                node.attrs["MATLAB_empty"] = np.uint8(1)
            else:
                node = parent.create_dataset(name, data=codes.reshape(-1, 1))  # MATLAB 1 x L
            node.attrs["MATLAB_class"] = np.bytes_("char")
            node.attrs["MATLAB_int_decode"] = np.int32(2)
        elif isinstance(value, Cell):
            refs = np.array([self.reference(item) for item in value], dtype=h5py.ref_dtype)
            node = parent.create_dataset(name, data=refs.reshape(-1, 1))      # MATLAB 1 x N
            node.attrs["MATLAB_class"] = np.bytes_("cell")
        elif isinstance(value, dict):
            group = parent.create_group(name)
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            _write_field_names(group, list(value))
            for key, item in value.items():
                self.write(group, key, item)
        elif isinstance(value, list):
            self.write_struct_array(parent, name, value)
        else:
            array = np.asarray(value)
            if array.ndim < 2:
                array = array.reshape(-1, 1)                               # MATLAB column
            node = parent.create_dataset(name, data=np.ascontiguousarray(array.T))
            node.attrs["MATLAB_class"] = np.bytes_(MATLAB_CLASSES[array.dtype])

    def write_struct_array(self, parent, name: str, records: list[dict]) -> None:
        """A 1 x N struct array: per field, a dataset of N references (no MATLAB_class)."""
        import h5py
        group = parent.create_group(name)
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        fields = list(records[0])
        _write_field_names(group, fields)
        for field in fields:
            refs = np.array([self.reference(record[field]) for record in records],
                            dtype=h5py.ref_dtype)
            group.create_dataset(field, data=refs.reshape(-1, 1))


def _write_field_names(group, names: list[str]) -> None:
    import h5py
    data = np.empty(len(names), dtype=object)
    for index, name in enumerate(names):
        data[index] = np.array(list(name), dtype="S1")
    group.attrs.create("MATLAB_fields", data, dtype=h5py.vlen_dtype(np.dtype("S1")))


def _ref_name(counter: int) -> str:
    """MATLAB names #refs# entries a, b, …, z, ba, bb, …; any unique names do."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    name = ""
    counter += 1                       # "a" is MATLAB's canonical empty; skip it
    while True:
        name = letters[counter % 26] + name
        counter //= 26
        if counter == 0:
            return name


# ---------------------------------------------------------------------------------------------
#                                  a whole network in one variable, as cnn_train(_dag) saves it
# ---------------------------------------------------------------------------------------------

VARIABLE_WRITERS = {"v5": write_variables_v5, "v7.3": write_variables_v73}


def dagnn_struct(params: dict[str, np.ndarray], meta_struct: dict) -> dict:
    """What ``DagNN.saveobj`` returns: params, meta, and layers/vars (never read by imagezoo,
    but present in real files, so a few realistic records are written)."""
    first, second = list(params)[:2]
    layers = [
        {"name": "conv1", "type": "dagnn.Conv", "inputs": Cell(["data"]), "outputs": Cell(["conv1"]),
         "params": Cell([first, second]),
         "block": {"size": np.array([[7.0, 7.0, 3.0, 16.0]]), "hasBias": np.array([[1.0]]),
                   "pad": np.array([[3.0, 3.0, 3.0, 3.0]]), "stride": np.array([[2.0, 2.0]])}},
        {"name": "pool1", "type": "dagnn.Pooling", "inputs": Cell(["conv1"]),
         "outputs": Cell(["pool1"]), "params": Cell(["none"]),
         "block": {"method": "max", "poolSize": np.array([[3.0, 3.0]]),
                   "pad": np.array([[0.0, 1.0, 0.0, 1.0]])}},
    ]
    variables = [{"name": "data", "precious": np.array([[0.0]])},
                 {"name": "conv1", "precious": np.array([[0.0]])}]
    return {"layers": layers, "vars": variables, "params": _param_records(params),
            "meta": meta_struct}


def checkpoint_companions(params: dict[str, np.ndarray]) -> dict:
    """``state`` and ``stats`` as cnn_train_dag saves them beside ``net``."""
    solver_state = Cell([np.zeros_like(value) for value in list(params.values())[:3]])
    epoch = {"num": np.array([[512.0]]), "time": np.array([[12.5]]),
             "objective": np.array([[2.1]]), "top1err": np.array([[0.7]])}
    return {"state": {"solverState": solver_state},
            "stats": {"train": [epoch, dict(epoch, objective=np.array([[1.9]]))],
                      "val": [epoch, dict(epoch, top1err=np.array([[0.6]]))]}}


def write_net(path: str | Path, version: str, params: dict[str, np.ndarray], meta_struct: dict,
              companions: bool = True) -> Path:
    """A DagNN kept whole in the variable ``net`` (a cnn_train_dag checkpoint when
    ``companions``: ``state`` and ``stats`` beside it)."""
    variables = {"net": dagnn_struct(params, meta_struct)}
    if companions:
        variables.update(checkpoint_companions(params))
    return VARIABLE_WRITERS[version](path, variables)


def simplenn_layers() -> Cell:
    """A small vl_simplenn chain: a cell array of layer structs with type and weights."""
    rng = np.random.default_rng(0)
    return Cell([
        {"type": "conv", "name": "conv1",
         "weights": Cell([rng.standard_normal((3, 3, 3, 8)).astype(np.float32),
                          np.zeros((8, 1), np.float32)]),
         "stride": np.array([[1.0, 1.0]]), "pad": np.array([[1.0, 1.0, 1.0, 1.0]])},
        {"type": "relu", "name": "relu1"},
        {"type": "pool", "name": "pool1", "method": "max", "pool": np.array([[2.0, 2.0]]),
         "stride": np.array([[2.0, 2.0]]), "pad": np.array([[0.0, 0.0, 0.0, 0.0]])},
        {"type": "softmax", "name": "prob"},
    ])


def write_simplenn(path: str | Path, version: str, under_net: bool) -> Path:
    """A SimpleNN network: ``layers`` and ``meta`` at top level (imagenet-vgg-f.mat) or in
    ``net`` with ``state`` beside it (a cnn_train checkpoint)."""
    network = {"layers": simplenn_layers(), "meta": meta(descriptions=["a", "b"])}
    variables = {"net": network, "state": {"epoch": np.array([[3.0]])}} if under_net else network
    return VARIABLE_WRITERS[version](path, variables)


def _param_records(params: dict[str, np.ndarray]) -> list[dict]:
    return [{"name": name, "value": value, "learningRate": np.array([[1.0]]),
             "weightDecay": np.array([[1.0]])} for name, value in params.items()]
