"""Weight files on disk: checksums and the verified download cache.

``fetch(url, sha256)`` returns the path of a weight file in the cache, downloading it first when
it is not there yet. A download streams to a temporary file in the cache folder (the same file
system, so the final ``os.replace`` is atomic), is hashed while it is written, and takes its final
name only once its checksum is right: a failed or corrupt download leaves nothing behind, and a
file in the cache under its final name is always a complete one.

The cache folder is, in this order: the ``cache_dir`` argument, the ``IMAGEZOO_CACHE`` environment
variable, ``~/.cache/imagezoo``. A file keeps the name it has at the end of its URL's path, so a
user without network access can download it elsewhere and put it there by hand.

Checksums:

* ``sha256`` is the full 64-digit hex SHA-256 of the file, or a prefix of it of at least 8 hex
  digits. torchvision publishes only such a prefix, in the file name (``resnet50-0676ba61.pth``
  holds the first 8 hex digits of its SHA-256), and ``torch.hub`` checks exactly that prefix
  ("the first eight or more digits of the SHA256 hash of the contents of the file", PyTorch docs
  of ``torch.hub.load_state_dict_from_url(check_hash=True)``). A prefix is a weaker check than the
  full digest; pin the full one when you can.
* ``md5`` is checked too when given: MatConvNet and PaddlePaddle publish only MD5 sums. MD5
  catches corrupt downloads, not deliberate tampering.
* With neither, the file is downloaded unverified and a warning gives its computed SHA-256, so
  that the caller can pin it from then on.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import WeightsError

log = logging.getLogger(__name__)

CACHE_ENV = "IMAGEZOO_CACHE"
DEFAULT_CACHE = Path("~") / ".cache" / "imagezoo"
# Read size for hashing files and streaming downloads (a module value so tests can make it small).
CHUNK_SIZE = 1 << 20
MIN_SHA256_PREFIX = 8

_HEX = re.compile(r"[0-9a-f]+")


class ChecksumError(WeightsError):
    """A downloaded or cached file does not have the published checksum."""


class DownloadError(WeightsError):
    """A weight file could not be downloaded (unreachable host, HTTP error, timeout, cut off)."""


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large weight files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$IMAGEZOO_CACHE``, else ``~/.cache/imagezoo``."""
    if cache_dir is not None:
        chosen = str(cache_dir)
    else:
        chosen = os.environ.get(CACHE_ENV) or str(DEFAULT_CACHE)
    return Path(chosen).expanduser()


def cache_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``fetch`` keeps the file of ``url``: the cache folder / the URL path's file name."""
    return resolve_cache_dir(cache_dir) / file_name_of(url)


def file_name_of(url: str) -> str:
    """The last segment of the URL's path, refused when it cannot be a plain file name."""
    # Not PurePosixPath(...).name: it would take "models" from ".../models/", a folder.
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise WeightsError(f"{url}: the URL's path does not end in a file name, so there is "
                           f"no name to keep the download under")
    return name


def fetch(url: str, sha256: str | None, cache_dir: str | os.PathLike | None = None,
          progress: bool | None = None, verify: bool = False, timeout: float = 30,
          *, md5: str | None = None) -> Path:
    """Path of the file at ``url`` in the cache, downloaded and checked first if it is not there.

    ``sha256``: the file's hex SHA-256, whole (64 digits) or a prefix of at least 8 digits (as
    torchvision publishes in its file names), or ``None`` when no SHA-256 is published: the file
    is then checked against ``md5`` if given, and otherwise downloaded unverified with a warning
    that gives its computed SHA-256. ``md5``: a published hex MD5, checked as well when given.

    ``cache_dir``: the cache folder (default ``$IMAGEZOO_CACHE``, else ``~/.cache/imagezoo``).
    ``progress``: show a progress bar on stderr; ``None`` shows it when stderr is a terminal.
    ``verify``: re-hash a file found in the cache instead of trusting it (it was checked when it
    was downloaded, but may have been replaced or damaged since). ``timeout``: seconds to wait
    for the server to connect or to send more data.

    Raises ``ChecksumError`` when a download, or with ``verify`` a cached file, has the wrong
    checksum (a bad download is discarded; a bad cached file is left for the user to delete);
    ``DownloadError`` when the download fails (unreachable host, refused connection, HTTP error,
    timeout, connection cut off mid-file); no partial file is left in the cache.
    """
    sha256 = _normalise_sha256(sha256)
    md5 = _normalise_md5(md5)
    target = cache_path(url, cache_dir)
    if target.is_file():
        log.debug("%s: found in the cache at %s", url, target)
        if verify:
            _verify_cached(target, sha256, md5)
        return target
    _make_folder(target.parent)
    _download(url, target, sha256, md5, _show_progress(progress), timeout)
    return target


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    text = sha256.strip().lower()
    if not (MIN_SHA256_PREFIX <= len(text) <= 64 and _HEX.fullmatch(text)):
        raise WeightsError(f"{sha256!r} is not a SHA-256: give the 64 hex digits of the digest "
                           f"or a prefix of at least {MIN_SHA256_PREFIX} of them")
    return text


