"""The picture subcommands: summary, graph, explain, plot (and the --plot options' drawing)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ImageDecodeError, ImagezooError
from .common import model_from_args
from .output import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE


def shapes_model(args: argparse.Namespace):
    """The model for a picture of its structure: only shapes matter, so a registry name with
    no bundled weights is built with seeded random ones rather than refused."""
    from ..models.registry import MODELS
    if args.weights is None and args.model in MODELS and MODELS[args.model].default_weights is None:
        args.weights = "random"
    return model_from_args(args)


def run_summary(args: argparse.Namespace) -> int:
    from ..viz import summary
    table = summary(shapes_model(args), size=args.size, depth=args.depth, names=args.names)
    print(table.to_json() if args.json else table.to_csv() if args.csv else table.format_table())
    return EXIT_OK


def run_graph(args: argparse.Namespace) -> int:
    from ..viz import write_graph
    path = write_graph(shapes_model(args), args.out, depth=args.depth, names=args.names,
                       size=args.size)
    print(f"imagezoo: wrote {path}", file=sys.stderr)
    return EXIT_OK


def run_explain(args: argparse.Namespace) -> int:
    from ..data.sources import expand_sources
    from ..viz import explain, overlay
    from ..viz.photo import as_photo
    model = model_from_args(args)
    sources = expand_sources(args.inputs)
    out = Path(args.out)
    targets = [part.strip() for part in args.classes.split(",")] if args.classes else None
    failed = 0
    for source in sources:
        try:
            photo = as_photo(source)
            explanations = explain(model, photo, layer=args.layer, target=targets, top=args.top,
                                   method=args.method)
        except ImageDecodeError as error:
            print(f"imagezoo: {error}", file=sys.stderr)
            failed += 1
            continue
        stem = Path(source).stem
        for explanation in explanations:
            suffix = f"-{explanation.index}" if len(explanations) > 1 else ""
            path = overlay(photo, explanation, out / f"{stem}-{explanation.method}{suffix}.png")
            record = {"input": source, "picture": str(path), **explanation.to_dict()}
            print(json.dumps(record) if args.json else
                  f"{source}: {explanation.label} ({explanation.probability:.2%}) on "
                  f"{explanation.layer} -> {path}")
    if sources and failed == len(sources):
        return EXIT_USAGE
    return EXIT_SOME_FAILED if failed else EXIT_OK


def run_plot(args: argparse.Namespace) -> int:
    from ..viz import training_curves
    history = Path(args.history)
    if not history.is_file():
        raise ImagezooError(f"{history}: no such history file (finetune writes "
                            f"DIR/history.jsonl)")
    path = training_curves(history, args.out or history.with_name("curves.png"))
    print(f"imagezoo: wrote {path}", file=sys.stderr)
    return EXIT_OK


def plot_predictions(results, folder: str) -> None:
    """``classify --plot DIR``: each photo beside its top-k chart, named after the photo."""
    from ..viz import prediction_chart
    for result in results:
        if result.ok:
            prediction_chart(result.input, result,
                             Path(folder) / f"{Path(result.input).stem}-prediction.png")


def plot_evaluation(evaluation, folder: str) -> None:
    from ..viz import evaluation_charts
    for path in evaluation_charts(evaluation, folder):
        print(f"imagezoo: wrote {path}", file=sys.stderr)


def plot_training(out: Path) -> None:
    """What ``finetune`` draws beside its history: ``curves.png``."""
    from ..viz import training_curves
    history = Path(out) / "history.jsonl"
    if history.is_file():
        training_curves(history, Path(out) / "curves.png")
