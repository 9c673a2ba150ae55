"""The ``imagezoo`` command line's grammar: every subcommand and option, without PyTorch.

Building the parser imports nothing heavy (``imagezoo --help`` answers at once): each
subcommand names its handler as ``"module:function"`` in ``imagezoo.cli``, imported only when
that subcommand runs.
"""
from __future__ import annotations

import argparse
import os

from .. import __version__
from ..choices import (BACKENDS, DEFAULT_HOST, DEFAULT_MODEL, DEFAULT_PORT, INFERENCE_BATCH,
                       POOLS, PRECISIONS, PUBLISHERS)


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
    add_ray_options(classify_parser)
    classify_parser.add_argument("--plot", metavar="DIR",
                                 help="also draw each photo beside its top-k chart, as PNGs in DIR")
    classify_parser.add_argument("--list-skipped", action="store_true",
                                 help="also list the files of the folders that were not taken "
                                      "as images (with --json: one {input, skipped} object each)")
    add_engine_options(classify_parser)
    add_batch_options(classify_parser)
    classify_parser.set_defaults(handler="inference:run_classify")

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
    add_ray_options(features_parser, out=False)
    add_engine_options(features_parser, backend_help=FEATURES_BACKEND_HELP)
    add_batch_options(features_parser)
    features_parser.set_defaults(handler="inference:run_features")

    layers_parser = commands.add_parser(
        "layers", help="list a model's layers with their output shapes",
        description="List layer names, types and output shapes for one 224x224 image.")
    layers_parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                               help=f"a model name, folder or weight file (default {DEFAULT_MODEL})")
    layers_parser.add_argument("--weights", metavar="FILE")
    layers_parser.add_argument("--size", type=positive_int, default=None,
                               help="input side (default: the card's input size)")
    layers_parser.add_argument("--json", action="store_true", help="one JSON object per layer")
    layers_parser.set_defaults(handler="models:run_layers", pretrained=None, verify=False)

    evaluate_parser = commands.add_parser(
        "evaluate", help="top-1/top-k accuracy on a labelled set",
        description="Accuracy on a mapping file (path<TAB>label index, paths relative to the "
                    "file), a folder with one subfolder per class, or cifar10:PATH (CIFAR-10's "
                    "cifar-10-binary.tar.gz / cifar-10-python.tar.gz, or their folders).")
    evaluate_parser.add_argument("dataset", metavar="DATASET")
    add_model_options(evaluate_parser)
    evaluate_parser.add_argument("--classes", metavar="FILE",
                                 help="class names, one per line in the model's class order "
                                      "(maps folder names to the model's classes)")
    evaluate_parser.add_argument("--top", type=positive_int, default=None, metavar="K",
                                 help="also count a hit among the top K (default 5)")
    evaluate_parser.add_argument("--ten-crop", action="store_true")
    evaluate_parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_ray_options(evaluate_parser)
    evaluate_parser.add_argument("--plot", metavar="DIR",
                                 help="also draw the per-class accuracy and the most confused "
                                      "classes as PNGs in DIR")
    add_engine_options(evaluate_parser)
    add_batch_options(evaluate_parser)
    evaluate_parser.set_defaults(handler="inference:run_evaluate")

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
    finetune_parser.set_defaults(handler="training:run_finetune")

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
    export_parser.set_defaults(handler="models:run_export", pretrained=None, verify=False)

    convert_parser = commands.add_parser(
        "convert", help="import a weight file and write an imagezoo model folder",
        description="Import a .mat, Paddle v1 folder, .pth or .safetensors file and write "
                    "weights.safetensors + card.json to DIR.")
    convert_parser.add_argument("source", metavar="SRC")
    convert_parser.add_argument("--out", required=True, metavar="DIR")
    convert_parser.set_defaults(handler="models:run_convert")

    inspect_parser = commands.add_parser(
        "inspect", help="describe a weight file: format, architecture, preprocessing, labels")
    inspect_parser.add_argument("source", metavar="SRC")
    inspect_parser.add_argument("--json", action="store_true", help="print one JSON object")
    inspect_parser.set_defaults(handler="models:run_inspect")

    engines_parser = commands.add_parser(
        "engines", help="time every inference backend for a model on this machine",
        description="The tuning table behind --backend auto: img/s of each backend for this "
                    "model, batch size and precision (measured once, then read from the cache).")
    engines_parser.add_argument("model", nargs="?", default=None, metavar="MODEL")
    engines_parser.add_argument("--weights", metavar="FILE")
    engines_parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N")
    engines_parser.add_argument("--precision", choices=PRECISIONS, default="exact")
    engines_parser.add_argument("--retune", action="store_true", help="measure again")
    engines_parser.add_argument("--prepare", action="store_true",
                                help="only build and check the ONNX Runtime engine (what a "
                                     "first classify starts in the background)")
    engines_parser.add_argument("--json", action="store_true")
    engines_parser.set_defaults(handler="inference:run_engines", pretrained=None, verify=False)

    serve_parser = commands.add_parser(
        "serve", help="serve a model over HTTP with an upload page",
        description="Serve a model: an upload page at http://HOST:PORT/ and a JSON API "
                    "(POST /api/classify with a multipart 'file', GET /api/model; "
                    "/openapi.json describes it). Runs on the CPU until Ctrl-C.")
    serve_parser.add_argument("model_path", nargs="*", default=[], metavar="MODEL",
                              help="a model name, folder or weight file (same as --model); "
                                   "several: one route each, /api/models/NAME/classify")
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
    add_serve_limits(serve_parser)
    serve_parser.set_defaults(handler="inference:run_serve", device="cpu")

    add_viz_commands(commands)

    cache_parser = commands.add_parser(
        "cache", help="list, clear or trim the cache of engines and downloaded weights",
        description="The cache folder ($IMAGEZOO_CACHE, else ~/.cache/imagezoo) holds downloaded "
                    "weights and built engines. With no action: list its entries with sizes. "
                    "Engines are capped (2 GiB, or $IMAGEZOO_CACHE_MAX), least recently used "
                    "first; downloaded weights are never removed unless asked.")
    cache_parser.add_argument("action", nargs="?", choices=("list", "clear"), default="list")
    cache_parser.add_argument("--weights", action="store_true",
                              help="with clear: remove the downloaded weights instead of engines")
    cache_parser.add_argument("--all", action="store_true",
                              help="with clear: remove engines and downloaded weights")
    cache_parser.add_argument("--max-size", metavar="SIZE",
                              help="remove the least recently used engines until they take at "
                                   "most SIZE (e.g. 500M, 2G)")
    cache_parser.add_argument("--cache-dir", metavar="DIR", help="default $IMAGEZOO_CACHE")
    cache_parser.set_defaults(handler="models:run_cache")

    models_parser = commands.add_parser("models", help="list the model names imagezoo knows")
    models_parser.set_defaults(handler="models:run_models")
    return parser


