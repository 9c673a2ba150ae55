"""The ``imagezoo`` command: one thin subcommand per task (parse -> call the API -> print).

Exit status: 0 when everything worked, 1 when some inputs failed (the others were still
processed and printed), 2 for usage errors (bad options, unknown model, unusable weights).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__
from .errors import ImagezooError
from .loader import load_model
from .models.registry import DEFAULT_MODEL, MODELS
from .cli_output import configure_logging, print_notes, run_summary, skipped_counts
from .tasks.classify import Prediction, classify, resolve_device
from .data.batches import INFERENCE_BATCH
from .data.sources import expand_sources
from .models.layers import list_layers, resolve_layers
from .tasks.convert import convert, inspect_weights
from .tasks.evaluate import evaluate, format_report
from .tasks.distributed import is_torchrun_worker
from .tasks.finetune import finetune
from .engine import PRECISIONS, is_tuned, optimize
from .engine.backends import BACKENDS
from .export import OnnxModel, TorchScriptModel
from .tasks.feature_files import open_writer
from .tasks.features import POOLS, iter_features
from .serve import (DEFAULT_HOST, DEFAULT_PORT, listening_socket, require_server_packages,
                    serve)

PUBLISHERS = ("torchvision", "matconvnet", "paddle_v1")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagezoo", description="Image classification with pretrained residual networks.")
    parser.add_argument("--version", action="version", version=f"imagezoo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify_parser = commands.add_parser(
        "classify", help="print the top classes of images",
        description="Classify images (files, folders, list files, http(s) URLs).")
    classify_parser.add_argument("inputs", nargs="+", metavar="INPUT")
    add_model_options(classify_parser)
    classify_parser.add_argument("--top", type=positive_int, default=None, metavar="K",
                                 help="how many classes to print per image (default 5)")
    classify_parser.add_argument("--json", action="store_true",
                                 help="print JSON Lines, one object per input, in input order")
    classify_parser.add_argument("--ten-crop", action="store_true",
                                 help="average the probabilities of ten crops (corners, centre, "
                                      "and their mirrors)")
    add_source_options(classify_parser)
    classify_parser.add_argument("--list-skipped", action="store_true",
                                 help="also list the files of the folders that were not taken "
                                      "as images (with --json: one {input, skipped} object each)")
    add_engine_options(classify_parser)
    add_batch_options(classify_parser)
    classify_parser.set_defaults(handler=run_classify)

    features_parser = commands.add_parser(
        "features", help="write the outputs of named layers for many images to a file",
        description="Extract features from named layers (see 'imagezoo layers') for images.")
    features_parser.add_argument("inputs", nargs="+", metavar="INPUT")
    add_model_options(features_parser)
    features_parser.add_argument("--layers", required=True, metavar="L1,L2",
                                 help="comma-separated layer names (module paths, or Caffe / "
                                      "Paddle names such as res5c or res5_3_branch2c_bn)")
    features_parser.add_argument("--out", required=True, metavar="FILE",
                                 help=".npz, .safetensors, .h5 (streamed) or .txt (Paddle layout)")
    features_parser.add_argument("--format", choices=("npz", "safetensors", "hdf5", "text"),
                                 help="file format (default: from the extension of --out)")
    features_parser.add_argument("--pool", choices=POOLS,
                                 help="reduce spatial maps to one value per channel")
    features_parser.add_argument("--ten-crop", action="store_true",
                                 help="average the feature maps of the ten crops")
    add_source_options(features_parser)
    add_engine_options(features_parser, backend_help=FEATURES_BACKEND_HELP)
    add_batch_options(features_parser)
    features_parser.set_defaults(handler=run_features)

    layers_parser = commands.add_parser(
        "layers", help="list a model's layers with their output shapes",
        description="List layer names, types and output shapes for one 224x224 image.")
    layers_parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                               help=f"a model name, folder or weight file (default {DEFAULT_MODEL})")
    layers_parser.add_argument("--weights", metavar="FILE")
    layers_parser.add_argument("--size", type=positive_int, default=224, help="input side (224)")
    layers_parser.add_argument("--json", action="store_true", help="one JSON object per layer")
    layers_parser.set_defaults(handler=run_layers, pretrained=None, verify=False)

    evaluate_parser = commands.add_parser(
        "evaluate", help="top-1/top-k accuracy on a labelled set",
        description="Accuracy on a mapping file (path<TAB>label index, paths relative to the "
                    "file) or a folder with one subfolder per class.")
    evaluate_parser.add_argument("dataset", metavar="DATASET")
    add_model_options(evaluate_parser)
    evaluate_parser.add_argument("--classes", metavar="FILE",
                                 help="class names, one per line in the model's class order "
                                      "(maps folder names to the model's classes)")
    evaluate_parser.add_argument("--top", type=positive_int, default=None, metavar="K",
                                 help="also count a hit among the top K (default 5)")
    evaluate_parser.add_argument("--ten-crop", action="store_true")
    evaluate_parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_engine_options(evaluate_parser)
    add_batch_options(evaluate_parser)
    evaluate_parser.set_defaults(handler=run_evaluate)

    finetune_parser = commands.add_parser(
        "finetune", help="train a new classifier head on a small labelled set",
        description="Transfer learning: the base model's backbone (frozen by default) and a new "
                    "linear head for the classes of TRAIN; writes a model folder to --out.")
    finetune_parser.add_argument("--train", required=True, metavar="TRAIN",
                                 help="mapping file (path<TAB>label) or folder of class folders")
    finetune_parser.add_argument("--test", metavar="TEST", help="held-out set, evaluated at the end")
    finetune_parser.add_argument("--classes", metavar="FILE", help="names of the mapping file's classes")
    add_model_options(finetune_parser)
    finetune_parser.add_argument("--epochs", type=positive_int, default=20)
    finetune_parser.add_argument("--lr", type=float, default=0.01)
    finetune_parser.add_argument("--momentum", type=float, default=0.9)
    finetune_parser.add_argument("--weight-decay", type=float, default=0.0)
    finetune_parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    finetune_parser.add_argument("--batch-size", type=positive_int, default=32,
                                 help="global batch size, whatever the number of processes")
    finetune_parser.add_argument("--freeze", choices=("backbone", "none"), default="backbone")
    finetune_parser.add_argument("--augment", action="store_true",
                                 help="random resized crops and flips (features are then "
                                      "recomputed every epoch)")
    finetune_parser.add_argument("--seed", type=int, default=0)
    finetune_parser.add_argument("--out", required=True, metavar="DIR")
    finetune_parser.add_argument("--resume", action="store_true",
                                 help="continue from DIR's last checkpoint")
    finetune_parser.add_argument("--json", action="store_true",
                                 help="also print the per-epoch figures as JSON Lines on stdout")
    finetune_parser.add_argument("--no-feature-cache", action="store_true",
                                 help="run the whole network every epoch even when frozen")
    finetune_parser.add_argument("--workers", type=non_negative_int, default=None, metavar="N")
    finetune_parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    finetune_parser.set_defaults(handler=run_finetune)

    export_parser = commands.add_parser(
        "export", help="export a model to ONNX (checked in ONNX Runtime) or TorchScript",
        description="The exported graph takes raw RGB pixels (float32 NCHW, 0-255, at the card's "
                    "crop size) with the normalisation inside, a dynamic batch, and gives logits.")
    export_parser.add_argument("model", metavar="MODEL", help="a model name, folder or weight file")
    export_parser.add_argument("--weights", metavar="FILE")
    export_parser.add_argument("--onnx", metavar="FILE")
    export_parser.add_argument("--opset", type=positive_int, default=None,
                               help="ONNX opset (default: PyTorch's own, 20)")
    export_parser.add_argument("--torchscript", metavar="FILE")
    export_parser.set_defaults(handler=run_export, pretrained=None, verify=False)

    convert_parser = commands.add_parser(
        "convert", help="import a weight file and write an imagezoo model folder",
        description="Import a .mat, Paddle v1 folder, .pth or .safetensors file and write "
                    "weights.safetensors + card.json to DIR.")
    convert_parser.add_argument("source", metavar="SRC")
    convert_parser.add_argument("--out", required=True, metavar="DIR")
    convert_parser.set_defaults(handler=run_convert)

    inspect_parser = commands.add_parser(
        "inspect", help="describe a weight file: format, architecture, preprocessing, labels")
    inspect_parser.add_argument("source", metavar="SRC")
    inspect_parser.add_argument("--json", action="store_true", help="print one JSON object")
    inspect_parser.set_defaults(handler=run_inspect)

    engines_parser = commands.add_parser(
        "engines", help="time every inference backend for a model on this machine",
        description="The tuning table behind --backend auto: img/s of each backend for this "
                    "model, batch size and precision (measured once, then read from the cache).")
    engines_parser.add_argument("model", nargs="?", default=None, metavar="MODEL")
    engines_parser.add_argument("--weights", metavar="FILE")
    engines_parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N")
    engines_parser.add_argument("--precision", choices=PRECISIONS, default="exact")
    engines_parser.add_argument("--retune", action="store_true", help="measure again")
    engines_parser.add_argument("--json", action="store_true")
    engines_parser.set_defaults(handler=run_engines, pretrained=None, verify=False)

    serve_parser = commands.add_parser(
        "serve", help="serve a model over HTTP with an upload page",
        description="Serve a model: an upload page at http://HOST:PORT/ and a JSON API "
                    "(POST /api/classify with a multipart 'file', GET /api/model; "
                    "/openapi.json describes it). Runs on the CPU until Ctrl-C.")
    serve_parser.add_argument("model_path", nargs="?", default=None, metavar="MODEL",
                              help="a model name, folder or weight file (same as --model)")
    add_model_options(serve_parser)
    serve_parser.add_argument("--host", default=DEFAULT_HOST,
                              help=f"address to listen on (default {DEFAULT_HOST}, this machine "
                                   "only; 0.0.0.0 for the network: there is no authentication)")
    serve_parser.add_argument("--port", type=non_negative_int, default=DEFAULT_PORT,
                              help=f"default {DEFAULT_PORT}")
    serve_parser.add_argument("--top", type=positive_int, default=5, metavar="K",
                              help="classes per answer unless the request asks (?top=K)")
    serve_parser.add_argument("--ten-crop", action="store_true")
    add_engine_options(serve_parser)
    # One upload per forward pass, on the CPU.
    serve_parser.set_defaults(handler=run_serve, batch_size=10, device="cpu")

    models_parser = commands.add_parser("models", help="list the model names imagezoo knows")
    models_parser.set_defaults(handler=run_models)
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="a model name, a model folder or a weight file (default "
                             f"{DEFAULT_MODEL}, or what --weights holds); see 'imagezoo models'")
    parser.add_argument("--weights", metavar="FILE",
                        help="weight file: .pth/.pt/.safetensors (torchvision/timm names), "
                             "MatConvNet .mat, PaddlePaddle v1 folder, or 'random'")
    parser.add_argument("--pretrained", choices=PUBLISHERS, metavar="SOURCE",
                        help="use the publisher's weights for --model, from the cache or "
                             f"downloaded and checked: {', '.join(PUBLISHERS)}")
    parser.add_argument("--verify", action="store_true",
                        help="with --pretrained, check the SHA-256 of a file already in the cache")


AUTO_BACKEND_HELP = ("auto (default; $IMAGEZOO_BACKEND overrides) times each backend once for "
                     "this model and batch size and caches the winner")
FEATURES_BACKEND_HELP = ("onnxruntime or openvino: the layers as outputs of one exported graph, "
                         "checked against PyTorch; auto (default) and torch: PyTorch's hooks")


def add_engine_options(parser: argparse.ArgumentParser, backend_help: str = AUTO_BACKEND_HELP) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="exact",
                        help="exact: float32, logits within 1e-4 of PyTorch; fast: bf16/int8 "
                             "where the top-1 is unchanged on sample images (default exact)")
    parser.add_argument("--backend", choices=("auto",) + BACKENDS,
                        default=os.environ.get("IMAGEZOO_BACKEND", "auto"), help=backend_help)


def add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all-files", action="store_true",
                        help="in folders, look inside every file for an image, whatever its "
                             "extension (default: the extensions Pillow decodes)")


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=INFERENCE_BATCH, metavar="N",
                        help=f"images per forward pass (default {INFERENCE_BATCH})")
    parser.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                        help="decoding processes (default: up to 4, none for a single image)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--progress", action="store_true",
                        help="show a progress bar even when stderr is not a terminal")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def engine_from_args(args: argparse.Namespace, model, count: int):
    """The model behind --precision / --backend (an ONNX file already runs in ONNX Runtime)."""
    if isinstance(model, (OnnxModel, TorchScriptModel)) or count == 0 \
            or resolve_device(args.device).type != "cpu":
        # A compiled file runs as it is; the engines are CPU engines (a GPU runs PyTorch).
        return model
    batch_size = max(1, min(args.batch_size, count))
    if args.backend == "auto" and not is_tuned(model, args.precision, batch_size):
        print(f"imagezoo: timing the inference backends for this model at batch {batch_size} "
              f"(once; the choice is cached, see 'imagezoo engines')", file=sys.stderr)
    return optimize(model, precision=args.precision, backend=args.backend, batch_size=batch_size)


def run_classify(args: argparse.Namespace) -> int:
    resolve_device(args.device)  # a missing GPU is one line now, not a traceback later
    sources = expand_sources(args.inputs, all_files=args.all_files)
    if not sources:
        raise NoImagesError(args.inputs, sources.skipped)
    model = engine_from_args(args, model_from_args(args), len(sources))
    top = top_from_args(args, model.card)
    results = classify(model, sources, top=top, batch_size=args.batch_size,
                       workers=args.workers, device=args.device, progress=args.progress,
                       ten_crop=args.ten_crop, draft=getattr(model, "precision", None) == "fast")
    for result in results:
        if not result.ok:
            print(f"imagezoo: {result.error}", file=sys.stderr)
        print_notes(result.input, result.notes, args.verbose)
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        elif result.ok:
            print(format_table(result))
    if args.list_skipped:
        for path, reason in sources.skipped:
            print(json.dumps({"input": path, "skipped": reason}) if args.json
                  else f"skipped {path}: {reason}", flush=True)
    return finish_run("classified", [r.ok for r in results], sources.skipped,
                      noted=sum(bool(r.notes) for r in results))


class NoImagesError(ImagezooError):
    """Nothing to process: every input was empty, or every file was skipped."""

    def __init__(self, inputs: list[str], skipped: list[tuple[str, str]]):
        detail = f" ({skipped_counts(skipped)}; --all-files looks inside every file)" if skipped else ""
        super().__init__("no images found in " + ", ".join(inputs) + detail)


def finish_run(verb: str, outcomes: list[bool], skipped: list[tuple[str, str]],
               noted: int = 0) -> int:
    """Print the run's counts when there is more than one thing to count, and the exit
    status: 0 all done, 1 some failed, 2 nothing could be done."""
    done = sum(outcomes)
    failed = len(outcomes) - done
    if len(outcomes) > 1 or failed or skipped or noted:
        print(run_summary(verb, done, failed, skipped, noted), file=sys.stderr)
    if not done:
        print(f"imagezoo: error: none of the {len(outcomes)} image(s) could be read",
              file=sys.stderr)
        return EXIT_USAGE
    return EXIT_SOME_FAILED if failed else EXIT_OK


def top_from_args(args: argparse.Namespace, card) -> int:
    """--top K, or 5; a K above the model's class count ranks every class and says so."""
    if args.top is None:
        return min(5, card.num_classes)
    if args.top > card.num_classes:
        print(f"imagezoo: --top {args.top} is more than the {card.num_classes} classes of "
              f"{card.name}; showing all {card.num_classes}", file=sys.stderr)
    return min(args.top, card.num_classes)


