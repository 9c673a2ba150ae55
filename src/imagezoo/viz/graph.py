"""The network as a data-flow diagram, drawn by Graphviz.

The graph is the model's own forward pass, traced with ``torch.fx`` (every module without
children is one step; functions such as the residual ``add``, ``flatten`` or EfficientNet's
``relu6`` are steps too) and run once on a zero image to learn each step's output shape. So
the shortcut of a residual block is drawn as it is computed: the block's input goes to the
first convolution and, directly or through the projection (``downsample``), to the ``add``;
the edge that brings the shortcut into the ``add`` is dashed.

Each node shows its name (module path, or its Caffe/Paddle name with ``names=``), its type
(with the kernel and stride of a convolution or pooling) and its output shape per image,
channels x height x width. ``depth=D`` draws every module ``D`` levels below the model as one
node (for a ResNet, 1: the four stages; 2: the blocks, so ResNet-152 fits a page; 3: the layers
of each block with the projection shortcut as one node); the modules that contain the nodes
are drawn as boxes around them (stages around blocks, blocks around their layers).

Rendering to SVG, PNG or PDF needs Graphviz's ``dot`` program (Debian: ``apt-get install
graphviz``); the ``.dot`` source is written without it.
"""
from __future__ import annotations

import operator
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import graphviz
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ImagezooError
from ..fileio import atomic_path
from .dryrun import dry_run
from .naming import display_names, shown_name

FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_DOT = "apt-get install graphviz (Debian, Ubuntu), brew install graphviz (macOS)"


@dataclass
class _Node:
    id: str
    name: str              # first line of the label ("" for a function step)
    type: str
    shape: tuple[int, ...] | None
    clusters: tuple[str, ...]   # module paths of the boxes around it, outermost first
    function: bool = False


@dataclass
class _Flow:
    nodes: dict[str, _Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], bool] = field(default_factory=dict)   # -> is a shortcut


class _LeafTracer(fx.Tracer):
    """Every module without children is one step, whatever its Python class."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return next(module.children(), None) is None


class _ShapeRun(nn.Module):
    """Runs a traced model step by step, noting each step's output shape in its node."""

    def __init__(self, traced: fx.GraphModule):
        super().__init__()
        self.traced = traced

    def forward(self, x: torch.Tensor):
        return ShapeProp(self.traced).propagate(x)


def network_graph(model: nn.Module, depth: int | None = None, names: str = "torch",
                  size: int | None = None) -> graphviz.Digraph:
    """The data-flow diagram of ``model`` for one ``size`` x ``size`` image (the card's crop
    by default) as a ``graphviz.Digraph``; ``.source`` is its dot text."""
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    shown = display_names(model, names)
    flow = _data_flow(model, depth, shown, _size(model, size))
    card = getattr(model, "card", None)
    title = card.name if card is not None else type(model).__name__
    graph = graphviz.Digraph(name=title, graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "fontsize": "12", "labelloc": "t",
        "label": f"{title}\noutput shapes per image: channels x height x width"
                 f"\ndashed: the shortcut of a residual block",
        "nodesep": "0.25", "ranksep": "0.3"},
        node_attr={"fontname": "Helvetica", "fontsize": "10", "shape": "box",
                   "style": "rounded", "margin": "0.1,0.04"},
        edge_attr={"arrowsize": "0.6"})
    tree: dict[tuple[str, ...], list[str]] = {}
    for node in flow.nodes.values():
        tree.setdefault(node.clusters, []).append(node.id)
    _emit(graph, (), tree, flow, model, shown)
    for (tail, head), shortcut in flow.edges.items():
        graph.edge(tail, head, style="dashed" if shortcut else "solid")
    return graph