def add_serve_limits(parser: argparse.ArgumentParser) -> None:
    """Batching, admission, time limits, origins: how the server holds up under load."""
    from ..serve import limits
    parser.add_argument("--max-batch", type=positive_int, default=INFERENCE_BATCH, metavar="N",
                        help=f"images run together in one forward pass at most (default "
                             f"{INFERENCE_BATCH}; 1: one at a time)")
    parser.add_argument("--max-wait-ms", type=non_negative_float, default=limits.MAX_WAIT_MS,
                        metavar="MS", help="how long a forward pass that could start waits for "
                                           f"more images (default {limits.MAX_WAIT_MS:g})")
    parser.add_argument("--max-queue", type=positive_int, default=limits.MAX_QUEUE, metavar="N",
                        help="images held at once, from upload to answer; beyond it 503 with "
                             f"Retry-After (default {limits.MAX_QUEUE})")
    parser.add_argument("--max-pixels-in-flight", type=positive_float,
                        default=limits.MAX_PIXELS_IN_FLIGHT / 1e6, metavar="MP",
                        help="megapixels decoded at once; beyond it 503 with Retry-After "
                             f"(default {limits.MAX_PIXELS_IN_FLIGHT / 1e6:g}: one 8000x8000 "
                             "image beside ordinary photos)")
    parser.add_argument("--timeout", type=positive_float, default=limits.REQUEST_TIMEOUT,
                        metavar="S", help="seconds for a request's headers and body to arrive, "
                                          "and its budget in the queue (default "
                                          f"{limits.REQUEST_TIMEOUT:g})")
    parser.add_argument("--grace", type=non_negative_float, default=limits.GRACE_PERIOD,
                        metavar="S", help="on SIGTERM or Ctrl-C, seconds the requests in hand "
                                          f"get before the server exits (default "
                                          f"{limits.GRACE_PERIOD:g})")
    parser.add_argument("--allow-origin", dest="allow_origins", action="append", default=[],
                        metavar="ORIGIN", help="a web origin (https://app.example) whose pages "
                                               "may POST here besides the server's own; "
                                               "repeatable; * for any")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="do not log one line per request on stderr")


