"""Every random draw of a fine-tuning run, derived from the run's seed and where it is drawn.

* The new head's initial weights: the seed (``models.heads.replace_head``).
* Each epoch's order of the examples: (seed, epoch), see ``epoch_order``.
* Each augmented crop and flip: (seed, epoch, image index), see ``AugmentedTransform``; the
  same image gets the same crop whichever process or DataLoader worker decodes it.
* Dropout masks, and whatever else a layer draws from torch's global generator: (seed, epoch,
  step, rank). ``seeded_step`` seeds the global generator right before each step's forward
  pass, inside ``torch.random.fork_rng`` so that the caller's own random state is left as it
  was.
* DataLoader worker seeds: (seed, epoch, rank), through the loader's own generator. The
  workers draw nothing today (augmentation has its own generators); this keeps it exact if a
  transform ever does, and keeps the loader from drawing from the caller's global state.

Nothing random is carried from one step to the next, so a checkpoint holds no generator
state: the trainable tensors (parameters and batch-norm buffers), the optimiser's state
(momentum, Adam's moments and step counts) and the number of epochs done are all a resumed
run needs to continue exactly where an uninterrupted one would be.

"Exactly" means bit for bit on the same machine, PyTorch build, thread count and number of
processes. CPU kernels split their sums over threads, so another thread count rounds
differently, and training amplifies it (one epoch of ``--freeze none`` of EfficientNet-Lite0,
dropout off, on 1 thread against 2: losses 1.2291 against 1.2234); the checkpoint records both
counts and a resumed run says when they differ.

Under ``torchrun`` these stay per process:

* dropout masks (the rank is in their seed: each process draws for its own share of a batch);
* batch-norm batch statistics in ``--freeze none`` (each over the process's share of the
  batch; DistributedDataParallel copies rank 0's running statistics to the others before each
  forward pass, and rank 0's are saved);
* DataLoader worker seeds and the thread count (the machine's cores shared among its processes).

So the frozen path (no dropout, batch norm in eval mode) on N processes matches one process up
to the rounding of the gradient all-reduce, while ``--freeze none`` on N processes reproduces
itself (same seed and N: same weights, resumable) but not a single process.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

from ..data.augment import augmented_tensor

# Appended to a stream's numbers so that no two streams share a seed. The last number must not
# be 0: SeedSequence reads [a, b] and [a, b, 0] as the same entropy. The epoch order's stream,
# (seed, epoch), has no tag: it predates the others and tagging it would change every
# published run's order.
AUGMENT_STREAM, STEP_STREAM, LOADER_STREAM = 1, 2, 3


def mix(*numbers: int) -> int:
    """One 63-bit seed from several integers (any size), for torch.Generator.manual_seed."""
    return int(np.random.SeedSequence([abs(n) for n in numbers]).generate_state(2, np.uint64)[0] >> 1)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The order in which an epoch visits ``count`` examples."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(mix(seed, epoch)))


@contextlib.contextmanager
def seeded_step(seed: int, epoch: int, step: int, rank: int, device: torch.device) -> Iterator[None]:
    """Run one training step with torch's global generators seeded from (seed, epoch, step,
    rank): ``nn.Dropout`` cannot take a generator of its own, so it draws from these. Seeding
    by the step rather than carrying one stream through the run is what lets a resumed run
    draw the same masks without saving a generator's state."""
    accelerator = {} if device.type == "cpu" else {"devices": [device], "device_type": device.type}
    with torch.random.fork_rng(**({"devices": []} | accelerator)):
        torch.manual_seed(mix(seed, epoch, step, rank, STEP_STREAM))
        yield


def loader_generator(seed: int, rank: int, epoch: int = 0) -> torch.Generator:
    """The generator a DataLoader draws its workers' seeds from."""
    return torch.Generator().manual_seed(mix(seed, epoch, rank, LOADER_STREAM))


class AugmentedTransform:
    """A picklable transform (DataLoader workers) drawing each image's crop from
    (seed, epoch, image index) alone."""

    takes_index = True

    def __init__(self, seed: int, epoch: int):
        self.seed, self.epoch = seed, epoch

    def __call__(self, image, spec, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(mix(self.seed, self.epoch, index, AUGMENT_STREAM))
        return augmented_tensor(image, spec, generator)
