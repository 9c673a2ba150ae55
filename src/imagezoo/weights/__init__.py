"""Reading weights in the formats they were published in, and fetching them verified.

Names are imported from their modules on first use, so that the store (cache folder,
downloads, checksums) is usable without importing PyTorch."""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "detect_format": "formats", "read_weights": "formats", "read_matconvnet": "matconvnet",
    "read_paddle_v1": "paddle_v1", "read_paddle_v2_tar": "paddle_v2",
    "fetch_published": "published", "published_weights": "published",
    "ChecksumError": "store", "DownloadError": "store", "fetch": "store", "sha256_of": "store",
    "read_state_dict": "torch_state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imagezoo.weights' has no attribute {name!r}")
    value = getattr(import_module(f"imagezoo.weights.{module}"), name)
    globals()[name] = value
    return value
