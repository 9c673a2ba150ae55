"""The layer table: every module's output shape, parameters and multiply-adds, and the totals.

Conventions (the ones torchvision uses for the figures it publishes with its weights, the
``num_params`` and ``_ops`` "GFLOPS" of ``torchvision.models.ResNet50_Weights`` and the
documentation's model table):

* **Parameters**: every element of every parameter tensor, a tensor shared by two modules once;
  *trainable* when it ``requires_grad``, *frozen* otherwise. Buffers (batch-norm running
  statistics) are not parameters.
* **Multiply-adds** per image, for one ``size`` x ``size`` input (the card's crop by default),
  counted from each layer's own arithmetic in a dry run with forward hooks:

  - convolution: output elements x (input channels / groups) x kernel area
    (``out_h * out_w * C_out * C_in/groups * k_h * k_w`` for a 2-D convolution);
  - fully connected: output elements x input features (``in * out`` for one vector).

  Nothing else is counted: not biases, not batch norm (it folds into the convolution before it
  at inference, so it costs nothing in a deployed network), not activations, pooling or the
  residual additions. That is the convention of torchvision's published figures (one
  multiply-add, which torchvision labels one "FLOP"): ResNet-18 11,689,512 parameters and
  1.814 G, ResNet-34 21,797,672 and 3.664 G, ResNet-50 25,557,032 and 4.089 G, ResNet-101
  44,549,160 and 7.801 G, ResNet-152 60,192,808 and 11.514 G, all at 224 x 224;
  EfficientNet-Lite0 has 4,652,008 parameters and 0.385 G.

  The original Caffe/MSRA ResNets ("v1": stride in the first 1x1 convolution of a
  downsampling bottleneck, Caffe's ceil-mode pool1, a bias on conv1) have 64 parameters more
  and, for the bottleneck depths, fewer multiply-adds: 3.858 G, 7.570 G and 11.282 G for
  ResNet-50/101/152, near the 3.8, 7.6 and 11.3 x 10^9 "FLOPs" of He et al. 2015, Table 1.
  The table's notes say so for such a model, with the exact difference.

Rows: with ``depth=None`` every module; with ``depth=D`` the modules at most ``D`` levels below
the model (for a ResNet, 1: the stages ``layer1``..``layer4``; 2: their blocks; 3: the
layers of a block, the projection shortcut collapsed). A *collapsed* row (depth ``D``, with
children) carries its whole subtree's figures; an *expanded* row (its children follow) carries
only what it owns itself, usually nothing, so the figures of the rows add up to the totals.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..errors import ImagezooError
from ..models.resnet import ResNet
from .dryrun import dry_run
from .naming import display_names, shown_name


@dataclass
class SummaryRow:
    name: str                              # as shown: module path, or its Caffe/Paddle name
    module: str                            # module path
    type: str
    depth: int                             # 1 for the model's children
    output_shape: tuple[int, ...] | None   # None: the dry run did not call this module
    trainable: int
    frozen: int
    mult_adds: int
    expanded: bool = False                 # its children are rows too; figures are its own only

    @property
    def parameters(self) -> int:
        return self.trainable + self.frozen

    def to_dict(self) -> dict:
        return {"name": self.name, "module": self.module, "type": self.type, "depth": self.depth,
                "output_shape": None if self.output_shape is None else list(self.output_shape),
                "trainable": self.trainable, "frozen": self.frozen,
                "parameters": self.parameters, "mult_adds": self.mult_adds,
                "expanded": self.expanded}


@dataclass
class Summary:
    model: str
    input_shape: tuple[int, ...]           # 1 x 3 x H x W
    names: str
    depth: int | None
    rows: list[SummaryRow]
    trainable: int
    frozen: int
    mult_adds: int
    notes: list[str] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return self.trainable + self.frozen

    def to_dict(self) -> dict:
        return {"model": self.model, "input_shape": list(self.input_shape), "names": self.names,
                "depth": self.depth, "rows": [row.to_dict() for row in self.rows],
                "totals": {"trainable": self.trainable, "frozen": self.frozen,
                           "parameters": self.parameters, "mult_adds": self.mult_adds},
                "notes": list(self.notes)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """One line per row, then a ``total`` line; shapes as ``1x64x112x112``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["name", "module", "type", "depth", "output_shape", "trainable",
                         "frozen", "parameters", "mult_adds", "expanded"])
        for row in self.rows:
            writer.writerow([row.name, row.module, row.type, row.depth,
                             _shape(row.output_shape, "x"), row.trainable, row.frozen,
                             row.parameters, row.mult_adds, int(row.expanded)])
        writer.writerow(["total", "", "", 0, _shape(self.input_shape, "x"), self.trainable,
                         self.frozen, self.parameters, self.mult_adds, 0])
        return buffer.getvalue()

    def format_table(self) -> str:
        """A plain-text table with the totals and the notes as its footer."""
        header = ("layer", "type", "output shape", "trainable", "frozen", "mult-adds")
        lines = [[("  " * (row.depth - 1)) + row.name, row.type, _shape(row.output_shape),
                  *(("-", "-", "-") if row.expanded and not (row.parameters or row.mult_adds)
                    else (f"{row.trainable:,}", f"{row.frozen:,}", f"{row.mult_adds:,}"))]
                 for row in self.rows]
        total = ["total", "", _shape(self.input_shape) + " in", f"{self.trainable:,}",
                 f"{self.frozen:,}", f"{self.mult_adds:,}"]
        widths = [max(len(str(line[i])) for line in [header, total, *lines])
                  for i in range(len(header))]

        def render(cells) -> str:
            left = [f"{cells[i]:<{widths[i]}}" for i in range(3)]
            right = [f"{cells[i]:>{widths[i]}}" for i in range(3, len(cells))]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(render(header))
        out = [render(header), rule, *(render(line) for line in lines), rule, render(total), ""]
        out.append(f"{self.model}: {self.parameters:,} parameters ({_giga(self.parameters, 'M')}), "
                   f"{self.mult_adds:,} multiply-adds ({_giga(self.mult_adds)}) per "
                   f"{self.input_shape[-2]} x {self.input_shape[-1]} image")
        out += [f"note: {note}" for note in self.notes]
        return "\n".join(out)


