"""Reading weights in the formats they were published in, and fetching them verified.

Names are imported from their modules on first use, so that the store (cache folder,
downloads, checksums) is usable without importing PyTorch."""
from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "detect_format": ".formats", "read_weights": ".formats", "read_matconvnet": ".matconvnet",
    "read_paddle_v1": ".paddle_v1", "read_paddle_v2_tar": ".paddle_v2",
    "fetch_published": ".published", "published_weights": ".published",
    "ChecksumError": ".store", "DownloadError": ".store", "fetch": ".store", "sha256_of": ".store",
    "read_state_dict": ".torch_state",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