def add_viz_commands(commands) -> None:
    """summary, graph, explain, plot: pictures of a network and of its predictions."""
    names_help = "layer names: torch module paths, or those of the Caffe / Paddle files"
    summary_parser = commands.add_parser(
        "summary", help="layer table: output shapes, parameters, multiply-adds",
        description="Every layer (or the blocks and stages, with --depth) with its output shape, "
                    "trainable and frozen parameters and multiply-adds for one image; convolutions "
                    "and linear layers are counted (batch norm folds into them), as torchvision does.")
    summary_parser.add_argument("model", metavar="MODEL", help="a model name, folder or weight file")
    summary_parser.add_argument("--weights", metavar="FILE")
    summary_parser.add_argument("--size", type=positive_int, default=None,
                                help="input side (default: the card's crop)")
    summary_parser.add_argument("--depth", type=positive_int, default=None,
                                help="collapse below this many levels (1: stages, 2: blocks)")
    summary_parser.add_argument("--names", choices=("torch", "caffe", "paddle"), default="torch",
                                help=names_help)
    formats = summary_parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true")
    formats.add_argument("--csv", action="store_true")
    summary_parser.set_defaults(handler="viz:run_summary", pretrained=None, verify=False)

    graph_parser = commands.add_parser(
        "graph", help="draw the network's data flow with Graphviz",
        description="The forward pass as a diagram: each step with its type and output shape, "
                    "blocks and stages as boxes, shortcuts dashed. .svg/.png/.pdf need Graphviz's "
                    "dot program; .dot does not.")
    graph_parser.add_argument("model", metavar="MODEL")
    graph_parser.add_argument("--weights", metavar="FILE")
    graph_parser.add_argument("--out", required=True, metavar="FILE", help=".svg, .png, .pdf or .dot")
    graph_parser.add_argument("--depth", type=positive_int, default=None,
                              help="collapse blocks (2) or stages (1) so a deep network fits a page")
    graph_parser.add_argument("--names", choices=("torch", "caffe", "paddle"), default="torch",
                              help=names_help)
    graph_parser.add_argument("--size", type=positive_int, default=None)
    graph_parser.set_defaults(handler="viz:run_graph", pretrained=None, verify=False)

    explain_parser = commands.add_parser(
        "explain", help="class-activation heat maps: where the evidence for a class lies",
        description="Grad-CAM (default), Grad-CAM++ or CAM heat maps of images, overlaid on the "
                    "photo with the class and its probability; one PNG per image and class.")
    explain_parser.add_argument("inputs", nargs="+", metavar="IMAGE")
    add_model_options(explain_parser)
    explain_parser.add_argument("--layer", metavar="L",
                                help="default: the last convolutional stage (layer4, or Lite0's "
                                     "last block); any name 'imagezoo layers' lists")
    targets = explain_parser.add_mutually_exclusive_group()
    targets.add_argument("--class", dest="classes", metavar="C1,C2",
                         help="class indices or labels to explain (default: the top classes)")
    targets.add_argument("--top", type=positive_int, default=1, metavar="K",
                         help="explain the K most likely classes (default 1)")
    explain_parser.add_argument("--method", choices=("gradcam", "gradcam++", "cam"),
                                default="gradcam")
    explain_parser.add_argument("--out", required=True, metavar="DIR")
    explain_parser.add_argument("--json", action="store_true",
                                help="one JSON object per picture: class, layer, peak")
    explain_parser.set_defaults(handler="viz:run_explain")

    plot_parser = commands.add_parser(
        "plot", help="redraw a fine-tuning run's loss and error curves",
        description="Loss and error per epoch from DIR/history.jsonl (finetune draws the same "
                    "DIR/curves.png when it ends).")
    plot_parser.add_argument("history", metavar="DIR/history.jsonl")
    plot_parser.add_argument("--out", metavar="FILE", help="default: curves.png beside it")
    plot_parser.set_defaults(handler="viz:run_plot")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="a model name, a model folder or a weight file (default "
                             f"{DEFAULT_MODEL}, or what --weights holds); see 'imagezoo models'")
    parser.add_argument("--weights", metavar="FILE",
                        help="weight file: .pth/.pt/.safetensors (torchvision/timm names), "
                             "MatConvNet .mat, PaddlePaddle v1 folder, or random[:SEED] "
                             "(seeded, 0 by default)")
    parser.add_argument("--pretrained", nargs="?", const="auto", choices=(*PUBLISHERS, "auto"),
                        metavar="SOURCE",
                        help="use the publisher's weights for --model, from the cache or "
                             f"downloaded and checked: {', '.join(PUBLISHERS)} (alone: the "
                             "model's own publisher; put it after the images)")
    parser.add_argument("--verify", action="store_true",
                        help="with --pretrained, check the SHA-256 of a file already in the cache")


