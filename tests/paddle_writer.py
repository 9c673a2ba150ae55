"""Test helper: write an imagezoo ResNet as a PaddlePaddle v1 parameter folder.

Written from the format's description (a 16-byte header: int32 format 0, uint32 value size 4,
uint64 element count; then float32 values, row-major; convolutions (Cout, Cin, kh, kw); the
fully connected weight (in, out); batch norm w0/w1/w2/wbias = gamma/mean/variance/beta) and the
v1 model zoo's layer names, walking the model's modules rather than reusing the reader's table,
so the round-trip tests check the reader against an independent statement of the layout.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imagezoo.models.resnet import ResNet, ResNetSpec


def write_parameter_file(path: Path, values, *, file_format: int = 0, value_size: int = 4,
                         count: int | None = None, trailing: bytes = b"") -> None:
    """One parameter file; the keyword arguments forge bad headers and sizes for tests."""
    data = np.ascontiguousarray(np.asarray(values, dtype="<f4")).reshape(-1)
    header = struct.pack("<iIQ", file_format, value_size, data.size if count is None else count)
    Path(path).write_bytes(header + data.tobytes() + trailing)


def paddle_parameters(model: ResNet) -> dict[str, np.ndarray]:
    """Paddle v1 file name -> values in the file's layout, for every parameter of ``model``."""
    params: dict[str, np.ndarray] = {}

    def conv(layer: str, module: nn.Conv2d) -> None:
        params[f"_{layer}_conv.w0"] = module.weight.detach().numpy()
        if module.bias is not None:
            params[f"_{layer}_conv.wbias"] = module.bias.detach().numpy()

    def batch_norm(layer: str, module: nn.BatchNorm2d) -> None:
        params[f"_{layer}_bn.w0"] = module.weight.detach().numpy()
        params[f"_{layer}_bn.w1"] = module.running_mean.numpy()
        params[f"_{layer}_bn.w2"] = module.running_var.numpy()
        params[f"_{layer}_bn.wbias"] = module.bias.detach().numpy()

    conv("conv1", model.conv1)
    batch_norm("conv1", model.bn1)
    branches = ("2a", "2b", "2c") if model.spec.block == "bottleneck" else ("2a", "2b")
    for stage in range(1, model.num_stages + 1):
        for index, block in enumerate(getattr(model, f"layer{stage}")):
            prefix = f"res{stage + 1}_{index + 1}_branch"
            for number, branch in enumerate(branches, start=1):
                conv(prefix + branch, getattr(block, f"conv{number}"))
                batch_norm(prefix + branch, getattr(block, f"bn{number}"))
            if block.downsample is not None:
                conv(prefix + "1", block.downsample[0])
                batch_norm(prefix + "1", block.downsample[1])
    params["_output.w0"] = model.fc.weight.detach().numpy().T  # stored (in, out)
    params["_output.wbias"] = model.fc.bias.detach().numpy()
    return params


def write_paddle_v1(model: ResNet, folder: Path) -> Path:
    """Write every parameter of ``model`` into ``folder`` (created) as Paddle v1 files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in paddle_parameters(model).items():
        write_parameter_file(folder / name, values)
    return folder


def random_resnet(spec: ResNetSpec, seed: int = 0) -> ResNet:
    """A ResNet with random weights and non-trivial batch-norm statistics, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    model = ResNet(spec)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
                module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


# ---------------------------------------------------------------------------------------------
#                                   PaddlePaddle v2: parameters.to_tar tarballs and their sidecars
# ---------------------------------------------------------------------------------------------
# python/paddle/v2/parameters.py (to_tar): per parameter `nm`, a tar member `nm` holding the v1
# file (header "IIQ" 0, 4, size, then float32 values) and a member `nm.protobuf` holding
# ParameterConfig.SerializeToString(). ParameterConfig is proto/ParameterConfig.proto (proto2):
# name = 1, size = 2, learning_rate = 3 ... decay_rate_l1 = 8 (doubles), repeated uint64 dims = 9,
# device = 10, ..., is_static = 18, is_shared = 23. The sidecars are encoded here with Google's
# protobuf package, so the importer's own small decoder is checked against the real encoder.