def write_graph(model: nn.Module, out_path: str | os.PathLike, depth: int | None = None,
                names: str = "torch", size: int | None = None) -> Path:
    """Draw the diagram to ``out_path``: ``.svg``, ``.png``, ``.pdf`` (with Graphviz's ``dot``)
    or ``.dot`` (the source, always). Written atomically; returns the path."""
    out = Path(out_path)
    kind = out.suffix.lower().lstrip(".")
    kind = "dot" if kind == "gv" else kind
    if kind not in FORMATS:
        what = out.suffix or "a file without an extension"
        raise ImagezooError(f"{out}: cannot draw a graph as {what}; use .svg, .png, .pdf or .dot")
    graph = network_graph(model, depth, names, size)
    if kind == "dot":
        with atomic_path(out) as temporary:
            temporary.write_text(graph.source, encoding="utf-8")
        return out
    dot = shutil.which("dot")
    if dot is None:
        raise ImagezooError(
            f"{out}: drawing .{kind} needs Graphviz's 'dot' program, which is not installed. "
            f"Write the source instead ({out.with_suffix('.dot').name}) and render it where dot "
            f"is installed: dot -T{kind} {out.with_suffix('.dot').name} -o {out.name}; to "
            f"install dot: {INSTALL_DOT}")
    # dot run directly with SOURCE_DATE_EPOCH, which cairo 1.17 and later write into a PDF
    # as its date; an older cairo's date is replaced afterwards.
    environment = {**os.environ, "SOURCE_DATE_EPOCH": "0"}
    try:
        done = subprocess.run([dot, f"-T{kind}"], input=graph.source.encode("utf-8"),
                              capture_output=True, env=environment, check=False)
    except OSError as error:
        raise ImagezooError(f"{out}: cannot run {dot} ({error})") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ImagezooError(f"{out}: dot failed ({said[-1] if said else done.returncode})")
    data = _without_creation_date(done.stdout) if kind == "pdf" else done.stdout
    with atomic_path(out) as temporary:
        temporary.write_bytes(data)
    return out


def _without_creation_date(pdf: bytes) -> bytes:
    """The PDF with its creation date set to 1970-01-01 (cairo before 1.17 ignores
    SOURCE_DATE_EPOCH): same length, so the cross-reference offsets stay right."""
    def epoch(match: re.Match) -> bytes:
        digits = iter(b"19700101000000" + b"0" * 16)
        return bytes(next(digits) if 48 <= byte <= 57 else byte for byte in match.group(0))
    return re.sub(rb"/CreationDate \(D:[^)]*\)", epoch, pdf)


def _data_flow(model: nn.Module, depth: int | None, shown: dict[str, str], size: int) -> _Flow:
    try:
        traced = fx.GraphModule(model, _LeafTracer().trace(model))
    except Exception as error:  # noqa: BLE001 - any tracing failure means the same to a user
        raise ImagezooError(f"cannot trace {type(model).__name__} into a graph ({error}); "
                            f"a diagram needs the PyTorch model, not an exported one") from None
    dry_run(_ShapeRun(traced), (1, 3, size, size))

    flow = _Flow()
    key_of: dict[fx.Node, str] = {}
    shortcuts = _shortcut_edges(traced.graph)
    for node in traced.graph.nodes:
        if node.op == "output":
            continue
        path = _path(node)
        if depth is not None and len(path) > depth:
            group = ".".join(path[:depth])
            key = f"module {group}"
            module = model.get_submodule(group)
            entry = _Node(key, shown_name(group, shown), _group_type(module), None,
                          _prefixes(path[:depth - 1]))
        elif node.op == "placeholder":
            key = "input"
            entry = _Node(key, "input", "image", None, ())
        elif node.op == "call_module":
            key = f"step {node.name}"
            entry = _Node(key, shown_name(node.target, shown),
                          _module_type(model.get_submodule(node.target)), None,
                          _prefixes(path[:-1]))
        else:
            key = f"step {node.name}"
            entry = _Node(key, "", _function_name(node), None, _prefixes(path[:-1]), True)
        entry = flow.nodes.setdefault(key, entry)
        entry.shape = _shape(node) or entry.shape    # a group shows its last step's output
        key_of[node] = key
        for source in node.all_input_nodes:
            if source in key_of and key_of[source] != key:
                edge = (key_of[source], key)
                # A collapsed edge is dashed only when every step it stands for is a shortcut.
                flow.edges[edge] = flow.edges.get(edge, True) and (source, node) in shortcuts
    return flow