AUTO_BACKEND_HELP = ("auto (default; $IMAGEZOO_BACKEND overrides): the timed winner when "
                     "'imagezoo engines' or a long run has timed the backends, else a rule "
                     "(a cached ONNX Runtime engine, or eager PyTorch) with no waiting")
FEATURES_BACKEND_HELP = ("onnxruntime or openvino: the layers as outputs of one exported graph, "
                         "checked against PyTorch; auto (default) and torch: PyTorch's hooks")


def add_engine_options(parser: argparse.ArgumentParser, backend_help: str = AUTO_BACKEND_HELP) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="exact",
                        help="exact: float32, logits within 1e-4 of PyTorch; fast: bf16/int8 "
                             "where the top-1 is unchanged on sample images (default exact)")
    parser.add_argument("--backend", choices=("auto",) + BACKENDS,
                        default=os.environ.get("IMAGEZOO_BACKEND", "auto"), help=backend_help)


def add_ray_options(parser: argparse.ArgumentParser, out: bool = True) -> None:
    """--ray [ADDRESS]: the same command on Ray Data (imagezoo.ray), rows to a file."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run on Ray: a local instance, or the cluster at ADDRESS (or "
                             "$RAY_ADDRESS); put it after the inputs, or write --ray=ADDRESS")
    if out:
        parser.add_argument("--out", metavar="FILE",
                            help="with --ray: where the rows go (.parquet or .jsonl)")
    parser.add_argument("--resume", action="store_true",
                        help="with --ray: keep the rows --out already holds, do the rest")
    parser.add_argument("--actors", type=positive_int, default=None, metavar="N",
                        help="with --ray: model actors (default: as the cluster allows)")


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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value
