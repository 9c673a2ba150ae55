"""What the ``imagezoo`` command prints besides results: logging, per-input notes, run counts.

Every line on stderr names what it is about: imagezoo's own messages start with
``imagezoo:``, another library's log records with the library's logger name, and what a
decoder said about one input with that input's name. Nothing anonymous reaches the user.
"""
from __future__ import annotations

import logging
import sys

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


class _NamedFormatter(logging.Formatter):
    """``imagezoo: message`` for imagezoo's records, ``PIL.TiffImagePlugin: message`` for a
    library's, so that nobody mistakes Pillow's words for imagezoo's."""

    def format(self, record: logging.LogRecord) -> str:
        owner = "imagezoo" if record.name.split(".")[0] == "imagezoo" else record.name
        return f"{owner}: {record.getMessage()}"


def configure_logging(verbose: bool) -> None:
    """WARNING and above by default; ``-v`` shows INFO, imagezoo's and the libraries' own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_NamedFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def print_notes(source: str, notes: list[str], verbose: bool) -> None:
    """What a decoder said about ``source`` (warnings, libtiff's lines): shown with ``-v``;
    always in ``--json`` output as ``warnings``."""
    if verbose:
        for note in notes:
            print(f"imagezoo: {source}: note: {note}", file=sys.stderr)


def skipped_counts(skipped: list[tuple[str, str]]) -> str:
    """``2 skipped (.txt 1, .h5 1)``, or an empty string."""
    if not skipped:
        return ""
    from collections import Counter
    from pathlib import Path
    counts = Counter(Path(path).suffix.lower() or "no extension" for path, _ in skipped)
    shown = ", ".join(f"{ext} {count}" for ext, count in counts.most_common())
    return f"{len(skipped)} skipped ({shown})"


def run_summary(verb: str, done: int, failed: int, skipped: list[tuple[str, str]],
                noted: int = 0) -> str:
    """The run's last line: ``imagezoo: 95 classified, 3 failed, 2 skipped (.txt 2)``."""
    parts = [f"{done} {verb}"]
    if failed:
        parts.append(f"{failed} failed")
    if skipped:
        parts.append(skipped_counts(skipped))
    if noted:
        parts.append(f"{noted} with decoder warnings (-v shows them)")
    return "imagezoo: " + ", ".join(parts)
