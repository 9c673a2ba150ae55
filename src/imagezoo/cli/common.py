"""What several subcommands share: turning the model options into a loaded model."""
from __future__ import annotations

import argparse

from ..errors import ImagezooError
from ..choices import DEFAULT_MODEL


def model_from_args(args: argparse.Namespace):
    """--model / --weights / --pretrained -> a loaded model. A weight file alone names its
    own architecture; nothing at all means the default model."""
    from ..loader import load_model  # PyTorch comes with it: only when a model is needed
    if args.model is None and args.weights is not None and args.pretrained is None:
        if args.weights == "random" or args.weights.startswith("random:"):
            raise ImagezooError("--weights random needs --model NAME")
        return load_model(args.weights)
    return load_model(args.model or DEFAULT_MODEL, weights=args.weights,
                      pretrained=args.pretrained, verify=args.verify)