def summary(model: nn.Module, size: int | tuple[int, int] | None = None, depth: int | None = None,
            names: str = "torch") -> Summary:
    """The layer table of ``model`` for one ``size`` x ``size`` image (see the module docstring).

    ``size`` defaults to the card's crop (224 for every bundled model); ``depth`` collapses the
    rows below that many levels; ``names`` is ``torch`` (module paths), ``caffe`` or
    ``paddle`` (the names ``imagezoo.models.layers.layer_aliases`` knows; other layers keep
    their module path).
    """
    shown = display_names(model, names)
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    modules = {name: module for name, module in model.named_modules() if name}
    if not modules:
        raise ImagezooError(f"{type(model).__name__} exposes no layers (an ONNX or TorchScript "
                            f"file gives only its logits); summarise the PyTorch model")
    height, width = _input_size(model, size)
    shapes, own_mult_adds = measure(model, (1, 3, height, width))
    trainable, frozen = _own_parameters(model)
    rows = []
    for path, module in modules.items():
        level = path.count(".") + 1
        if depth is not None and level > depth:
            continue
        has_children = next(module.children(), None) is not None
        expanded = has_children and (depth is None or level < depth)
        paths = [path] if not has_children or expanded else _subtree(path, modules)
        rows.append(SummaryRow(
            name=shown_name(path, shown), module=path, type=type(module).__name__, depth=level,
            output_shape=shapes.get(path), trainable=sum(trainable.get(p, 0) for p in paths),
            frozen=sum(frozen.get(p, 0) for p in paths),
            mult_adds=sum(own_mult_adds.get(p, 0) for p in paths), expanded=expanded))
    card = getattr(model, "card", None)
    result = Summary(model=card.name if card is not None else type(model).__name__,
                     input_shape=(1, 3, height, width), names=names, depth=depth, rows=rows,
                     trainable=sum(trainable.values()), frozen=sum(frozen.values()),
                     mult_adds=sum(own_mult_adds.values()))
    result.notes = _notes(model, result, shown)
    return result


