"""Transfer learning: a pretrained backbone, a new linear head, SGD, checkpoints, many processes.

The new model is the base model's input normalisation (its card's preprocessing) + its
backbone (frozen by default: no gradients, batch norm and dropout in eval mode) + a new linear
head for the K classes of the training set, trained with softmax cross-entropy; the metric is
the classification error.

With a frozen backbone and no augmentation the backbone's output never changes, so its pooled
features are computed once and only the head is trained on them: every epoch costs a few
matrix products instead of a forward pass over every image. The result equals training through
the whole network with the same seed (the batches are the same, only the rounding of the
backbone's batched arithmetic differs).

Everything random is derived from the seed (``randomness.py`` lists the draws): the head's
initial weights, each epoch's order (seed, epoch), each augmented crop (seed, epoch, image) and
the dropout masks of ``--freeze none`` (seed, epoch, step, rank). So the same seed and data give
the same weights, bit for bit, with every option, and a run resumed from its checkpoint ends
where an uninterrupted one does: the checkpoint holds the trainable tensors (batch-norm
buffers included), the optimiser's state and the epochs done, and no generator state is
needed. Under ``torchrun`` each of N processes takes every N-th example of each global batch
and DistributedDataParallel averages the gradients; dropout masks and batch-norm batch
statistics stay per process (see ``randomness.py``), so the frozen path matches one process
up to rounding, and ``--freeze none`` on N processes reproduces N processes.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..card import ModelCard
from ..data.batches import ImageDataset, collate, default_workers, _one_thread_per_worker
from ..data.datasets import LabelledSet, check_trainable, read_labelled_set
from ..data.transforms import preprocess_image
from ..errors import DatasetError, ImagezooError
from ..fileio import atomic_path, atomic_write_text
from ..model_folder import is_model_folder, save_model
from ..models.heads import head_of, replace_head, with_num_classes
from ..models.registry import DEFAULT_MODEL
from .distributed import Distributed
from .progress import EpochRecord, ProgressTable, epoch_event, evaluation_event
from .randomness import AugmentedTransform, epoch_order, loader_generator, seeded_step

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.jsonl"
OPTIMIZERS = ("sgd", "adamw")
FREEZE = ("backbone", "none")


@dataclass
class Settings:
    """What determines the result; a resumed run must use the same (``epochs`` may grow)."""

    epochs: int = 20
    lr: float = 0.01
    momentum: float = 0.9
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    batch_size: int = 32
    freeze: str = "backbone"
    augment: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ImagezooError(f"--lr must be a positive number, not {self.lr}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ImagezooError(f"--momentum must be in [0, 1), not {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ImagezooError(f"--weight-decay must be 0 or more, not {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ImagezooError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.freeze not in FREEZE:
            raise ImagezooError(f"freeze must be one of {FREEZE}, not {self.freeze!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ImagezooError("epochs and batch size must be at least 1 and lr positive")
        if self.seed < 0:  # the seeds are mixed by absolute value: -1 would repeat 1's run
            raise ImagezooError(f"--seed must be 0 or more, not {self.seed}")


@dataclass
class FinetuneResult:
    model: nn.Module
    out: Path
    history: list[EpochRecord]
    test_error: float | None = None
    test_count: int = 0


def finetune(train: str | os.PathLike | LabelledSet, out: str | os.PathLike,
             model: str | os.PathLike | nn.Module | None = None, weights: str | None = None,
             test: str | os.PathLike | LabelledSet | None = None,
             classes_file: str | os.PathLike | None = None, *, epochs: int = 20, lr: float = 0.01,
             momentum: float = 0.9, optimizer: str = "sgd", weight_decay: float = 0.0,
             batch_size: int = 32, freeze: str = "backbone", augment: bool = False, seed: int = 0,
             resume: bool = False, cache_features: bool = True, workers: int | None = None,
             device: str = "auto", log_stream: TextIO | None | str = "stderr",
             json_stream: TextIO | None = None) -> FinetuneResult:
    """Train a new classifier on ``train`` and write it as a model folder at ``out``.

    ``train``/``test``: a mapping file (``path<TAB>label``), a folder with one subfolder per
    class, or a ``LabelledSet``. ``model``: the base model (a name, folder, weight file or
    module; default ``efficientnet_lite0``), ``weights`` as for ``load_model``.
    ``cache_features=False`` forces the full forward pass every epoch even when the backbone is
    frozen (slower, same result; the benchmark compares the two).

    ``out`` receives ``checkpoint.pt`` after every epoch (atomically), ``history.jsonl`` and, at
    the end, ``weights.safetensors`` + ``card.json``. ``resume=True`` continues from the
    checkpoint. Under ``torchrun`` only rank 0 writes files and prints. The table goes to
    ``log_stream`` (standard error by default, ``None`` for silence).
    """
    if log_stream == "stderr":
        log_stream = sys.stderr
    settings = Settings(epochs, lr, momentum, optimizer, weight_decay, batch_size, freeze, augment, seed)
    with Distributed.from_environment(device) as dist:
        trainer = Trainer(settings, Path(out), dist, workers, log_stream if dist.is_main else None,
                          json_stream if dist.is_main else None)
        return trainer.run(train, test, model, weights, classes_file, resume, cache_features)


class Trainer:
    def __init__(self, settings: Settings, out: Path, dist: Distributed, workers: int | None,
                 log_stream: TextIO | None, json_stream: TextIO | None):
        self.settings = settings
        self.out = out
        self.dist = dist
        self.workers = workers
        self.log_stream = log_stream
        self.progress = ProgressTable(log_stream, json_stream, settings.epochs)

    # -- the whole run -------------------------------------------------------------------
    def run(self, train, test, base, weights, classes_file, resume: bool, cache_features: bool):
        train_set = _labelled(train, classes_file=classes_file)
        check_trainable(train_set)
        test_set = None
        if test is not None:
            test_set = _labelled(test, classes_file=classes_file, classes=train_set.classes,
                                 num_classes=train_set.num_classes)
        model = self._new_model(base, weights, train_set)
        checkpoint = self._checkpoint_to_resume(resume, train_set, self.base_card)
        cached = self.settings.freeze == "backbone" and not self.settings.augment and cache_features
        if cached:
            inputs, labels = self._features(model, train_set)
        else:
            inputs, labels = self._readable(model, train_set), None
        trainable = self._trainable(model)
        optimizer = self._optimizer(trainable)
        records: list[EpochRecord] = []
        if checkpoint is not None:
            trainable.load_state_dict(checkpoint["trainable"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            records = [EpochRecord(**r) for r in checkpoint["records"]]
            if self.log_stream:
                print(f"resuming from epoch {len(records)} of {self.out / CHECKPOINT_FILE}",
                      file=self.log_stream)
            self._warn_if_other_arithmetic(checkpoint)
        wrapped = self.dist.wrap(trainable)
        for epoch in range(len(records), self.settings.epochs):
            started = time.perf_counter()
            if cached:
                loss_sum, errors, count = self._epoch_on_features(wrapped, optimizer, inputs, labels, epoch)
            else:
                loss_sum, errors, count = self._epoch_on_images(model, wrapped, optimizer, inputs,
                                                                train_set, epoch)
            seen = count + (records[-1].examples if records else 0)
            total_loss = loss_sum + (records[-1].average_loss * records[-1].examples if records else 0.0)
            records.append(EpochRecord(epoch + 1, total_loss / seen, loss_sum / count, errors / count,
                                       seen, self.settings.lr, round(time.perf_counter() - started, 4)))
            self._save_checkpoint(trainable, optimizer, records, train_set)
            self.progress.epoch(records[-1])
        model.eval()
        result = FinetuneResult(model, self.out, records)
        if test_set is not None and self.dist.is_main:  # one process evaluates the whole set
            result.test_error, result.test_count = self._test_error(model, test_set)
            self.progress.evaluation("test", result.test_error, result.test_count)
        if self.dist.is_main:
            save_model(model, self.out, model.card)
            self._write_history(records, result)
        self.dist.barrier()
        return result

    # -- set-up ----------------------------------------------------------------------------
    def _new_model(self, base, weights, train_set: LabelledSet) -> nn.Module:
        from ..loader import load_model
        if isinstance(base, nn.Module):
            model = copy.deepcopy(base)
        else:
            model = load_model(base or DEFAULT_MODEL, weights=weights) if weights or not _is_path(base) \
                else load_model(base)
        base_card: ModelCard = model.card
        self.base_card = base_card
        replace_head(model, train_set.num_classes, self.settings.seed)
        model.card = dataclasses.replace(
            base_card, name=self.out.name, labels=list(train_set.classes),
            architecture=with_num_classes(base_card.architecture, train_set.num_classes),
            source=f"fine-tuned from {base_card.name} ({base_card.source or 'unknown weights'})",
            source_format="imagezoo", sha256=base_card.sha256, reference_accuracy={})
        if self.settings.freeze == "backbone":
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            for parameter in head_of(model).parameters():
                parameter.requires_grad_(True)
        return model.to(self.dist.device)

    def _trainable(self, model: nn.Module) -> nn.Module:
        return head_of(model) if self.settings.freeze == "backbone" else model

    def _optimizer(self, trainable: nn.Module) -> torch.optim.Optimizer:
        parameters = [p for p in trainable.parameters() if p.requires_grad]
        if self.settings.optimizer == "adamw":
            return torch.optim.AdamW(parameters, lr=self.settings.lr,
                                     weight_decay=self.settings.weight_decay)
        return torch.optim.SGD(parameters, lr=self.settings.lr, momentum=self.settings.momentum,
                               weight_decay=self.settings.weight_decay)

    def _checkpoint_to_resume(self, resume: bool, train_set: LabelledSet, base_card: ModelCard) -> dict | None:
        path = self.out / CHECKPOINT_FILE
        if not path.exists() and is_model_folder(self.out):
            raise ImagezooError(f"{self.out} already holds a model (card.json); choose another --out "
                                f"rather than overwrite it")
        if not path.exists():
            if resume and self.log_stream:
                print(f"no checkpoint in {self.out}; starting from the beginning", file=self.log_stream)
            return None
        if not resume:
            raise ImagezooError(f"{self.out} already holds a training run ({CHECKPOINT_FILE}); "
                                f"pass --resume to continue it or choose another --out")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = dict(checkpoint["settings"])
        now = dataclasses.asdict(self.settings)
        saved.pop("epochs"), now.pop("epochs")
        if saved != now:
            changed = ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in now if saved.get(k) != now[k])
            raise ImagezooError(f"{path}: was trained with other settings ({changed}); resume "
                                f"with the same settings or start a new run")
        if checkpoint["classes"] != list(train_set.classes):
            raise ImagezooError(f"{path}: was trained on the classes {checkpoint['classes']}, not "
                                f"{list(train_set.classes)}; resume with the same data")
        if checkpoint.get("base") not in (None, _base_identity(base_card)):
            raise ImagezooError(f"{path}: was trained on another base model "
                                f"({checkpoint['base']}); resume with the same --model/--weights")
        return checkpoint

    def _warn_if_other_arithmetic(self, checkpoint: dict) -> None:
        """A resumed run continues exactly only with the processes and threads it started with."""
        now = (self.dist.world_size, torch.get_num_threads())
        then = (checkpoint.get("world_size", now[0]), checkpoint.get("threads", now[1]))
        if then == now or not self.dist.is_main:
            return
        line = (f"the run started with {then[0]} process(es) of {then[1]} thread(s) and resumes with "
                f"{now[0]} of {now[1]}: it will not end with exactly the weights of an uninterrupted run")
        log.warning(line)
        if self.log_stream:
            print(f"imagezoo: warning: {line}", file=self.log_stream)

    # -- data -------------------------------------------------------------------------------
    def _loader(self, dataset, index_batches: list[list[int]], epoch: int = 0) -> DataLoader:
        workers = default_workers(len(dataset)) if self.workers is None else self.workers
        # The loader's own generator: the workers' seeds come from the run's seed, not from
        # the process's global random state.
        return DataLoader(dataset, batch_sampler=index_batches, num_workers=workers,
                          collate_fn=collate,
                          worker_init_fn=_one_thread_per_worker if workers else None,
                          generator=loader_generator(self.settings.seed, self.dist.rank, epoch))

    def _report_unreadable(self, labelled: LabelledSet, failures: list[tuple[int, str]]) -> None:
        for index, message in failures:
            where = labelled.describe(index)
            # A class-folder item is described by its path, which the message starts with.
            line = f"skipped {message}" if message.startswith(f"{where}: ") else \
                f"skipped {where}: {message}"
            if self.log_stream:
                print(f"imagezoo: {line}", file=self.log_stream)
            else:
                log.warning(line)

    def _features(self, model: nn.Module, labelled: LabelledSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled backbone features of every readable image, computed once (sharded over the
        processes, then gathered so each holds them all)."""
        dataset = ImageDataset(labelled.paths, model.card.preprocess)
        mine = list(range(self.dist.rank, len(dataset), self.dist.world_size))
        batches = [mine[i:i + self.settings.batch_size] for i in range(0, len(mine), self.settings.batch_size)]
        rows: list[tuple[int, torch.Tensor]] = []
        failures: list[tuple[int, str]] = []
        model.eval()
        with torch.inference_mode():
            for batch in self._loader(dataset, batches):
                failures.extend(batch.failures)
                if batch.tensor is not None:
                    features = model.forward_features(batch.tensor.to(self.dist.device)).cpu()
                    rows.extend(zip(batch.indices, features))
        rows, failures = self.dist.gather_lists(rows), self.dist.gather_lists(failures)
        self._report_unreadable(labelled, sorted(failures))
        if not rows:
            raise DatasetError(f"{labelled.source}: none of the images could be read")
        rows.sort(key=lambda row: row[0])
        kept = [index for index, _ in rows]
        _check_classes_left(labelled, kept)
        features = torch.stack([row for _, row in rows]).to(self.dist.device)
        labels = torch.tensor([labelled.labels[i] for i in kept], device=self.dist.device)
        return features, labels

    def _readable(self, model: nn.Module, labelled: LabelledSet) -> list[int]:
        """Indices of the images that decode (each is decoded once here, and reported if not)."""
        dataset = ImageDataset(labelled.paths, model.card.preprocess, transform=_decode_only)
        index_batches = [list(range(i, min(i + 64, len(dataset)))) for i in range(0, len(dataset), 64)]
        kept, failures = [], []
        for batch in self._loader(dataset, index_batches):
            kept.extend(batch.indices)
            failures.extend(batch.failures)
        self._report_unreadable(labelled, failures)
        if not kept:
            raise DatasetError(f"{labelled.source}: none of the images could be read")
        _check_classes_left(labelled, kept)
        return kept

    # -- one epoch ----------------------------------------------------------------------------
    def _global_batches(self, count: int, epoch: int) -> list[torch.Tensor]:
        order = epoch_order(self.settings.seed, epoch, count)
        size = self.settings.batch_size
        return [order[start:start + size] for start in range(0, count, size)]

    def _step(self, wrapped: nn.Module, optimizer, logits_of, targets: torch.Tensor,
              global_size: int, epoch: int, step: int) -> tuple[float, int]:
        # Dropout draws its masks in the forward pass (backward reuses them).
        with seeded_step(self.settings.seed, epoch, step, self.dist.rank, self.dist.device):
            logits = logits_of()
        # Each process sums its share and scales by world / global batch, so the mean that
        # DistributedDataParallel takes over processes is the global batch's mean loss.
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        (loss_sum * self.dist.world_size / global_size).backward()
        optimizer.step()
        errors = int((logits.argmax(dim=1) != targets).sum())
        return float(loss_sum.detach()), errors

    def _epoch_on_features(self, wrapped, optimizer, features, labels, epoch: int):
        wrapped.train()
        loss_sum, errors, count = 0.0, 0, 0
        for step, global_batch in enumerate(self._global_batches(len(labels), epoch)):
            local = global_batch[self.dist.rank::self.dist.world_size].to(self.dist.device)
            batch_loss, batch_errors = self._step(wrapped, optimizer, lambda: wrapped(features[local]),
                                                  labels[local], len(global_batch), epoch, step)
            loss_sum, errors, count = loss_sum + batch_loss, errors + batch_errors, count + len(local)
        return self._totals(loss_sum, errors, count)

    def _totals(self, loss_sum: float, errors: int, count: int) -> tuple[float, int, int]:
        """This process's figures summed over all processes (each saw its own share)."""
        loss_sum, errors, count = self.dist.sum(loss_sum, errors, count)
        return loss_sum, int(round(errors)), int(round(count))

    def _epoch_on_images(self, model, wrapped, optimizer, kept: list[int], labelled: LabelledSet,
                         epoch: int):
        frozen = self.settings.freeze == "backbone"
        model.eval() if frozen else model.train()
        if frozen:
            head_of(model).train()
        transform = (AugmentedTransform(self.settings.seed, epoch) if self.settings.augment
                     else preprocess_image)
        dataset = ImageDataset(labelled.paths, model.card.preprocess, transform=transform)
        globals_ = self._global_batches(len(kept), epoch)
        local_batches = [[kept[int(i)] for i in batch[self.dist.rank::self.dist.world_size]]
                         for batch in globals_]
        loss_sum, errors, count = 0.0, 0, 0
        crop = model.card.preprocess.crop or model.card.preprocess.resize or 224
        for step, (batch, global_batch) in enumerate(zip(self._loader(dataset, local_batches, epoch),
                                                         globals_)):
            # A process can get no example of a small last batch; it still takes the step.
            images = (torch.zeros(0, 3, crop, crop) if batch.tensor is None else batch.tensor).to(self.dist.device)
            targets = torch.tensor([labelled.labels[i] for i in batch.indices], dtype=torch.long,
                                   device=self.dist.device)  # long even when empty
            if frozen:
                with torch.no_grad():
                    features = model.forward_features(images)
                logits_of = lambda: wrapped(features)  # noqa: E731 - the head only
            else:
                logits_of = lambda: wrapped(images)  # noqa: E731 - the whole network
            batch_loss, batch_errors = self._step(wrapped, optimizer, logits_of, targets,
                                                  len(global_batch), epoch, step)
            loss_sum, errors, count = loss_sum + batch_loss, errors + batch_errors, count + len(targets)
        return self._totals(loss_sum, errors, count)

    # -- evaluation and files -------------------------------------------------------------
    def _test_error(self, model: nn.Module, labelled: LabelledSet) -> tuple[float, int]:
        dataset = ImageDataset(labelled.paths, model.card.preprocess)
        batches = [list(range(i, min(i + self.settings.batch_size, len(dataset))))
                   for i in range(0, len(dataset), self.settings.batch_size)]
        errors, count, failures = 0, 0, []
        with torch.inference_mode():
            for batch in self._loader(dataset, batches):
                failures.extend(batch.failures)
                if batch.tensor is None:
                    continue
                predicted = model(batch.tensor.to(self.dist.device)).argmax(dim=1).cpu()
                truth = torch.tensor([labelled.labels[i] for i in batch.indices])
                errors += int((predicted != truth).sum())
                count += len(batch.indices)
        self._report_unreadable(labelled, failures)
        return (errors / count if count else float("nan")), count

    def _save_checkpoint(self, trainable: nn.Module, optimizer, records, labelled: LabelledSet) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "trainable": {k: v.detach().cpu() for k, v in trainable.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "records": [dataclasses.asdict(r) for r in records],
            "settings": dataclasses.asdict(self.settings),
            "classes": list(labelled.classes),
            "base": _base_identity(self.base_card),
            # Not needed to resume, but the rounding depends on them (see randomness.py).
            "world_size": self.dist.world_size,
            "threads": torch.get_num_threads(),
        }
        with atomic_path(self.out / CHECKPOINT_FILE) as temporary:
            torch.save(state, temporary)
        self._write_history(records, None)

    def _write_history(self, records: list[EpochRecord], result: FinetuneResult | None) -> None:
        import json
        events = [epoch_event(r) for r in records]
        if result is not None and result.test_error is not None:
            events.append(evaluation_event("test", result.test_error, result.test_count))
        atomic_write_text(self.out / HISTORY_FILE, "".join(json.dumps(e) + "\n" for e in events))


def _base_identity(card: ModelCard) -> str:
    """Which base model a run started from: its name and weights' SHA-256 (or source)."""
    return f"{card.name}:{card.sha256 or card.source}"


def _decode_only(image, spec) -> torch.Tensor:
    return torch.zeros(0)


def _labelled(source, classes_file=None, classes=None, num_classes=None) -> LabelledSet:
    if isinstance(source, LabelledSet):
        return source
    if classes is not None and Path(source).is_dir():
        return read_labelled_set(source, classes=classes)
    return read_labelled_set(source, classes_file=classes_file, num_classes=num_classes)


def _check_classes_left(labelled: LabelledSet, kept: list[int]) -> None:
    check_trainable(LabelledSet([labelled.items[i] for i in kept], labelled.classes, labelled.source))


def _is_path(value) -> bool:
    return value is not None and Path(str(value)).exists()
