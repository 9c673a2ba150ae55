"""The training subcommand: finetune (also under torchrun)."""
from __future__ import annotations

import argparse
import os
import sys

from ..loader import load_model
from ..models.registry import DEFAULT_MODEL
from ..tasks.classify import resolve_device
from ..tasks.finetune import finetune
from .output import EXIT_OK


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
        from .viz import plot_training
        plot_training(result.out)  # curves.png beside history.jsonl
        print(f"imagezoo: wrote {result.out} (curves.png: loss and error per epoch)",
              file=sys.stderr)
    return EXIT_OK