def measure(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[dict, dict]:
    """One dry run (see ``dryrun.py``): each module's output shape (its last call) and the
    multiply-adds of each convolution and fully connected layer (all its calls)."""
    shapes: dict[str, tuple[int, ...]] = {}
    mult_adds: dict[str, int] = {}

    def record(path: str):
        def hook(module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor):
                shapes[path] = tuple(output.shape)
                count = layer_mult_adds(module, output)
                if count:
                    mult_adds[path] = mult_adds.get(path, 0) + count
        return hook

    def start_afresh() -> None:
        shapes.clear()
        mult_adds.clear()

    hooks = [module.register_forward_hook(record(path))
             for path, module in model.named_modules() if path]
    try:
        dry_run(model, input_shape, start_afresh)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes, mult_adds


def layer_mult_adds(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one call of a convolution or linear layer, per image (batch item)."""
    per_image = output[0].numel() if output.dim() > 1 else output.numel()
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return per_image * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def _own_parameters(model: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """Module path -> elements of the parameters it registers itself, each tensor counted once."""
    seen: set[int] = set()
    trainable: dict[str, int] = {}
    frozen: dict[str, int] = {}
    for path, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            target = trainable if parameter.requires_grad else frozen
            target[path] = target.get(path, 0) + parameter.numel()
    return trainable, frozen


def _subtree(path: str, modules: dict[str, nn.Module]) -> list[str]:
    return [name for name in modules if name == path or name.startswith(path + ".")]


def _input_size(model: nn.Module, size) -> tuple[int, int]:
    if size is None:
        card = getattr(model, "card", None)
        size = (card.preprocess.input_size if card is not None else None) or 224
    if isinstance(size, int):
        size = (size, size)
    height, width = (int(side) for side in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, not {size}")
    return height, width


def _notes(model: nn.Module, result: Summary, shown: dict[str, str]) -> list[str]:
    notes = ["multiply-adds: convolutions and fully connected layers only, as torchvision's "
             "published GFLOPS count them; batch norm is not counted (it folds into the "
             "convolution before it), nor biases, activations, pooling or the residual additions"]
    if any(row.expanded for row in result.rows):
        notes.append("'-': a module whose layers follow it, indented, carry its figures")
    if result.names != "torch" and not shown:
        notes.append(f"{result.model} has no {result.names} layer names; module paths are shown")
    if isinstance(model, ResNet):
        notes += _resnet_v1_note(model, result)
    return notes


def _resnet_v1_note(model: ResNet, result: Summary) -> list[str]:
    """How a Caffe/MSRA (v1) ResNet's figures differ from torchvision's v1.5 of the same depth."""
    spec = model.spec
    v15 = replace(spec, stride_in_1x1=False, pool1="torchvision", conv1_bias=False)
    if v15 == spec:
        return []
    with torch.device("meta"):   # shapes and counts only: no memory, no arithmetic
        twin = ResNet(v15)
    _, twin_mult_adds = measure(twin, result.input_shape)
    twin_parameters = sum(p.numel() for p in twin.parameters())
    what = []
    if spec.stride_in_1x1 and spec.block == "bottleneck":
        what.append("stride 2 in the first 1x1 convolution of a bottleneck")
    if spec.pool1 == "caffe":
        what.append("Caffe's pool1 (no padding, rounded up)")
    if spec.conv1_bias:
        what.append("a bias on conv1")
    parameters = result.parameters - twin_parameters
    mult_adds = result.mult_adds - sum(twin_mult_adds.values())
    return [f"ResNet v1 (Caffe/MSRA: {', '.join(what)}): {parameters:+,} parameters and "
            f"{mult_adds:+,} multiply-adds ({_giga(mult_adds)}) against torchvision's v1.5 "
            f"(stride in the 3x3) of the same depth, whose figures torchvision publishes"]


def _shape(shape: tuple[int, ...] | None, joiner: str = " x ") -> str:
    return "-" if shape is None else joiner.join(str(side) for side in shape)


def _giga(count: int, unit: str = "G") -> str:
    scale = {"G": 1e9, "M": 1e6}[unit]
    return f"{count / scale:.3f} {unit}" if unit == "G" else f"{count / scale:.2f} {unit}"
