"""``classify``, ``features`` and ``evaluate`` with ``--ray``: the same commands on Ray Data
(``imagezoo.ray``), writing their rows to a Parquet or JSON Lines file."""
from __future__ import annotations

import argparse
import sys

from ..errors import ImagezooError
from .inference import finish_run, report_evaluation


def model_spec(args: argparse.Namespace, precision: str | None = None):
    from ..ray import ModelSpec
    return ModelSpec(args.model, args.weights, args.pretrained, backend=args.backend,
                     precision=precision or args.precision)


def run_options(args: argparse.Namespace) -> dict:
    return dict(batch_size=args.batch_size, ten_crop=args.ten_crop, actors=args.actors,
                gpus_per_actor=0 if args.device == "cpu" else None)


def report(run, verb: str) -> int:
    for _, error in run.failures:
        print(f"imagezoo: {error}", file=sys.stderr)
    resumed = f" ({run.resumed} from before)" if run.resumed else ""
    print(f"imagezoo: wrote {run.inputs} input(s) to {run.out}{resumed}", file=sys.stderr)
    return finish_run(verb, [True] * run.succeeded + [False] * len(run.failures), run.skipped)


def classify_on_ray(args: argparse.Namespace) -> int:
    from ..ray import run_classify
    if not args.out:
        raise ImagezooError("--ray writes its rows to a file: add --out results.parquet "
                            "(or .jsonl)")
    run = run_classify(args.inputs, model_spec(args), args.out, top=args.top or 5,
                       address=args.ray or None, resume=args.resume, all_files=args.all_files,
                       **run_options(args))
    return report(run, "classified")


def features_on_ray(args: argparse.Namespace) -> int:
    from ..ray import run_features
    if args.format is not None:
        raise ImagezooError("--ray writes Parquet or JSON Lines (by --out's extension); "
                            "--format is for the single-process command")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    run = run_features(args.inputs, model_spec(args, "exact"), args.out, layers, pool=args.pool,
                       address=args.ray or None, resume=args.resume, all_files=args.all_files,
                       **run_options(args))
    return report(run, "extracted")


def evaluate_on_ray(args: argparse.Namespace) -> int:
    from ..ray import run_evaluate
    result = run_evaluate(args.dataset, model_spec(args), args.out, top=args.top or 5,
                          address=args.ray or None, resume=args.resume,
                          classes_file=args.classes, **run_options(args))
    return report_evaluation(args, result)
