"""What every part of imagezoo.ray shares: importing Ray, the defaults of the pipeline."""
from __future__ import annotations

import logging
import re


from ..errors import ImagezooError



log = logging.getLogger(__name__)

RAY_MISSING = "ray is not installed: pip install 'imagezoo[ray]'"
# Ray's switch for multi-machine clusters ("0": a node on the loopback address only).
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# A remote URI for Ray's readers: scheme://..., other than http(s), which imagezoo fetches.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Rows (paths) per block of the local input: a decode task's share of work.
ROWS_PER_BLOCK = 32
# Memory each decode task reserves (a logical resource: a 50-megapixel photo decodes to
# 150 MB). That the decode tasks and the actors ask for different resources also keeps Ray
# Data from fusing the decoding into the model's actors, which would serialise it there.
DECODE_MEMORY = 256 * 1024 * 1024
# CPUs each decode task reserves: two per core keep the cores busy while a task waits for its
# bytes or for room in the object store (measured here: 1.0 left one of two cores idle).
DECODE_CPUS = 0.5
# PyTorch (and engine) threads per CPU an actor reserves: an actor waits for its input part of
# the time, and the decode tasks then have the cores.
THREADS_PER_ACTOR_CPU = 2


def _import_ray():
    """The ``ray`` package (with Ray Data), or the one line that says how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401 - pyarrow and pandas come with the 'data' extra
    except ImportError:
        raise ImagezooError(RAY_MISSING) from None
    return ray