def format_table(result: Prediction) -> str:
    lines = [result.input, f"  {'rank':>4}  {'probability':>11}  label"]
    for ranked in result.predictions:
        lines.append(f"  {ranked.rank:>4}  {ranked.probability:>11.2%}  {ranked.label}")
    return "\n".join(lines) + "\n"


def model_from_args(args: argparse.Namespace):
    """--model / --weights / --pretrained -> a loaded model. A weight file alone names its
    own architecture; nothing at all means the default model."""
    if args.model is None and args.weights is not None and args.pretrained is None:
        if args.weights == "random":
            raise ImagezooError("--weights random needs --model NAME")
        return load_model(args.weights)
    return load_model(args.model or DEFAULT_MODEL, weights=args.weights,
                      pretrained=args.pretrained, verify=args.verify)


def run_serve(args: argparse.Namespace) -> int:
    require_server_packages()  # before minutes of tuning, not after
    if args.model_path is not None:
        if args.model is not None:
            raise ImagezooError("name the model once: MODEL or --model, not both")
        args.model = args.model_path
    sock = listening_socket(args.host, args.port)  # a port in use fails now, not after loading
    with sock:
        # The engine is tuned for what one request runs: one image, or its ten crops.
        model = engine_from_args(args, model_from_args(args), count=10 if args.ten_crop else 1)
        port = sock.getsockname()[1]
        print(f"imagezoo: serving {model.card.name} ({getattr(model, 'backend', 'torch')}, "
              f"{getattr(model, 'precision', 'exact')}) on http://{args.host}:{port}/  "
              f"(Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            serve(model, sock=sock, host=args.host, top=args.top, ten_crop=args.ten_crop,
                  log_level="info" if args.verbose else "warning")
        except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop: not a failure
            print("imagezoo: stopped", file=sys.stderr)
    return EXIT_OK