def _normalise_md5(md5: str | None) -> str | None:
    if md5 is None:
        return None
    text = md5.strip().lower()
    if not (len(text) == 32 and _HEX.fullmatch(text)):
        raise WeightsError(f"{md5!r} is not an MD5: give its 32 hex digits")
    return text


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):   # stderr replaced or closed
        return False


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsError(f"cannot create the weights cache folder {folder} ({error}); "
                           f"choose another with {CACHE_ENV}") from None


def _sha256_matches(expected: str, actual: str) -> bool:
    return actual.startswith(expected)


def _describe_sha256(expected: str) -> str:
    return expected if len(expected) == 64 else f"{expected}… (a prefix)"


def _verify_cached(path: Path, sha256: str | None, md5: str | None) -> None:
    sha_digest, md5_digest = _hash_file(path, md5 is not None)
    advice = f"it is damaged or was replaced: delete {path} and run again to download it anew"
    if sha256 is not None and not _sha256_matches(sha256, sha_digest):
        raise ChecksumError(f"cached file {path} has SHA-256 {sha_digest}, expected "
                            f"{_describe_sha256(sha256)}; {advice}")
    if md5 is not None and md5_digest != md5:
        raise ChecksumError(f"cached file {path} has MD5 {md5_digest}, expected {md5}; {advice}")
    if sha256 is None and md5 is None:
        log.warning("%s: no checksum to verify it against; its SHA-256 is %s", path, sha_digest)


def _hash_file(path: Path, with_md5: bool) -> tuple[str, str | None]:
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            sha.update(chunk)
            if md5 is not None:
                md5.update(chunk)
    return sha.hexdigest(), (md5.hexdigest() if md5 is not None else None)


def _download(url: str, target: Path, sha256: str | None, md5: str | None, show_progress: bool,
              timeout: float) -> None:
    log.info("downloading %s to %s", url, target)
    try:
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.",
                                             suffix=".part", delete=False)
    except OSError as error:
        raise _cache_error(target, error) from None
    temporary = Path(handle.name)
    try:
        with handle:
            sha_digest, md5_digest = _stream(url, target, handle, md5 is not None,
                                             show_progress, timeout)
        _check_download(url, sha256, md5, sha_digest, md5_digest)
        try:
            os.replace(temporary, target)
        except OSError as error:
            raise _cache_error(target, error) from None
    except BaseException:
        # Whatever went wrong (including Ctrl-C), no partial file stays in the cache.
        temporary.unlink(missing_ok=True)
        raise
    log.info("%s: saved to %s (SHA-256 %s)", url, target, sha_digest)


def _stream(url: str, target: Path, handle, with_md5: bool, show_progress: bool,
            timeout: float) -> tuple[str, str | None]:
    """Copy the response body into ``handle``, hashing it; network failures -> DownloadError."""
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
    request = urllib.request.Request(url, headers={"User-Agent": "imagezoo"})
    received = 0
    expected_length: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected_length = _content_length(response)
            with tqdm(total=expected_length, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=target.name, file=sys.stderr, disable=not show_progress,
                      leave=False) as bar:
                while chunk := response.read(CHUNK_SIZE):
                    _write(handle, chunk, target)
                    sha.update(chunk)
                    if md5 is not None:
                        md5.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise _download_error(url, target, f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _download_error(url, target, str(error.reason)) from None
    except (http.client.HTTPException, OSError, ValueError) as error:
        # OSError covers refused or reset connections and timeouts; http.client's errors a
        # malformed or cut-off response; ValueError a URL urllib cannot use.
        raise _download_error(url, target, _reason(error)) from None
    # http.client returns end-of-file, not an error, when a response with a Content-Length is
    # cut short, so the length is checked here.
    if expected_length is not None and received != expected_length:
        raise _download_error(url, target, f"the connection closed after {received} of "
                                           f"{expected_length} bytes")
    return sha.hexdigest(), (md5.hexdigest() if md5 is not None else None)


def _write(handle, chunk: bytes, target: Path) -> None:
    try:
        handle.write(chunk)
    except OSError as error:
        raise _cache_error(target, error) from None


def _cache_error(target: Path, error: OSError) -> WeightsError:
    return WeightsError(f"cannot write {target} ({error}); free some space, or choose another "
                        f"cache folder with {CACHE_ENV}")


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or "chunked" in (response.headers.get("Transfer-Encoding") or "").lower():
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed before the whole file arrived"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _download_error(url: str, target: Path, reason: str) -> DownloadError:
    return DownloadError(
        f"cannot download {url} ({reason}). Without network access, download the file on "
        f"another machine and put it at {target}; or set {CACHE_ENV} to a folder that holds "
        f"{target.name}")


def _check_download(url: str, sha256: str | None, md5: str | None, sha_digest: str,
                    md5_digest: str | None) -> None:
    if sha256 is not None and not _sha256_matches(sha256, sha_digest):
        raise ChecksumError(f"{url}: the download has SHA-256 {sha_digest}, expected "
                            f"{_describe_sha256(sha256)}; it was discarded")
    if md5 is not None and md5_digest != md5:
        raise ChecksumError(f"{url}: the download has MD5 {md5_digest}, expected {md5}; "
                            f"it was discarded")
    if sha256 is None and md5 is None:
        log.warning("%s: no published checksum, so the download is unverified; its SHA-256 is "
                    "%s (pass it as sha256 to check it from now on)", url, sha_digest)
    elif sha256 is None:
        log.info("%s: MD5 verified; its SHA-256 is %s", url, sha_digest)
