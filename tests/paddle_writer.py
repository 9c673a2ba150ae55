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