def run_features(args: argparse.Namespace) -> int:
    resolve_device(args.device)
    model = model_from_args(args)
    if args.precision != "exact":
        # A feature file is only as good as its numbers: no bf16/int8 here, whatever was asked.
        print("imagezoo: features are computed in float32 (--precision fast is for classifying)",
              file=sys.stderr)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    resolve_layers(model, layers)  # an unknown name fails before any image is read
    sources = expand_sources(args.inputs, all_files=args.all_files)
    if not sources:
        raise NoImagesError(args.inputs, sources.skipped)
    outcomes: list[bool] = []
    noted = set()
    with open_writer(args.out, args.format) as writer:
        for batch in iter_features(model, sources, layers, pool=args.pool, ten_crop=args.ten_crop,
                                   batch_size=args.batch_size, workers=args.workers,
                                   device=args.device, progress=args.progress,
                                   backend=args.backend):
            writer.add(batch.inputs, batch.features)
            outcomes.extend([True] * len(batch.inputs))
            for source, error in batch.failures:
                print(f"imagezoo: {error}", file=sys.stderr)
                writer.fail(source, error)
                outcomes.append(False)
            for source, note in batch.notes:
                print_notes(source, [note], args.verbose)
                noted.add(source)
    print(f"imagezoo: wrote features of {writer.count} image(s) to {args.out}", file=sys.stderr)
    return finish_run("extracted", outcomes, sources.skipped, noted=len(noted))