def _shortcut_edges(graph: fx.Graph) -> set[tuple[fx.Node, fx.Node]]:
    """The steps of each residual shortcut: from the addition back along its earliest operand
    (the block's input, or the projection, which a block computes before its main branch)
    to the step whose output forks into the two branches."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    edges = set()
    for node in graph.nodes:
        if not _is_add(node) or len(node.all_input_nodes) != 2:
            continue
        target, source = node, min(node.all_input_nodes, key=order.get)
        while True:
            edges.add((source, target))
            if len(source.users) > 1 or len(source.all_input_nodes) != 1:
                break
            target, source = source, source.all_input_nodes[0]
    return edges


def _emit(graph, prefix: tuple[str, ...], tree, flow: _Flow, model: nn.Module,
          shown: dict[str, str]) -> None:
    """The nodes directly in ``prefix`` (a chain of module paths), then each box inside it."""
    for node_id in tree.get(prefix, []):
        node = flow.nodes[node_id]
        lines = [line for line in (node.name, node.type, _shape_text(node.shape)) if line]
        attributes = {"shape": "ellipse", "style": "solid"} if node.function else {}
        if node_id == "input":
            attributes = {"shape": "box", "style": "solid"}
        graph.node(node_id, "\n".join(lines), **attributes)
    children = sorted({key[len(prefix)] for key in tree if len(key) > len(prefix)
                       and key[:len(prefix)] == prefix},
                      key=lambda path: min(i for i, key in enumerate(tree) if path in key))
    for child in children:
        with graph.subgraph(name=f"cluster_{child}") as box:
            box.attr(label=f"{shown_name(child, shown)} ({type(model.get_submodule(child)).__name__})",
                     style="rounded,dashed", color="gray40", fontsize="10", labeljust="l")
            _emit(box, prefix + (child,), tree, flow, model, shown)


def _path(node: fx.Node) -> tuple[str, ...]:
    """A step's place in the module tree: a module's path, or for a function the path of
    the module whose forward calls it, plus the step's own name."""
    if node.op == "call_module":
        return tuple(node.target.split("."))
    if node.op == "placeholder":
        return ("input",)
    stack = node.meta.get("nn_module_stack") or {}
    owner = list(stack.values())[-1][0] if stack else ""
    return (*(owner.split(".") if owner else ()), node.name)


def _prefixes(parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(".".join(parts[:i]) for i in range(1, len(parts) + 1))


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _shape_text(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return ""
    return " x ".join(str(side) for side in (shape[1:] if len(shape) > 1 else shape))


def _module_type(module: nn.Module) -> str:
    name = type(module).__name__
    kernel = getattr(module, "kernel_size", None)
    if kernel is None:
        return name
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * 2
    stride = getattr(module, "stride", 1)
    stride = stride if isinstance(stride, tuple) else (stride,) * 2
    text = f"{name} {'x'.join(str(k) for k in kernel)}"
    if max(stride) > 1:
        text += f" /{stride[0] if len(set(stride)) == 1 else 'x'.join(map(str, stride))}"
    if getattr(module, "groups", 1) > 1 and module.groups == getattr(module, "in_channels", 0):
        text += " depthwise"
    return text


def _group_type(module: nn.Module) -> str:
    children = list(module.children())
    kinds = {type(child).__name__ for child in children}
    if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(kinds) == 1:
        return f"{len(children)} x {kinds.pop()}"
    if isinstance(module, nn.Sequential) and 1 < len(children) <= 3 and not any(
            next(child.children(), None) is not None for child in children):
        return " + ".join(_module_type(child) for child in children)   # a projection shortcut
    return type(module).__name__


def _function_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, torch.add)) or \
        (node.op == "call_method" and node.target == "add")


def _size(model: nn.Module, size: int | None) -> int:
    if size is None:
        card = getattr(model, "card", None)
        size = (card.preprocess.input_size if card is not None else None) or 224
    return int(size)
