"""``python -m imagezoo`` is the ``imagezoo`` command."""
from .cli import run

run()
