"""``python -m imagezoo`` is the ``imagezoo`` command."""
import sys

from .cli import main

sys.exit(main())
