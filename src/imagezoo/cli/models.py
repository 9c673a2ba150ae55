"""The model subcommands: layers, convert, inspect, export, models."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import ImagezooError
from ..models.registry import MODELS
from .common import model_from_args
from .output import EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    if not args.onnx and not args.torchscript:
        raise ImagezooError("say what to write: --onnx FILE and/or --torchscript FILE")
    model = model_from_args(args)
    from ..export import export_onnx, export_torchscript
    if args.onnx:
        path = export_onnx(model, args.onnx, opset=args.opset)
        print(f"imagezoo: wrote {path} (checked in ONNX Runtime against PyTorch)", file=sys.stderr)
    if args.torchscript:
        path = export_torchscript(model, args.torchscript)
        print(f"imagezoo: wrote {path} (checked against PyTorch)", file=sys.stderr)
    return EXIT_OK


def run_layers(args: argparse.Namespace) -> int:
    from ..models.layers import list_layers
    model = model_from_args(args)
    card = getattr(model, "card", None)
    layers = list_layers(model, args.size or (card and card.preprocess.input_size) or 224)
    if args.json:
        for layer in layers:
            print(json.dumps(layer.to_dict()))
        return EXIT_OK
    width = max(len(layer.name) for layer in layers)
    print(f"{'name':<{width}}  {'type':<18} {'output shape':<18} also")
    for layer in layers:
        shape = "x".join(map(str, layer.output_shape[1:])) if layer.output_shape else "-"
        print(f"{layer.name:<{width}}  {layer.type:<18} {shape:<18} {' '.join(layer.aliases)}")
    return EXIT_OK


def run_convert(args: argparse.Namespace) -> int:
    from ..tasks.convert import convert
    folder = convert(args.source, args.out)
    print(f"wrote {folder / 'weights.safetensors'} and {folder / 'card.json'}")
    return EXIT_OK


def run_inspect(args: argparse.Namespace) -> int:
    from ..tasks.convert import inspect_weights
    summary = inspect_weights(args.source)
    if args.json:
        print(json.dumps(summary))
        return EXIT_OK
    arch = dict(summary["architecture"])
    family = arch.pop("family")
    pre = summary["preprocess"]
    from ..data.transforms import Preprocess
    spec = dict(pre, mean_image=None)
    geometry = Preprocess.from_dict(spec).describe()
    mean = pre["mean_image"] and f"mean image {pre['mean_image']['shape']}" or f"mean {pre['mean']}"
    rows = [
        ("format", summary["format"]),
        ("architecture", f"{family} " + ", ".join(f"{k}={v}" for k, v in arch.items())),
        ("tensors", f"{summary['tensors']} ({summary['parameters']:,} parameters)"),
        ("preprocess", f"{geometry}, scale {pre['scale']:g}, {pre['channel_order']}, {mean}, "
                       f"std {pre['std']}"),
        ("follows", pre.get("follows") or "-"),
        ("classes", str(summary["num_classes"])),
        ("labels", ", ".join(summary["labels"]) + (", ..." if summary["num_classes"] > 5 else "")),
        ("sha256", summary["sha256"] or "-"),
    ]
    for key, value in rows:
        print(f"{key:<13} {value}")
    return EXIT_OK


def run_models(args: argparse.Namespace) -> int:
    from ..weights.published import publishers_of
    for name, entry in sorted(MODELS.items()):
        publishers = publishers_of(name)
        if entry.default_weights:
            weights = "bundled weights"
        elif publishers:
            weights = f"weights: --pretrained ({', '.join(publishers)}) or --weights FILE"
        else:
            weights = "weights: --weights FILE"
        print(f"{name:<20} {entry.architecture['family']:<18} {weights}")
    return EXIT_OK


def run_cache(args: argparse.Namespace) -> int:
    from ..cache import (cache_entries, clear_cache, evict, format_entries, format_size,
                         max_bytes_setting, parse_size, resolve_cache_dir)
    if args.action == "clear":
        what = "all" if args.all else "weights" if args.weights else "engines"
        count, freed = clear_cache(args.cache_dir, what)
        print(f"removed {count} entr{'y' if count == 1 else 'ies'} ({what}), freed "
              f"{format_size(freed)} from {resolve_cache_dir(args.cache_dir)}")
        return EXIT_OK
    if args.max_size is not None:
        removed = evict(parse_size(args.max_size, "--max-size"), args.cache_dir)
        print(f"evicted {len(removed)} engine entr{'y' if len(removed) == 1 else 'ies'}, freed "
              f"{format_size(sum(entry.size for entry in removed))}")
    print(format_entries(cache_entries(args.cache_dir), args.cache_dir))
    print(f"engines are capped at {format_size(max_bytes_setting())} "
          f"(IMAGEZOO_CACHE_MAX changes it); downloaded weights are kept until "
          f"'imagezoo cache clear --weights'")
    return EXIT_OK
