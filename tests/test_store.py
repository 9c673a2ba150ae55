"""The download cache, against an HTTP server each test starts on 127.0.0.1 (no network)."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imagezoo.errors import WeightsError
from imagezoo.weights import store
from imagezoo.weights.published import PUBLISHED, published_weights
from imagezoo.weights.store import ChecksumError, DownloadError, cache_path, fetch, sha256_of

BODY = bytes(range(256)) * 200          # 51,200 bytes: many chunks at the small chunk size below
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()
BODY_MD5 = hashlib.md5(BODY).hexdigest()


@dataclass
class Route:
    body: bytes
    mode: str = "length"      # length | chunked | close | drop | drop_chunked | stall | 404
    pieces: int = 7           # the body is written in this many flushed writes


@dataclass
class FileServer:
    server: ThreadingHTTPServer
    routes: dict[str, Route] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _split(body: bytes, pieces: int) -> list[bytes]:
    size = max(1, -(-len(body) // pieces))
    return [body[start:start + size] for start in range(0, len(body), size)]


def _handler(files: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"     # needed for chunked transfer encoding

        def log_message(self, *args) -> None:   # keep the test output clean
            pass

        def do_GET(self) -> None:
            files.hits[self.path] = files.hits.get(self.path, 0) + 1
            route = files.routes.get(self.path)
            if route is None or route.mode == "404":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            body = route.body
            if route.mode in ("chunked", "drop_chunked"):
                self.send_header("Transfer-Encoding", "chunked")
            elif route.mode != "close":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if route.mode in ("drop", "drop_chunked", "stall"):
                body = body[: len(body) // 2]
            for piece in _split(body, route.pieces):
                if route.mode in ("chunked", "drop_chunked"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                self.wfile.flush()
            if route.mode == "chunked":
                self.wfile.write(b"0\r\n\r\n")
            if route.mode == "stall":      # hold the connection open until the test is done
                files.release.wait(10)
            self.wfile.flush()
            self.close_connection = True   # "drop" modes: the socket closes mid-body

    return Handler


@pytest.fixture
def file_server():
    files = FileServer(server=None)  # type: ignore[arg-type]
    files.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    files.server.daemon_threads = True
    thread = threading.Thread(target=files.server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield files
    files.release.set()
    files.server.shutdown()
    files.server.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(store, "CHUNK_SIZE", 1000)
    monkeypatch.delenv(store.CACHE_ENV, raising=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_download_lands_in_the_cache_and_is_reused(file_server, tmp_path):
    file_server.routes["/models/w-1234abcd.pth"] = Route(BODY)
    url = file_server.url("/models/w-1234abcd.pth")

    path = fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False)

    assert path == tmp_path / "w-1234abcd.pth"
    assert path.read_bytes() == BODY
    assert _leftovers(tmp_path) == ["w-1234abcd.pth"]
    again = fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False)
    assert again == path
    assert file_server.hits["/models/w-1234abcd.pth"] == 1


def test_wrong_hash_raises_and_leaves_nothing(file_server, tmp_path):
    file_server.routes["/w.pth"] = Route(BODY)
    url = file_server.url("/w.pth")
    wrong = "0" * 64

    with pytest.raises(ChecksumError) as caught:
        fetch(url, wrong, cache_dir=tmp_path, progress=False)

    message = str(caught.value)
    assert url in message and wrong in message and BODY_SHA256 in message
    assert _leftovers(tmp_path) == []


def test_server_gone_raises_download_error_naming_url_and_cache_path(file_server, tmp_path):
    file_server.routes["/w.pth"] = Route(BODY)
    url = file_server.url("/w.pth")
    file_server.stop()

    with pytest.raises(DownloadError) as caught:
        fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False, timeout=5)

    message = str(caught.value)
    assert url in message
    assert str(tmp_path / "w.pth") in message
    assert store.CACHE_ENV in message
    assert _leftovers(tmp_path) == []


def test_http_error_raises_download_error(file_server, tmp_path):
    url = file_server.url("/missing.pth")

    with pytest.raises(DownloadError, match="404"):
        fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False)

    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_body_in_many_small_writes_arrives_intact(file_server, tmp_path, mode):
    file_server.routes["/w.pth"] = Route(BODY, mode=mode, pieces=37)

    path = fetch(file_server.url("/w.pth"), BODY_SHA256, cache_dir=tmp_path, progress=False)

    assert path.read_bytes() == BODY


@pytest.mark.parametrize("mode", ["drop", "drop_chunked"])
def test_connection_dropped_mid_body_raises_and_leaves_nothing(file_server, tmp_path, mode):
    file_server.routes["/w.pth"] = Route(BODY, mode=mode)
    url = file_server.url("/w.pth")

    with pytest.raises(DownloadError) as caught:
        fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False)

    assert url in str(caught.value)
    assert _leftovers(tmp_path) == []


def test_stalled_server_times_out(file_server, tmp_path):
    file_server.routes["/w.pth"] = Route(BODY, mode="stall")

    with pytest.raises(DownloadError, match="timed out"):
        fetch(file_server.url("/w.pth"), BODY_SHA256, cache_dir=tmp_path, progress=False,
              timeout=0.3)

    assert _leftovers(tmp_path) == []


def test_verify_detects_a_corrupted_cached_file(file_server, tmp_path):
    file_server.routes["/w.pth"] = Route(BODY)
    url = file_server.url("/w.pth")
    path = fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False)
    path.write_bytes(BODY[:-1] + b"\x00")

    # Without verify the cached file is trusted; with it, the damage is found.
    assert fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False) == path
    with pytest.raises(ChecksumError) as caught:
        fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False, verify=True)

    message = str(caught.value)
    assert str(path) in message and BODY_SHA256 in message and sha256_of(path) in message
    assert "delete" in message
    assert file_server.hits["/w.pth"] == 1


def test_verify_accepts_an_intact_cached_file(file_server, tmp_path):
    file_server.routes["/w.pth"] = Route(BODY)
    url = file_server.url("/w.pth")
    fetch(url, BODY_SHA256, cache_dir=tmp_path, progress=False)

    assert fetch(url, BODY_SHA256[:8], cache_dir=tmp_path, progress=False,
                 verify=True).read_bytes() == BODY


def test_cache_env_is_honoured(file_server, tmp_path, monkeypatch):
    cache = tmp_path / "from-env"
    monkeypatch.setenv(store.CACHE_ENV, str(cache))
    file_server.routes["/w.pth"] = Route(BODY)

    path = fetch(file_server.url("/w.pth"), BODY_SHA256, progress=False)

    assert path == cache / "w.pth"
    assert path.read_bytes() == BODY
    assert cache_path(file_server.url("/w.pth")) == path


def test_default_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))

    assert cache_path("https://example.org/a/b/w-0123.pth?x=1") == (
        tmp_path / ".cache" / "imagezoo" / "w-0123.pth")


def test_sha256_prefix_is_accepted_and_checked(file_server, tmp_path):
    file_server.routes["/resnet-abcd.pth"] = Route(BODY)
    url = file_server.url("/resnet-abcd.pth")

    with pytest.raises(ChecksumError, match="prefix"):
        fetch(url, "deadbeef", cache_dir=tmp_path, progress=False)
    assert _leftovers(tmp_path) == []
    path = fetch(url, BODY_SHA256[:8].upper(), cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == BODY


@pytest.mark.parametrize("bad", ["abc", "xyz12345", "0" * 65])
def test_malformed_sha256_is_refused(tmp_path, bad):
    with pytest.raises(WeightsError, match="SHA-256"):
        fetch("http://127.0.0.1:9/w.pth", bad, cache_dir=tmp_path)


def test_url_without_file_name_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="file name"):
        fetch("http://127.0.0.1:9/models/", BODY_SHA256, cache_dir=tmp_path)


def test_md5_is_checked_when_no_sha256_is_published(file_server, tmp_path):
    file_server.routes["/net.mat"] = Route(BODY)
    url = file_server.url("/net.mat")

    with pytest.raises(ChecksumError, match="MD5"):
        fetch(url, None, md5="0" * 32, cache_dir=tmp_path, progress=False)
    assert _leftovers(tmp_path) == []
    assert fetch(url, None, md5=BODY_MD5, cache_dir=tmp_path, progress=False).read_bytes() == BODY


def test_no_checksum_downloads_with_a_warning_giving_the_sha256(file_server, tmp_path, caplog):
    file_server.routes["/resnet_50.tar.gz"] = Route(BODY)

    with caplog.at_level(logging.WARNING, logger="imagezoo.weights.store"):
        path = fetch(file_server.url("/resnet_50.tar.gz"), None, cache_dir=tmp_path,
                     progress=False)

    assert path.read_bytes() == BODY
    assert BODY_SHA256 in caplog.text and "unverified" in caplog.text


def test_progress_bar_goes_to_stderr_only_when_asked(file_server, tmp_path, capsys):
    file_server.routes["/a.pth"] = Route(BODY)
    file_server.routes["/b.pth"] = Route(BODY)

    fetch(file_server.url("/a.pth"), BODY_SHA256, cache_dir=tmp_path, progress=True)
    shown = capsys.readouterr()
    fetch(file_server.url("/b.pth"), BODY_SHA256, cache_dir=tmp_path, progress=False)
    hidden = capsys.readouterr()

    assert "a.pth" in shown.err and shown.out == ""
    assert hidden.err == "" and hidden.out == ""


def test_published_weights_lookup():
    entry = published_weights("resnet50", "torchvision")
    assert entry.url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert entry.sha256 == "0676ba61"
    assert published_weights("resnet152", "matconvnet").url.endswith(
        "/imagenet-resnet-152-dag.mat")
    assert published_weights("resnet101", "paddle_v1").url.endswith("/resnet_101.tar.gz")

    with pytest.raises(WeightsError) as caught:
        published_weights("resnet18", "matconvnet")
    assert "torchvision" in str(caught.value) and "resnet50" in str(caught.value)


def test_published_table_is_well_formed():
    seen = set()
    for entry in PUBLISHED:
        assert (entry.model, entry.source) not in seen
        seen.add((entry.model, entry.source))
        assert entry.citation
        assert entry.sha256 is None or len(entry.sha256) >= 8
        assert entry.sha256 is not None or entry.source != "torchvision"
        # every name in the table is a valid cache file name
        assert cache_path(entry.url, "/cache").parent == Path("/cache")


def test_published_entry_fetches_with_its_checksum(file_server, tmp_path, monkeypatch):
    entry = published_weights("resnet50", "matconvnet")
    file_server.routes["/imagenet-resnet-50-dag.mat"] = Route(BODY)
    local = dataclasses.replace(entry, url=file_server.url("/imagenet-resnet-50-dag.mat"))

    # The real file's MD5 is not this body's, so the published MD5 must be what refuses it.
    with pytest.raises(ChecksumError, match=entry.md5):
        local.fetch(cache_dir=tmp_path, progress=False)
