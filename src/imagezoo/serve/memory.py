"""Giving the memory of a big decode back to the operating system.

Pillow allocates a decoded image in 16 MB blocks with ``malloc``; once glibc has seen a block
freed it raises its mmap threshold above that size, so the next images' blocks come from the
decoding thread's heap arena, and glibc keeps freed arena memory for later. Measured here: one
8000 x 8000 PNG decoded in a thread left the process 490 MB larger after it was freed (two
at once, 850 MB), until ``malloc_trim(0)`` brought it back to where it started. The server
therefore trims after each image of ``TRIM_AFTER_PIXELS`` or more (a few milliseconds, and
only after images larger than any phone photo). Elsewhere than glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

TRIM_AFTER_PIXELS = 16_000_000


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def give_back_memory() -> bool:
    """Return the free memory of every malloc arena to the operating system (glibc's
    ``malloc_trim(0)``); False where there is no such call."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