SIDECAR = ".protobuf"


def parameter_config_class(packed_dims: bool = False):
    """A ParameterConfig message class (a subset of its fields, numbered as in Paddle)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=f"imagezoo_test_parameter_config_{int(packed_dims)}.proto",
        package=f"imagezoo_test_{int(packed_dims)}", syntax="proto2")
    message = file_proto.message_type.add(name="ParameterConfig")
    for name, number, kind, label in [
            ("name", 1, F.TYPE_STRING, F.LABEL_REQUIRED),
            ("size", 2, F.TYPE_UINT64, F.LABEL_REQUIRED),
            ("learning_rate", 3, F.TYPE_DOUBLE, F.LABEL_OPTIONAL),
            ("initial_std", 6, F.TYPE_DOUBLE, F.LABEL_OPTIONAL),
            ("dims", 9, F.TYPE_UINT64, F.LABEL_REPEATED),
            ("device", 10, F.TYPE_INT32, F.LABEL_OPTIONAL),
            ("is_static", 18, F.TYPE_BOOL, F.LABEL_OPTIONAL),
            ("is_shared", 23, F.TYPE_BOOL, F.LABEL_OPTIONAL)]:
        field = message.field.add(name=name, number=number, type=kind, label=label)
        if name == "dims" and packed_dims:
            field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"imagezoo_test_{int(packed_dims)}.ParameterConfig"))


def parameter_dims(name: str, count: int, num_classes: int) -> list[int]:
    """dims as Paddle's config_parser gives them: fc weight [in, out], batch norm mean and
    variance [1, C], biases [1, size]; none for convolution filters and batch norm's scale."""
    if name == "_output.w0":
        return [count // num_classes, num_classes]
    if name.endswith((".w1", ".w2", ".wbias")):
        return [1, count]
    return []


def sidecar_bytes(name: str, count: int, dims: list[int], packed_dims: bool = False) -> bytes:
    config = parameter_config_class(packed_dims)(
        name=name, size=count, learning_rate=1.0, initial_std=0.01, device=-1,
        is_static=name.endswith((".w1", ".w2")), is_shared=True)
    config.dims.extend(dims)
    return config.SerializeToString()


def v2_members(v1_folder: Path, packed_dims: bool = False,
               dims_override: dict[str, list[int]] | None = None) -> dict[str, bytes]:
    """Member name -> bytes of the to_tar tarball of the model in a v1 parameter folder."""
    files = {path.name: path.read_bytes() for path in sorted(Path(v1_folder).iterdir())
             if path.name.startswith("_") and path.is_file()}
    num_classes = struct.unpack_from("<Q", files["_output.wbias"], 8)[0]
    members: dict[str, bytes] = {}
    for name, data in files.items():
        count = struct.unpack_from("<Q", data, 8)[0]
        dims = (dims_override or {}).get(name, parameter_dims(name, count, num_classes))
        members[name] = data
        members[name + SIDECAR] = sidecar_bytes(name, count, dims, packed_dims)
    return members


def write_tarball(path: Path, members: dict[str, bytes], mode: str = "w",
                  special: list | None = None) -> Path:
    """A tar of in-memory members (to_tar's layout), plus ``special`` TarInfo entries."""
    import io
    import tarfile
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name=name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in special or []:
            tar.addfile(info)
    return Path(path)


def write_v2_tarball(v1_folder: Path, path: Path, mode: str = "w", **options) -> Path:
    return write_tarball(path, v2_members(v1_folder, **options), mode)


def write_v2_folder(v1_folder: Path, folder: Path, **options) -> Path:
    """The tarball unpacked: every parameter file with its .protobuf sidecar."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in v2_members(v1_folder, **options).items():
        (folder / name).write_bytes(data)
    return folder
