"""The server under load and against hostile clients: dynamic batching gives each image the
answer it gets alone; full queues and pixel budgets answer 503 with Retry-After; stalled
clients are cut off; SIGTERM ends the server within its grace period; cross-site POSTs are
refused; duplicate file parts are an error; /metrics counts what was sent; /docs is served
without a CDN. No assertion here is about time: limits are observed through answers."""
from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import imagezoo  # noqa: E402
from imagezoo.serve import build_server, create_app, limits  # noqa: E402
from conftest import jpeg_bytes

RESOURCES = Path(imagezoo.__file__).parent / "resources"
PHOTOS = [RESOURCES / name for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg", "cat.png")]




def upload(client, content: bytes, name: str = "photo.jpg", path: str = "/api/classify",
           headers: dict | None = None, **params):
    return client.post(path, params=params, headers=headers or {},
                       files={"file": (name, content, "image/jpeg")})


class Gate(torch.nn.Module):
    """A stand-in model whose forward pass waits until the test opens the gate: it keeps a
    request in the forward pass, and the next ones in the queue, for as long as needed."""

    def __init__(self, card):
        super().__init__()
        self.card = card
        self.opened = threading.Event()
        self.entered = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.opened.wait(60), "the test never opened the gate"
        return torch.zeros(x.shape[0], self.card.num_classes)


def wait_until(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def running(app, timeout: float = 30, grace: float = 5):
    """``app`` behind the server ``serve`` runs (header time limit, bounded shutdown), on a
    free port of 127.0.0.1, in a thread; yields (host, port)."""
    server = build_server(app, timeout=timeout, grace=grace, log_level="warning")
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the server to start", 30)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def multipart(content: bytes, name: str = "photo.jpg", boundary: str = "imagezoo") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() \
        + content + f"\r\n--{boundary}--\r\n".encode()


def post_raw(address, body: bytes, path: str = "/api/classify") -> tuple[int, dict, bytes]:
    """One POST over a fresh connection (http.client): status, headers, body."""
    import http.client
    connection = http.client.HTTPConnection(*address, timeout=120)
    try:
        connection.request("POST", path, body=body, headers={
            "Content-Type": "multipart/form-data; boundary=imagezoo"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def read_until_closed(connection: socket.socket, seconds: float = 60) -> bytes:
    """What the server sends until it closes the connection (b"" if it only closed it)."""
    connection.settimeout(seconds)
    received = b""
    try:
        while piece := connection.recv(65536):
            received += piece
    except ConnectionResetError:
        pass
    return received


# -- dynamic batching ---------------------------------------------------------------------

class HeldFirstPass(torch.nn.Module):
    """``model`` whose first forward pass waits until the test opens the gate, so that the
    requests sent meanwhile are all in the queue when the next pass starts: a batch of them
    that does not depend on how fast the requests arrive."""

    def __init__(self, model):
        super().__init__()
        self.model, self.card = model, model.card
        self.opened, self.entered = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.opened.is_set():
            self.entered.set()
            assert self.opened.wait(60), "the test never opened the gate"
        return self.model(x)


def batched_posts(app, held: HeldFirstPass, address, bodies: list[tuple[bytes, str]]) -> list:
    """One request held in the forward pass, then ``bodies`` posted at once and answered
    together once all are queued; their (status, headers, body)."""
    batcher = next(iter(app.state.served.values())).batcher
    with concurrent.futures.ThreadPoolExecutor(len(bodies) + 1) as pool:
        first = pool.submit(post_raw, address, multipart(PHOTOS[0].read_bytes()))
        assert held.entered.wait(60)
        answers = [pool.submit(post_raw, address, body, path) for body, path in bodies]
        wait_until(lambda: batcher.depth == len(bodies), "every request in the queue")
        held.opened.set()
        assert first.result()[0] == 200
        return [answer.result() for answer in answers]


def test_batched_answers_equal_the_answers_each_image_gets_alone(lite0):
    held = HeldFirstPass(lite0)
    app = create_app(held, top=10, max_batch=len(PHOTOS), max_wait_ms=60_000)
    with running(app) as address:
        answers = batched_posts(app, held, address, [(multipart(path.read_bytes(), path.name),
                                                      "/api/classify") for path in PHOTOS])
    for path, (status, _, body) in zip(PHOTOS, answers):
        assert status == 200, body
        answer = json.loads(body)
        assert answer["batch"] == len(PHOTOS)
        alone = imagezoo.classify(lite0, [path], top=10, workers=0)[0].predictions
        assert [p["index"] for p in answer["predictions"]] == [r.index for r in alone], path.name
        np.testing.assert_allclose([p["probability"] for p in answer["predictions"]],
                                   [r.probability for r in alone], rtol=0, atol=1e-5)


def test_each_request_in_a_batch_keeps_its_own_top(lite0):
    held = HeldFirstPass(lite0)
    app = create_app(held, max_batch=2, max_wait_ms=60_000)
    content = PHOTOS[0].read_bytes()
    with running(app) as address:
        answers = batched_posts(app, held, address, [(multipart(content), f"/api/classify?top={top}")
                                                     for top in (1, 3)])
    assert [len(json.loads(body)["predictions"]) for _, _, body in answers] == [1, 3]
    assert [json.loads(body)["batch"] for _, _, body in answers] == [2, 2]


def test_a_lone_request_does_not_wait_for_company(lite0):
    """``max_wait`` is only spent while more requests are on their way: one request at a time
    never waits for a batch to fill, even with a minute's ``max_wait``."""
    app = create_app(lite0, max_batch=8, max_wait_ms=60_000, timeout=30)
    with running(app) as address:
        for path in PHOTOS:   # one after another: each would wait a minute, past the timeout
            status, _, body = post_raw(address, multipart(path.read_bytes(), path.name))
            assert status == 200, body
            assert json.loads(body)["batch"] == 1


# -- admission control --------------------------------------------------------------------

def test_a_full_queue_answers_503_with_retry_after_at_once(lite0, cat_jpeg):
    gate = Gate(lite0.card)
    app = create_app(gate, max_queue=1, max_batch=1)
    client = TestClient(app)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(upload, client, cat_jpeg)
        assert gate.entered.wait(60)
        refused = upload(client, cat_jpeg)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == str(limits.RETRY_AFTER)
        assert "try again" in refused.json()["detail"]
        gate.opened.set()
        assert held.result(60).status_code == 200
    assert upload(client, cat_jpeg).status_code == 200  # the place was given back
    assert app.state.admission.images == 0


def test_decoded_pixels_are_budgeted_from_the_header(lite0, cat_jpeg):
    width, height = 451, 300   # skimage's chelsea
    app = create_app(lite0, max_pixels_in_flight=width * height + 10)
    client = TestClient(app)
    admission = app.state.admission
    assert admission.reserve(20)   # as if another image were being decoded
    busy = upload(client, cat_jpeg)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "decoding as many pixels" in busy.json()["detail"]
    admission.release(20)
    assert upload(client, cat_jpeg).status_code == 200
    assert admission.pixels == 0   # given back after preprocessing
    too_big = upload(client, jpeg_bytes(np.zeros((300, 460, 3), np.uint8)), "wide.jpg")
    assert too_big.status_code == 400   # can never fit: not a 503 to retry forever
    assert too_big.json()["detail"] == \
        "wide.jpg: 460x300 is more than the server decodes at once (0.13531 megapixels)"


def test_draft_decoding_is_budgeted_at_its_reduced_size(cat_jpeg):
    assert limits.decoded_pixels(4000, 3000, cat_jpeg, None) == 12_000_000
    assert limits.decoded_pixels(4000, 3000, cat_jpeg, 256) == 500 * 375   # 1/8
    assert limits.decoded_pixels(4000, 3000, b"\x89PNG\r\n", 256) == 12_000_000  # no draft
    for size in [(1000, 600), (2100, 1030), (520, 511), (300, 200)]:   # as Pillow decodes it
        encoded = jpeg_bytes(np.zeros((size[1], size[0], 3), np.uint8))
        with Image.open(io.BytesIO(encoded)) as image:
            image.draft("RGB", (256, 256))
            image.load()
            assert limits.decoded_pixels(*size, encoded, 256) == image.width * image.height


def test_a_request_waiting_past_its_time_budget_in_the_queue_gets_503(lite0, cat_jpeg):
    gate = Gate(lite0.card)
    app = create_app(gate, max_batch=1, timeout=0.5)
    client = TestClient(app)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(upload, client, cat_jpeg)
        assert gate.entered.wait(60)      # the first image holds the forward pass
        late = upload(client, cat_jpeg)   # the second waits in the queue, past 0.5 s
        gate.opened.set()
        assert held.result(60).status_code == 200   # started in time: answered
    assert late.status_code == 503 and late.headers["retry-after"] == "1"
    assert "time limit" in late.json()["detail"]
    metrics = scrape(client)
    assert metrics["imagezoo_rejected_total"][(("reason", "queue_timeout"),)] == 1


# -- time limits --------------------------------------------------------------------------

def test_a_stalled_body_is_cut_off_by_the_timeout(lite0, cat_jpeg):
    with running(create_app(lite0, timeout=1), timeout=1) as address:
        body = multipart(cat_jpeg)
        with socket.create_connection(address) as connection:
            connection.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Type: multipart/form-data; boundary=imagezoo\r\n"
                               + f"Content-Length: {len(body)}\r\n\r\n".encode()
                               + body[: len(body) // 2])
            answer = read_until_closed(connection)   # then nothing more is sent
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within the server's time limit of 1 s" in answer
        # The server goes on answering others.
        assert post_raw(address, multipart(cat_jpeg))[0] == 200


def test_stalled_headers_are_cut_off_by_the_timeout(lite0):
    with running(create_app(lite0, timeout=1), timeout=1) as address:
        with socket.create_connection(address) as silent:
            assert read_until_closed(silent) == b""
        with socket.create_connection(address) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # and no blank line
            assert read_until_closed(slow) == b""


SERVER_SCRIPT = textwrap.dedent("""
    import sys
    import imagezoo
    from imagezoo.serve import listening_socket, serve
    model = imagezoo.load_model("efficientnet_lite0")
    sock = listening_socket("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    serve(model, sock=sock, timeout=600, grace=1, log_level="warning")
    print("returned", flush=True)
""")


def test_sigterm_with_a_stalled_client_ends_the_server_after_the_grace_period(cat_jpeg):
    """The body's time limit (600 s) is far away: only the grace period (1 s) can end it."""
    process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        address = ("127.0.0.1", port)
        wait_until(lambda: _answers(address), "the server to answer")
        body = multipart(cat_jpeg)
        with socket.create_connection(address) as stalled:
            stalled.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Type: multipart/form-data; boundary=imagezoo\r\n"
                            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1000])
            wait_until(lambda: b"imagezoo_images_in_flight 1.0" in _get(address, "/metrics"),
                       "the stalled upload to be admitted")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=120) == 0
            assert read_until_closed(stalled, 10) == b""   # cut off, not answered
        output, errors = process.communicate(timeout=30)
        assert output.strip() == "returned"
        assert "Traceback" not in errors, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _get(address, path: str) -> bytes:
    import http.client
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


def _answers(address) -> bool:
    try:
        return _get(address, "/healthz") == b'{"status":"ok"}'
    except OSError:
        return False


# -- cross-site requests, form checks, docs -----------------------------------------------

def test_a_post_from_another_origin_is_refused_unless_allowed(lite0, cat_jpeg):
    client = TestClient(create_app(lite0))
    refused = upload(client, cat_jpeg, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("cross-site request from http://evil.example refused")
    assert upload(client, cat_jpeg, headers={"Origin": "null"}).status_code == 403
    # The server's own page, and clients that send no Origin (curl, scripts), are served.
    assert upload(client, cat_jpeg, headers={"Origin": "http://testserver"}).status_code == 200
    assert upload(client, cat_jpeg).status_code == 200
    assert client.get("/api/model", headers={"Origin": "http://evil.example"}).status_code == 200
    allowing = TestClient(create_app(lite0, allow_origins=["https://app.example"]))
    allowed = upload(allowing, cat_jpeg, headers={"Origin": "https://app.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert upload(allowing, cat_jpeg, headers={"Origin": "http://evil.example"}).status_code == 403


def test_two_file_parts_are_refused(lite0, cat_jpeg):
    client = TestClient(create_app(lite0))
    answer = client.post("/api/classify", files=[("file", ("a.jpg", cat_jpeg, "image/jpeg")),
                                                 ("file", ("b.jpg", cat_jpeg, "image/jpeg"))])
    assert answer.status_code == 400
    assert answer.json()["detail"] == "one image per request: the form has 2 'file' parts"


def test_the_docs_page_is_served_without_a_cdn(lite0):
    client = TestClient(create_app(lite0))
    page = client.get("/docs")
    assert page.status_code == 200
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    styles = re.findall(r'<link type="text/css" rel="stylesheet" href="([^"]+)"', page.text)
    assert scripts and styles
    for asset in scripts + styles:
        assert asset.startswith("/"), asset   # from this server, not a CDN
        assert client.get(asset).status_code == 200


# -- several models -----------------------------------------------------------------------

def test_several_models_each_at_its_own_route(lite0, cat_jpeg):
    gate = Gate(lite0.card)
    gate.opened.set()
    client = TestClient(create_app({"lite0": lite0, "zeros": gate}))
    assert [m["name"] for m in client.get("/api/models").json()] == ["efficientnet_lite0"] * 2
    assert client.get("/api/models/zeros").json()["route"] == "/api/models/zeros/classify"
    real = upload(client, cat_jpeg, path="/api/models/lite0/classify").json()
    assert real == upload(client, cat_jpeg).json() | {"milliseconds": real["milliseconds"]}
    zeros = upload(client, cat_jpeg, path="/api/models/zeros/classify").json()
    assert zeros["predictions"][0]["probability"] == pytest.approx(1 / 1000)
    missing = upload(client, cat_jpeg, path="/api/models/other/classify")
    assert missing.status_code == 404 and "lite0, zeros" in missing.json()["detail"]


# -- metrics and access log ---------------------------------------------------------------

def scrape(client) -> dict:
    """/metrics as {metric sample name: {labels (sorted pairs): value}}."""
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples: dict = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_the_metrics_route_counts_what_was_sent(lite0, cat_jpeg, caplog):
    client = TestClient(create_app(lite0, max_batch=1))
    with caplog.at_level("INFO", logger="imagezoo.serve.access"):
        for _ in range(3):
            assert upload(client, cat_jpeg).status_code == 200
        assert upload(client, b"not an image", "notes.jpg").status_code == 400
        assert upload(client, cat_jpeg, headers={"Origin": "http://evil.example"}).status_code == 403
        assert client.get("/healthz").status_code == 200
        assert client.get("/no/such/page").status_code == 404
    metrics = scrape(client)
    requests = metrics["imagezoo_requests_total"]

    def count(route, method, status):
        return requests.get((("method", method), ("route", route), ("status", status)), 0)

    assert count("/api/classify", "POST", "200") == 3
    assert count("/api/classify", "POST", "400") == 1
    assert count("/api/classify", "POST", "403") == 1
    assert count("/healthz", "GET", "200") == 1
    assert count("other", "GET", "404") == 1
    assert metrics["imagezoo_request_duration_seconds_count"][(("route", "/api/classify"),)] == 5
    model = (("model", "efficientnet_lite0"),)
    assert metrics["imagezoo_batch_size_count"][model] == 3   # three passes of one image
    assert metrics["imagezoo_batch_size_sum"][model] == 3
    assert metrics["imagezoo_forward_seconds_count"][model] == 3
    assert metrics["imagezoo_queue_depth"][model] == 0
    assert metrics["imagezoo_images_in_flight"][()] == 0
    assert metrics["imagezoo_megapixels_in_flight"][()] == 0
    # One access-log line per request, with the image's size where there was one.
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 7
    assert re.fullmatch(r"testclient:\d+ POST /api/classify 200 [\d.]+ms 451x300 [\d.]+kB", lines[0])
    assert re.fullmatch(r"testclient:\d+ POST /api/classify 400 [\d.]+ms 0\.0kB", lines[3])
    assert re.fullmatch(r"testclient:\d+ GET /healthz 200 [\d.]+ms -", lines[5])


def test_cli_several_models_take_no_shared_weights(capsys):
    from imagezoo.cli import main
    assert main(["serve", "resnet18", "resnet50", "--weights", "random", "--port", "0"]) == 2
    assert "--weights and --pretrained go with one model" in capsys.readouterr().err


def test_heat_map_of_an_upload(cat_jpeg):
    import io
    import imagezoo
    from fastapi.testclient import TestClient
    from PIL import Image
    from imagezoo.serve.app import create_app
    lite0 = imagezoo.load_model("efficientnet_lite0")
    client = TestClient(create_app(lite0))
    answer = client.post("/api/explain", files={"file": ("chelsea.jpg", cat_jpeg)})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(answer.content)) as picture:
        assert picture.size == (700, 600)
    named = client.post("/api/explain?class=espresso", files={"file": ("chelsea.jpg", cat_jpeg)})
    assert named.status_code == 200 and named.content != answer.content
    broken = client.post("/api/explain", files={"file": ("x.jpg", b"not a photo")})
    assert broken.status_code == 400 and "x.jpg: not an image" in broken.json()["detail"]
    engine = imagezoo.optimize(lite0, backend="onnxruntime", batch_size=1)
    without = TestClient(create_app(engine)).post("/api/explain",
                                                  files={"file": ("c.jpg", cat_jpeg)})
    assert without.status_code == 501
    with_eager = TestClient(create_app(engine, explainer=lite0)).post(
        "/api/explain", files={"file": ("c.jpg", cat_jpeg)})
    assert with_eager.status_code == 200
