"""One forward pass to learn shapes, without the arithmetic.

The model's parameters and buffers are swapped, for the duration of the call, for tensors on
PyTorch's ``meta`` device (shapes and dtypes, no storage): every layer runs its shape logic
only, so ResNet-152 takes milliseconds, and nothing in the model can change (batch-norm
statistics included). A layer without a meta implementation makes it fall back to a real run
on zeros, in eval mode without gradients. The model is left in the mode it was in.
"""
from __future__ import annotations

import itertools
import logging
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


def dry_run(module: nn.Module, input_shape: tuple[int, ...],
            before_attempt: Callable[[], None] = lambda: None):
    """``module(zeros(input_shape))`` with meta tensors, else for real; returns the output.

    ``before_attempt`` runs before each try, so that hooks collecting figures start afresh
    when the meta run fails half-way."""
    was_training = module.training
    module.eval()
    try:
        named = itertools.chain(module.named_parameters(remove_duplicate=False),
                                module.named_buffers(remove_duplicate=False))
        tensors = {name: torch.empty_like(tensor, device="meta") for name, tensor in named}
        dtype = _input_dtype(module)
        try:
            before_attempt()
            with torch.no_grad():
                return torch.func.functional_call(
                    module, tensors, (torch.zeros(input_shape, dtype=dtype, device="meta"),))
        except (NotImplementedError, RuntimeError) as error:
            log.debug("no shape-only run for %s (%s); running it on zeros",
                      type(module).__name__, error)
        before_attempt()
        with torch.no_grad():
            return module(torch.zeros(input_shape, dtype=dtype, device=_device(module)))
    finally:
        module.train(was_training)


def _input_dtype(module: nn.Module) -> torch.dtype:
    parameter = next(module.parameters(), None)
    if parameter is not None and parameter.is_floating_point():
        return parameter.dtype
    return torch.float32


def _device(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