def run_evaluate(args: argparse.Namespace) -> int:
    resolve_device(args.device)
    model = engine_from_args(args, model_from_args(args), args.batch_size)
    result = evaluate(model, args.dataset, top=top_from_args(args, model.card), ten_crop=args.ten_crop,
                      batch_size=args.batch_size, workers=args.workers, device=args.device,
                      progress=args.progress, classes_file=args.classes)
    for source, error in result.failed:
        print(f"imagezoo: {error}", file=sys.stderr)
    if result.count:
        print(json.dumps(result.to_dict()) if args.json else format_report(result))
    return finish_run("evaluated", [True] * result.count + [False] * len(result.failed), [])


def run_finetune(args: argparse.Namespace) -> int:
    resolve_device(args.device)
    if args.model is None and args.weights is not None:
        base, weights = args.weights, None
    else:
        base, weights = args.model or DEFAULT_MODEL, args.weights
    if args.pretrained:
        base = load_model(base, pretrained=args.pretrained, verify=args.verify)
    result = finetune(args.train, args.out, model=base, weights=weights, test=args.test,
                      classes_file=args.classes, epochs=args.epochs, lr=args.lr,
                      momentum=args.momentum, optimizer=args.optimizer,
                      weight_decay=args.weight_decay, batch_size=args.batch_size,
                      freeze=args.freeze, augment=args.augment, seed=args.seed, resume=args.resume,
                      cache_features=not args.no_feature_cache, workers=args.workers,
                      device=args.device, log_stream=sys.stderr,
                      json_stream=sys.stdout if args.json else None)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"imagezoo: wrote {result.out}", file=sys.stderr)
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    if not args.onnx and not args.torchscript:
        raise ImagezooError("say what to write: --onnx FILE and/or --torchscript FILE")
    model = model_from_args(args)
    from .export import export_onnx, export_torchscript
    if args.onnx:
        path = export_onnx(model, args.onnx, opset=args.opset)
        print(f"imagezoo: wrote {path} (checked in ONNX Runtime against PyTorch)", file=sys.stderr)
    if args.torchscript:
        path = export_torchscript(model, args.torchscript)
        print(f"imagezoo: wrote {path} (checked against PyTorch)", file=sys.stderr)
    return EXIT_OK


