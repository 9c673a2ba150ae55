"""The guarded boundary around a decoder: whatever one input does, it stays that input's affair.

Pillow's plugins are many and their failures varied: besides the usual ``OSError`` a decoder
may raise ``NotImplementedError`` (a DDS in an unimplemented DXGI format), ``struct.error``,
``IndexError``, ``KeyError``, ``ZeroDivisionError`` or ``MemoryError`` (a header that asks
for a huge allocation). ``reason_for`` turns any of them into words a user can act on:
*truncated*, *corrupt*, *a format or feature Pillow cannot decode here* (named), or *too
large*.

A decoder also talks while it works, and what it says belongs to the file it was reading:

* Python warnings (``UserWarning("Truncated File Read")``, ``DecompressionBombWarning``);
* Pillow's log records at WARNING and above;
* libtiff's messages, which it prints straight to the process's stderr
  (``ZIPDecode: Decoding error at scanline 85, incorrect data check.``).

``attributed_to_input()`` collects all three while one input is decoded, so the caller can
attach them to that input (a note on its result, or the reason of its error) instead of
letting anonymous lines reach stderr. Python's warning machinery is process-wide, so the
notes are routed per thread: a thread-local list is the sink while a thread decodes, and
warnings raised by other threads in the meantime pass through untouched. libtiff writes to
file descriptor 2, which only the main thread of a process may borrow (decoding runs there
in the CLI, the API and in the DataLoader's worker processes); a decode in another thread,
as in the server's thread pool, leaves libtiff's lines on stderr.
"""
from __future__ import annotations

import logging
import os
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from contextlib import contextmanager
from typing import Iterator

from PIL import Image, UnidentifiedImageError

# Formats whose decoder is a C library that prints to stderr by itself.
NATIVE_CHATTY_FORMATS = frozenset({"TIFF"})
# Pillow's names for the codes an ImageFile decoder returns (ImageFile.ERRORS), in words.
DECODER_CODES = {
    "-1": "the image data overruns its buffer",
    "-2": "the compressed data is corrupt",
    "-3": "the decoder failed",
    "-8": "the image's settings are invalid",
    "-9": "not enough memory",
}
_UNSUPPORTED_HINTS = ("not supported", "unsupported", "cannot find loader", "not available",
                      "unknown raw mode", "unknown compression", "unimplemented",
                      "unable to locate ghostscript", "cannot identify", "no decoder",
                      "unrecognized mode", "unknown pixel mode", "handler")
_TRUNCATED_HINTS = ("truncated", "premature end", "unexpected end", "not enough data",
                    "buffer is not large enough", "incomplete", "too short")

_local = threading.local()
_install_lock = threading.Lock()
# Pillow's warnings repeat per file (the default action would show each text once per run and
# so attribute it to the first file only); imagezoo's decoding module may be their stack level.
_ALWAYS_FILTER_MODULE = r"(PIL|imagezoo\.data)(\.|$)"


def reason_for(error: BaseException, image_format: str | None = None,
               native: list[str] | None = None) -> str:
    """Words for why a decode failed: truncated, corrupt, unsupported (named) or too large.

    ``image_format`` is what Pillow identified the file as (``None`` when it could not);
    ``native`` are the decoder library's own lines, added to the reason as evidence."""
    kind = f"{image_format} " if image_format else ""
    detail = _first_line(error)
    evidence = f"; the decoder said: {' '.join(native)}" if native else ""
    lowered = detail.lower()
    if isinstance(error, Image.DecompressionBombError):
        return f"too large: refused as a possible decompression bomb ({detail})"
    if isinstance(error, MemoryError):
        return f"too large: the {kind}image needs more memory than this machine can give"
    if isinstance(error, UnidentifiedImageError):
        if image_format:
            return (f"a damaged {image_format} file: it starts like one, but Pillow cannot "
                    f"read its header (truncated or corrupt)")
        return "not an image Pillow can read (unrecognised content)"
    if isinstance(error, NotImplementedError) or (
            isinstance(error, (OSError, ValueError, KeyError, SyntaxError))
            and any(hint in lowered for hint in _UNSUPPORTED_HINTS)):
        what = f"a {image_format} file" if image_format else "a file"
        return f"{what} using a format or feature Pillow cannot decode here ({detail}){evidence}"
    if isinstance(error, EOFError) or any(hint in lowered for hint in _TRUNCATED_HINTS):
        return f"truncated {kind}image ({detail}){evidence}"
    if lowered.startswith("decoder error"):
        code = lowered.split()[-1]
        words = DECODER_CODES.get(code, f"decoder error {code}")
        if code == "-9":
            return f"too large: {words} to decode this {kind}image{evidence}"
        return f"corrupt {kind}image: {words}{evidence}"
    if isinstance(error, (struct.error, IndexError, KeyError, TypeError, ZeroDivisionError,
                          zlib.error, SyntaxError, ValueError, OSError, OverflowError)):
        name = type(error).__name__
        return f"corrupt {kind}image ({name}: {detail}){evidence}"
    return f"cannot decode this {kind}image ({type(error).__name__}: {detail}){evidence}"


