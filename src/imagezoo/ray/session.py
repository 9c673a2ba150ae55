"""Ray itself: joining a cluster or starting a local instance, and the actor pool."""
from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager
from typing import Any, Iterator


from ..errors import ImagezooError

from .common import LOCAL_ONLY_ENV, _import_ray

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- Ray itself


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                object_store_memory: int | None = None) -> Iterator[Any]:
    """Ray, ready: the instance this process already joined; else the cluster at ``address``
    (or ``$RAY_ADDRESS``: ``auto``, ``HOST:6379``, ``ray://HOST:10001``); else a new local
    instance on this machine (``num_cpus``, ``object_store_memory`` in bytes; the dashboard
    off; on the loopback address when Ray was not imported before). What this started it
    shuts down at the end."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address and "ray" not in sys.modules:
        # A local instance serves this process alone: Ray then keeps it on the loopback
        # address instead of the machine's network address (read when Ray is imported).
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    ray = _import_ray()
    if address:
        check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address)
        else:
            # "local": a new instance, even when a cluster started here with `ray start` is
            # running (joining that takes --ray auto, or its address)
            ray.init(address="local", num_cpus=num_cpus,
                     object_store_memory=object_store_memory, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
        raise ImagezooError(f"cannot {where}: {str(error).strip().splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` address where nothing answers is one line now,
    not minutes of Ray retrying; ``auto`` and other forms are left to Ray."""
    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise ImagezooError(f"cannot join the Ray cluster at {address}: nothing answers there "
                            f"({error.strerror or error}); `ray start --head` prints the "
                            f"address to give") from None


def _cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def _pool(ray, actors: int | tuple[int, int] | None, cpus_per_actor: float, gpus: int):
    """The actor pool: ``actors`` fixed, ``(min, max)`` autoscaled, or by default one actor
    per GPU, else between one and a quarter of the cluster's CPUs."""
    if actors is None:
        if gpus:
            actors = gpus
        else:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            actors = (1, max(1, int(cpus / 4 / max(cpus_per_actor, 0.25))))
    if isinstance(actors, int):
        return ray.data.ActorPoolStrategy(size=actors)
    low, high = actors
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high)
