"""``imagezoo --help`` as fast as an empty Python: argparse's own rendering, kept.

Building the whole grammar (every subcommand and option) and importing argparse cost more
than the interpreter's start. The top-level help only changes with the grammar, so the text
argparse renders is written once to ``<cache>/.help/`` and printed from there afterwards. The
file's name holds everything the text depends on: imagezoo's version, the size and time of
the files that define the grammar, the program name, the width argparse wraps to (computed as
``shutil.get_terminal_size`` does, without importing it), the Python version and whether
colours could apply. Anything else, or a missing or unreadable file, renders it afresh.
"""
from __future__ import annotations

import os
import sys

from .. import __version__

HELP_FLAGS = (["--help"], ["-h"])
# The files whose contents the top-level help is made of (relative to the package).
GRAMMAR_FILES = ("cli/parser.py", "choices.py")


def print_top_level_help() -> int:
    """Print the top-level help (kept or rendered now) and return the exit status, 0."""
    path = _kept_path()
    text = None
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, ValueError):   # unreadable, or not UTF-8: render it afresh
            text = None
    if not text:
        from .parser import build_parser
        text = build_parser().format_help()
        if path is not None:
            _keep(path, text)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _kept_path() -> str | None:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        stamps = [os.stat(os.path.join(package, name)) for name in GRAMMAR_FILES]
    except OSError:
        return None
    colour = "".join("1" if os.environ.get(name) else "0"
                     for name in ("NO_COLOR", "FORCE_COLOR", "PYTHON_COLORS"))
    key = "-".join([__version__, *(f"{s.st_mtime_ns:x}.{s.st_size:x}" for s in stamps),
                    f"w{_columns()}", f"py{sys.hexversion:x}", f"c{colour}{int(_stdout_tty())}",
                    os.path.basename(sys.argv[0]) or "imagezoo"])
    if not key.replace("-", "").replace(".", "").replace("_", "").isalnum():
        return None   # an odd program name: no file named after it
    root = os.environ.get("IMAGEZOO_CACHE") or os.path.join("~", ".cache", "imagezoo")
    return os.path.join(os.path.expanduser(root), ".help", key + ".txt")


def _columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else the terminal's, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _stdout_tty() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):
        return False


def _keep(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically; a cache that cannot be written is no error."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