def claimed_format(data: bytes) -> str | None:
    """The format whose signature the data starts with, by Pillow's own ``accept`` tests, for
    a file whose plugin failed while opening it (so ``Image.open`` could not say)."""
    Image.init()
    prefix = data[:16]
    for image_format in Image.ID:
        accept = Image.OPEN[image_format][1]
        try:
            if accept is not None and accept(prefix):
                return image_format
        except Exception:  # noqa: BLE001 - a test that cannot judge this prefix says nothing
            continue
    return None


def preprocess_reason(error: BaseException) -> str:
    """Words for an image that decoded but could not be resized and cropped for the model."""
    if isinstance(error, MemoryError):
        return "too large to preprocess in memory"
    return f"cannot preprocess this image ({type(error).__name__}: {_first_line(error)})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = f"key {error.args[0]!r} missing"
    return text.splitlines()[0] if text else type(error).__name__


class _RouteToInput(logging.Filter):
    """On Pillow's logger: while a thread decodes, its WARNING+ records become that input's
    notes (and go no further); records from elsewhere pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(_local, "sink", None)
        if sink is None:
            return True
        if record.levelno >= logging.WARNING:
            sink.append(record.getMessage())
        return False


_ROUTE_FILTER = _RouteToInput()


def _route_warning(message, category, filename, lineno, file=None, line=None):
    sink = getattr(_local, "sink", None)
    if sink is not None:
        sink.append(f"{category.__name__}: {message}")
        return
    _route_warning.passed_to(message, category, filename, lineno, file, line)


def _install_routes() -> None:
    """Put the routes in place if something (``warnings.catch_warnings`` in the caller, a test
    runner) has reset them since; cheap enough to run before every decode."""
    if warnings.showwarning is _route_warning and _has_always_filter():
        return
    with _install_lock:
        if warnings.showwarning is not _route_warning:
            _route_warning.passed_to = warnings.showwarning
            warnings.showwarning = _route_warning
        if not _has_always_filter():
            warnings.filterwarnings("always", module=_ALWAYS_FILTER_MODULE)
        pil_logger = logging.getLogger("PIL")
        if _ROUTE_FILTER not in pil_logger.filters:
            pil_logger.addFilter(_ROUTE_FILTER)


def _has_always_filter() -> bool:
    return any(action == "always" and module is not None
               and module.pattern == _ALWAYS_FILTER_MODULE
               for action, _, _, module, _ in warnings.filters)


@contextmanager
def attributed_to_input() -> Iterator[list[str]]:
    """Collect what decoders say in this thread (warnings, Pillow's log records) into the
    list this yields. Nested use shares the outer list."""
    _install_routes()
    outer = getattr(_local, "sink", None)
    notes: list[str] = outer if outer is not None else []
    _local.sink = notes
    try:
        yield notes
    finally:
        _local.sink = outer


@contextmanager
def native_stderr_captured(image_format: str | None) -> Iterator[list[str]]:
    """Borrow file descriptor 2 while a chatty C decoder (libtiff) runs, and yield the list
    that receives its lines. A no-op for other formats and outside the main thread, where
    borrowing the descriptor would also swallow other threads' output."""
    lines: list[str] = []
    if image_format not in NATIVE_CHATTY_FORMATS or threading.current_thread() is not threading.main_thread():
        yield lines
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read(64 * 1024).decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())
