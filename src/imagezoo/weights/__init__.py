"""Reading weights in the formats they were published in, and checking them."""
from .store import sha256_of
from .torch_state import read_state_dict

__all__ = ["read_state_dict", "sha256_of"]
