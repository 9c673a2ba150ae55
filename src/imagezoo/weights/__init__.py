"""Reading weights in the formats they were published in, and fetching them verified."""
from .formats import detect_format, read_weights
from .matconvnet import read_matconvnet
from .paddle_v1 import read_paddle_v1
from .paddle_v2 import read_paddle_v2_tar
from .published import fetch_published, published_weights
from .store import ChecksumError, DownloadError, fetch, sha256_of
from .torch_state import read_state_dict

__all__ = ["ChecksumError", "DownloadError", "detect_format", "fetch", "fetch_published",
           "published_weights", "read_matconvnet", "read_paddle_v1", "read_paddle_v2_tar",
           "read_state_dict",
           "read_weights", "sha256_of"]
