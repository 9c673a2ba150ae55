"""Dynamic batching: the images that are ready run together in one forward pass.

One forward pass of eight images costs far less than eight of one on a CPU (the weights are
read once, the kernels fill their vector units), so the server gathers what is ready, the way
TorchServe's ``batch_size``/``max_batch_delay`` and Triton's dynamic batcher do: a worker
thread takes the images waiting in the queue, up to ``max_batch``; when the first of them has
waited less than ``max_wait`` seconds and the batch is not full, it waits for more until then,
but only while more are on their way (``coming``: requests the server has admitted that are
neither queued nor running): a lone request starts at once instead of waiting for company
that cannot come (measured: one client, 69 -> 94 requests/s). Images that arrive while a pass
runs simply make the next batch larger.

Each image's answer is the same as classifying it alone: the model is in eval mode (no batch
statistics), softmax and top-k are taken row by row, and each request keeps its own ``top``.
Everything here is NumPy (``forward.py`` wraps a PyTorch model), so a server whose engine is
cached runs without PyTorch.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..tasks.light_batches import probabilities
from ..tasks.results import Ranked, ranked_rows
from .admission import QueueTimeout
from .limits import RETRY_AFTER

log = logging.getLogger(__name__)


@dataclass
class Answer:
    ranked: list[Ranked]
    milliseconds: float   # the forward pass this image was part of
    batch_size: int       # how many images that pass ran


@dataclass(eq=False)
class Job:
    array: np.ndarray                 # 3 x H x W, or 10 x 3 x H x W (ten crops)
    top: int
    deadline: float                   # time.monotonic() past which it is not started
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)

    def settle(self, value=None, error: BaseException | None = None) -> None:
        """Hand the outcome to the event loop that waits for it (from the worker thread)."""
        def deliver():
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)
        try:
            self.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop has closed: the server is gone, nobody waits
            pass


class DynamicBatcher:
    """Gathers the jobs of one model into forward passes of up to ``max_batch`` images.

    ``forward_lock`` is shared by the batchers of every model the server holds: each pass
    already uses every core, and two at once would only slow each other down."""

    def __init__(self, forward, card, name: str, max_batch: int, max_wait: float,
                 forward_lock: threading.Lock | None = None, metrics=None,
                 coming: Callable[[], int] | None = None):
        """``forward``: a float32 N x 3 x H x W array -> N x C logits (``forward.array_forward``);
        ``card``: the model's card (its labels); ``coming``: how many admitted requests are on
        their way to a queue (None: unknown, always wait up to ``max_wait``)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must not be negative, not {max_wait}")
        self.forward, self.card, self.coming = forward, card, coming
        self.running = 0   # images in the forward pass under way
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.forward_lock = forward_lock or threading.Lock()
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def classify(self, array: np.ndarray, top: int, deadline: float) -> Answer:
        """The image's answer, from the next forward pass that has room for it; a job still
        waiting at ``deadline`` is withdrawn and raises ``QueueTimeout``."""
        loop = asyncio.get_running_loop()
        job = Job(array, top, deadline, loop, loop.create_future())
        with self._wake:
            if self._stopping:
                raise QueueTimeout(f"the server is stopping; try again in {RETRY_AFTER} s")
            self._queue.append(job)
            self._published()
            if self._thread is None:  # started on first use: apps built in tests never run lifespan
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name=f"imagezoo-batcher-{self.name}")
                self._thread.start()
            self._wake.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future),
                                          max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            if self._withdraw(job):
                raise QueueTimeout(f"waited longer than the server's time limit in its queue; "
                                   f"try again in {RETRY_AFTER} s") from None
            return await job.future  # already in a forward pass: its answer is coming

    def stop(self, wait: float = 0.0) -> None:
        """Run what is queued, then end the worker (waiting for it at most ``wait`` seconds;
        it is a daemon thread, so it never keeps the process alive)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None and wait > 0:
            self._thread.join(wait)

    def _withdraw(self, job: Job) -> bool:
        with self._wake:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            self._published()
            return True

    def _published(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth(self.name, len(self._queue))

    def _next_batch(self) -> list[Job] | None:
        """Wait for jobs, then for the batch to fill or the first job's wait to run out;
        None when stopping with nothing left."""
        with self._wake:
            while not self._queue:
                if self._stopping:
                    return None
                self._wake.wait()
            while len(self._queue) < self.max_batch and not self._stopping and self._queue:
                left = self._queue[0].enqueued + self.max_wait - time.monotonic()
                if left <= 0 or (self.coming is not None and self.coming() <= 0):
                    break
                self._wake.wait(left)   # a job queued wakes it: then it looks again
            jobs = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._published()
            return jobs

    def _work(self) -> None:
        while (jobs := self._next_batch()) is not None:
            now = time.monotonic()
            late = [job for job in jobs if job.deadline < now]
            for job in late:
                job.settle(error=QueueTimeout(f"waited longer than the server's time limit "
                                              f"in its queue; try again in {RETRY_AFTER} s"))
            jobs = [job for job in jobs if job.deadline >= now]
            if jobs:
                self.running = len(jobs)
                try:
                    self._run(jobs)
                finally:
                    self.running = 0

    def _run(self, jobs: list[Job]) -> None:
        arrays = [job.array for job in jobs]
        try:
            with self.forward_lock:
                started = time.perf_counter()
                rows = probabilities(self.forward, arrays, ten_crop=arrays[0].ndim == 4)
                seconds = time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - each waiting request gets the failure
            log.exception("forward pass of %d image(s) failed", len(jobs))
            for job in jobs:
                job.settle(error=error)
            return
        if self.metrics is not None:
            self.metrics.batch(self.name, len(jobs), seconds)
        for job, row in zip(jobs, rows):
            [ranked] = ranked_rows(row[None], self.card.labels, job.top)
            job.settle(Answer(ranked, seconds * 1000, len(jobs)))
