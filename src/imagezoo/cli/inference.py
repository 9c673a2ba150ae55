"""The inference subcommands: classify, features, evaluate, serve, engines.

PyTorch is imported inside the handlers that need it: ``classify`` first looks for the
model's cached ONNX Runtime engine and, when it finds one, runs without PyTorch
(``engine/light.py``, ``tasks/light_classify.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from ..data.sources import expand_sources
from ..errors import ImagezooError
from .common import model_from_args
from .output import (EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, print_notes, run_summary,
                     skipped_counts)

# Set to 0 to keep a first run from preparing the model's engine in the background.
BACKGROUND_ENV = "IMAGEZOO_BACKGROUND_ENGINES"


def engine_from_args(args: argparse.Namespace, model, count: int):
    """The model behind --precision / --backend (an ONNX file already runs in ONNX Runtime).
    A short run never waits for timing: ``optimize`` then picks the backend by rule, and this
    says which one and why (on stderr)."""
    from ..engine import is_tuned, optimize
    from ..export import OnnxModel, TorchScriptModel
    from ..tasks.classify import resolve_device
    if isinstance(model, (OnnxModel, TorchScriptModel)) or count == 0 \
            or resolve_device(args.device).type != "cpu":
        # A compiled file runs as it is; the engines are CPU engines (a GPU runs PyTorch).
        return model
    batch_size = max(1, min(args.batch_size, count))
    tuned = args.backend != "auto" or is_tuned(model, args.precision, batch_size)
    engine = optimize(model, precision=args.precision, backend=args.backend,
                      batch_size=batch_size, images=count,
                      progress=getattr(args, "progress", False))
    if not tuned:
        print(f"imagezoo: running on {engine.backend} ({engine.note}); no timing for "
              f"{count} image(s)", file=sys.stderr)
        if engine.backend == "torch":
            prepare_in_background(args, batch_size)
    return engine


def prepare_in_background(args: argparse.Namespace, batch_size: int) -> None:
    """Build and check the model's ONNX Runtime engine in a detached, low-priority process,
    so that the next run starts on it (and without PyTorch). Skipped under
    ``IMAGEZOO_BACKGROUND_ENGINES=0``, and for models the cache cannot name again."""
    from ..engine.records import source_key
    if os.environ.get(BACKGROUND_ENV, "1") == "0" or getattr(args, "pretrained", None):
        return
    if source_key(args.model, args.weights) is None:
        return
    command = [sys.executable, "-m", "imagezoo", "engines", "--prepare",
               "--batch-size", str(batch_size)]
    if args.model is not None:
        command.append(args.model)
    if args.weights is not None:
        command += ["--weights", args.weights]
    try:
        subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True,
                         preexec_fn=lambda: os.nice(10))
    except OSError:
        return
    print("imagezoo: preparing the ONNX Runtime engine in the background for the next run "
          f"({BACKGROUND_ENV}=0 turns this off)", file=sys.stderr)


def light_engine_from_args(args: argparse.Namespace, count: int):
    """The model's cached, checked ONNX Runtime engine, found without PyTorch, when this run
    would use it: CPU, exact precision, backend auto or onnxruntime. None otherwise."""
    from ..engine.light import CACHED_ENGINE, find_light_engine, gpu_present
    if args.device == "cuda" or (args.device == "auto" and gpu_present()):
        return None
    if getattr(args, "pretrained", None):
        return None
    batch_size = max(1, min(args.batch_size, count))
    name, weights = args.model, args.weights
    if name is None and weights is not None and not weights.startswith("random"):
        name, weights = weights, None   # a weight file alone names its own model (model_from_args)
    engine = find_light_engine(name, weights, args.precision, args.backend, batch_size)
    if engine is not None and engine.origin != CACHED_ENGINE:
        # A first run on the shipped graph: say so, as the rule-chosen engines do.
        print(f"imagezoo: running on {engine.backend} ({engine.origin})", file=sys.stderr)
    return engine


def run_classify(args: argparse.Namespace) -> int:
    if args.ray is not None:
        from .cluster import classify_on_ray
        return classify_on_ray(args)
    sources = expand_sources(args.inputs, all_files=args.all_files)
    if not sources:
        raise NoImagesError(args.inputs, sources.skipped)
    light = light_engine_from_args(args, len(sources))
    if light is not None:
        from ..tasks.light_classify import classify_light
        results = classify_light(light, sources, top=top_from_args(args, light.card),
                                 batch_size=args.batch_size, ten_crop=args.ten_crop,
                                 progress=args.progress, skipped=sources.skipped)
    else:
        from ..tasks.classify import classify, resolve_device
        resolve_device(args.device)  # a missing GPU is one line now, not a traceback later
        model = engine_from_args(args, model_from_args(args), len(sources))
        results = classify(model, sources, top=top_from_args(args, model.card),
                           batch_size=args.batch_size, workers=args.workers, device=args.device,
                           progress=args.progress, ten_crop=args.ten_crop,
                           draft=getattr(model, "precision", None) == "fast")
    if args.plot:
        from .viz import plot_predictions
        plot_predictions(results, args.plot)
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


def format_table(result) -> str:
    lines = [result.input, f"  {'rank':>4}  {'probability':>11}  label"]
    for ranked in result.predictions:
        lines.append(f"  {ranked.rank:>4}  {ranked.probability:>11.2%}  {ranked.label}")
    return "\n".join(lines) + "\n"


def run_serve(args: argparse.Namespace) -> int:
    from ..serve import listening_socket, require_server_packages, serve
    require_server_packages()  # before minutes of tuning, not after
    names = list(args.model_path)
    if names and args.model is not None:
        raise ImagezooError("name the model once: MODEL or --model, not both")
    if len(names) > 1 and (args.weights is not None or args.pretrained):
        raise ImagezooError("--weights and --pretrained go with one model; give several "
                            "models as model folders or files")
    names = names or [args.model]
    sock = listening_socket(args.host, args.port)  # a port in use fails now, not after loading
    with sock:
        # The engine is made for what one forward pass runs: up to --max-batch uploads.
        args.batch_size = args.max_batch * (10 if args.ten_crop else 1)
        models, explainers = [], []
        for name in names:
            args.model = name
            light = light_engine_from_args(args, args.batch_size)
            if light is not None:   # the cached engine: served without importing PyTorch
                models.append(light)
                explainers.append(deferred_eager_model(args))
            else:
                eager = model_from_args(args)
                models.append(engine_from_args(args, eager, count=args.batch_size))
                explainers.append(eager_for_heat_maps(eager))
        port = sock.getsockname()[1]
        shown = ", ".join(f"{m.card.name} ({getattr(m, 'backend', 'torch')}, "
                          f"{getattr(m, 'precision', 'exact')})" for m in models)
        print(f"imagezoo: serving {shown} on http://{args.host}:{port}/  (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        try:
            serve(models[0] if len(models) == 1 else models, sock=sock, host=args.host,
                  top=args.top, ten_crop=args.ten_crop,
                  log_level="info" if args.verbose else "warning", max_batch=args.max_batch,
                  max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                  max_pixels_in_flight=int(args.max_pixels_in_flight * 1e6),
                  timeout=args.timeout, grace=args.grace, allow_origins=args.allow_origins,
                  access_log=args.access_log, explainer=explainers[0])
        except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop: not a failure
            pass
        print("imagezoo: stopped", file=sys.stderr)
    return EXIT_OK


def eager_for_heat_maps(model):
    """The PyTorch model the page's heat maps are drawn with (None for a compiled file)."""
    from ..serve.app import eager_model
    return eager_model(model)