def run_layers(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    layers = list_layers(model, args.size)
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
    folder = convert(args.source, args.out)
    print(f"wrote {folder / 'weights.safetensors'} and {folder / 'card.json'}")
    return EXIT_OK


def run_inspect(args: argparse.Namespace) -> int:
    summary = inspect_weights(args.source)
    if args.json:
        print(json.dumps(summary))
        return EXIT_OK
    arch = dict(summary["architecture"])
    family = arch.pop("family")
    pre = summary["preprocess"]
    mean = pre["mean_image"] and f"mean image {pre['mean_image']['shape']}" or f"mean {pre['mean']}"
    rows = [
        ("format", summary["format"]),
        ("architecture", f"{family} " + ", ".join(f"{k}={v}" for k, v in arch.items())),
        ("tensors", f"{summary['tensors']} ({summary['parameters']:,} parameters)"),
        ("preprocess", f"resize {pre['resize']}, crop {pre['crop']}, {pre['interpolation']}, "
                       f"scale {pre['scale']:g}, {pre['channel_order']}, {mean}, std {pre['std']}"),
        ("classes", str(summary["num_classes"])),
        ("labels", ", ".join(summary["labels"]) + (", ..." if summary["num_classes"] > 5 else "")),
        ("sha256", summary["sha256"] or "-"),
    ]
    for key, value in rows:
        print(f"{key:<13} {value}")
    return EXIT_OK


def run_engines(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    engine = optimize(model, precision=args.precision, backend="auto",
                      batch_size=args.batch_size, retune=args.retune)
    from .engine import engine_cache
    # A fast run whose every engine missed the guard fell back to exact: show that table.
    table = json.loads((engine_cache(model) / "tuning.json").read_text())[
        f"{engine.precision}/batch{args.batch_size}"]
    if args.json:
        print(json.dumps({"chosen": engine.backend, "precision": engine.precision,
                          "numerics": engine.numerics, "table": table}))
        return EXIT_OK
    eager = next((row["images_per_second"] for row in table if row["backend"] == "torch"), None)
    print(f"{'backend':<13} {'numerics':<8} {'img/s':>8} {'vs torch':>9}  note")
    for row in table:
        rate = row["images_per_second"]
        numerics = row.get("numerics", "fp32")
        ratio = f"{rate / eager:.2f}x" if rate and eager else "-"
        chosen = (row["backend"], numerics) == (engine.backend, engine.numerics)
        mark = "  <- chosen" if chosen else ""
        print(f"{row['backend']:<13} {numerics:<8} {rate or 0:>8.1f} {ratio:>9}  "
              f"{row['problem'] or ''}{mark}")
    print(f"batch {args.batch_size}, precision {engine.precision}; cached in {engine_cache(model)}")
    return EXIT_OK


def run_models(args: argparse.Namespace) -> int:
    for name, entry in sorted(MODELS.items()):
        bundled = "bundled weights" if entry.default_weights else "weights: --weights FILE"
        print(f"{name:<20} {entry.architecture['family']:<18} {bundled}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.handler(args)
    except ImagezooError as error:
        print(f"imagezoo: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("imagezoo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, less) has gone; stop quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def run() -> None:
    """The ``imagezoo`` command and ``python -m imagezoo``: ``main`` and exit with its status."""
    code = main()
    if is_torchrun_worker():
        # Every file is written and closed by now. Skipping the interpreter's shutdown avoids
        # a race in PyTorch's gloo backend, whose threads can abort a finalising worker (see
        # tasks/distributed.py), which torchrun would report as a failed run.
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # the reader has gone (| head): nothing more to deliver
                pass
        os._exit(code)
    sys.exit(code)