def deferred_eager_model(args: argparse.Namespace):
    """The PyTorch model of the heat maps of a server running without PyTorch: loaded (and
    PyTorch imported) when the first heat map is asked for."""
    from ..serve.explain import Deferred
    named = argparse.Namespace(**vars(args))
    return Deferred(lambda: model_from_args(named))


def run_features(args: argparse.Namespace) -> int:
    if args.ray is not None:
        from .cluster import features_on_ray
        return features_on_ray(args)
    from ..models.layers import resolve_layers
    from ..tasks.classify import resolve_device
    from ..tasks.feature_files import open_writer
    from ..tasks.features import iter_features
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
    if args.ray is not None:
        from .cluster import evaluate_on_ray
        return evaluate_on_ray(args)
    light = light_engine_from_args(args, args.batch_size)
    if light is not None:
        from ..tasks.light_evaluate import evaluate_light
        result = evaluate_light(light, args.dataset, top=top_from_args(args, light.card),
                                ten_crop=args.ten_crop, batch_size=args.batch_size,
                                progress=args.progress, classes_file=args.classes)
        return report_evaluation(args, result)
    from ..tasks.classify import resolve_device
    from ..tasks.evaluate import evaluate
    from ..tasks.evaluation import labelled_inputs
    resolve_device(args.device)
    model = model_from_args(args)
    # The set is matched to the model first: its size decides whether timing pays.
    labelled = labelled_inputs(args.dataset, model.card, args.classes)
    model = engine_from_args(args, model, len(labelled))
    result = evaluate(model, labelled, top=top_from_args(args, model.card), ten_crop=args.ten_crop,
                      batch_size=args.batch_size, workers=args.workers, device=args.device,
                      progress=args.progress, classes_file=None)
    return report_evaluation(args, result)


def report_evaluation(args: argparse.Namespace, result) -> int:
    """An ``Evaluation`` on the terminal: failures, the report (or JSON), the plots, counts."""
    from ..tasks.evaluation import format_report
    for _, error in result.failed:
        print(f"imagezoo: {error}", file=sys.stderr)
    if result.count:
        print(json.dumps(result.to_dict()) if args.json else format_report(result))
        if args.plot:
            from .viz import plot_evaluation
            plot_evaluation(result, args.plot)
    return finish_run("evaluated", [True] * result.count + [False] * len(result.failed), [])


def run_engines(args: argparse.Namespace) -> int:
    from ..engine import optimize
    from ..engine.optimizer import tuning_file
    from ..engine.records import read_json, table_key
    model = model_from_args(args)
    if args.prepare:  # what a first run starts in the background: the ORT engine, checked
        engine = optimize(model, backend="onnxruntime", batch_size=args.batch_size)
        print(f"imagezoo: {engine.backend} engine ready"
              + (f" ({engine.note})" if engine.note else ""), file=sys.stderr)
        return EXIT_OK
    measured = table_key(args.precision, args.batch_size) in read_json(tuning_file(model))
    engine = optimize(model, precision=args.precision, backend="auto", batch_size=args.batch_size,
                      retune=args.retune or not measured, progress=True)
    # A fast run whose every engine missed the guard fell back to exact: show that table.
    table = read_json(tuning_file(model))[table_key(engine.precision, args.batch_size)]
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
    print(f"batch {args.batch_size}, precision {engine.precision}; timings in "
          f"{tuning_file(model).parent} (shared by every model of this architecture)")
    return EXIT_OK
