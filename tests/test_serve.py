"""The HTTP server: its JSON API on real photos, errors by status and message, the CLI's
engine options, and the upload page driven in a real browser (Debian's Chromium)."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image


def needed(module: str, what: str):
    """Import a test requirement; missing, it skips the test, except under CI, where every
    test must run."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        message = f"{what} is not installed (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


needed("fastapi", "the serve extra (FastAPI)")
from fastapi.testclient import TestClient  # noqa: E402

import imagezoo  # noqa: E402
from imagezoo import cli  # noqa: E402
from imagezoo.serve import create_app, limits  # noqa: E402
from conftest import jpeg_bytes

CAT_LABELS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"




@pytest.fixture(scope="module")
def client(lite0):
    return TestClient(create_app(lite0, top=5))


def upload(client, name: str, content: bytes, **params):
    return client.post("/api/classify", params=params,
                       files={"file": (name, content, "image/jpeg")})


def test_upload_gives_what_classify_gives_for_the_same_file(client, lite0, cat_jpeg, tmp_path):
    answer = upload(client, "chelsea.jpg", cat_jpeg)
    assert answer.status_code == 200
    body = answer.json()
    assert body["input"] == "chelsea.jpg"
    assert body["predictions"][0]["label"] in CAT_LABELS
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(cat_jpeg)
    expected = imagezoo.classify(lite0, [path], top=5, workers=0)[0].predictions
    assert [p["index"] for p in body["predictions"]] == [r.index for r in expected]
    np.testing.assert_allclose([p["probability"] for p in body["predictions"]],
                               [r.probability for r in expected], rtol=1e-5, atol=1e-7)


def test_top_is_taken_from_the_request(client, cat_jpeg):
    assert len(upload(client, "a.jpg", cat_jpeg, top=2).json()["predictions"]) == 2
    assert len(upload(client, "a.jpg", cat_jpeg, top=5000).json()["predictions"]) == 1000
    refused = upload(client, "a.jpg", cat_jpeg, top=0)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "top"]


def test_unreadable_uploads_are_refused_with_the_decoders_message(client, cat_jpeg):
    not_an_image = upload(client, "notes.jpg", b"these are my notes, not a photo")
    assert not_an_image.status_code == 400
    assert not_an_image.json()["detail"] == \
        "notes.jpg: not an image Pillow can read (unrecognised content)"
    truncated = upload(client, "cut.jpg", cat_jpeg[: len(cat_jpeg) // 3])
    assert truncated.status_code == 400
    assert truncated.json()["detail"].startswith("cut.jpg: truncated JPEG image")
    empty = upload(client, "empty.jpg", b"")
    assert empty.status_code == 400 and empty.json()["detail"] == "empty.jpg: empty file"
    missing = client.post("/api/classify", data={"note": "no file"})
    assert missing.status_code == 422
    # The server goes on answering after bad requests.
    assert upload(client, "again.jpg", cat_jpeg).status_code == 200


def test_upload_over_the_limit_is_refused(lite0, cat_jpeg):
    small = TestClient(create_app(lite0, max_upload_bytes=len(cat_jpeg) - 1))
    refused = upload(small, "big.jpg", cat_jpeg)
    assert refused.status_code == 413
    assert "big.jpg: larger than the server's limit" in refused.json()["detail"]
    assert upload(TestClient(create_app(lite0, max_upload_bytes=len(cat_jpeg))),
                  "fits.jpg", cat_jpeg).status_code == 200


def raw_post(url: str, headers: str, chunks) -> tuple[bytes, int]:
    """POST by hand on a socket, sending ``chunks`` until the server answers or hangs up;
    returns what the server answered (b"reset" when it reset the connection first) and how
    many body bytes went out."""
    host, port = url.split("//")[1].strip("/").split(":")
    sent, answer = 0, b""
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST /api/classify HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        try:
            for chunk in chunks:
                connection.sendall(chunk)
                sent += len(chunk)
                connection.setblocking(False)
                try:
                    if connection.recv(1, socket.MSG_PEEK):
                        break  # the server has answered
                except BlockingIOError:
                    pass
                finally:
                    connection.settimeout(5)
            while piece := connection.recv(65536):
                answer += piece
        except (BrokenPipeError, ConnectionResetError):
            # A server that hangs up on unread data resets the connection, which can discard
            # its answer before the client reads it.
            answer = answer or b"reset"
        except socket.timeout:
            pass  # the answer is complete; the server kept the connection open
    return answer, sent


def test_an_upload_past_the_limit_is_refused_while_it_streams_in(lite0, cat_jpeg):
    """The 413 comes as soon as the limit is passed (or declared), not after the whole body
    has been spooled to disk."""
    with running(create_app(lite0, max_upload_bytes=100_000)) as url:
        declared, sent = raw_post(url, "Content-Type: multipart/form-data; boundary=x\r\n"
                                       "Content-Length: 640000000\r\n", [b"--x"])
        assert declared.startswith(b"HTTP/1.1 413") and sent == 3
        assert b"larger than the server's limit of 100000 bytes" in declared
        head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        pieces = itertools.chain([head], itertools.repeat(b"\0" * 65536, 10_000))  # 640 MB
        chunked = (b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
        streamed, sent = raw_post(url, "Content-Type: multipart/form-data; boundary=x\r\n"
                                       "Transfer-Encoding: chunked\r\n", chunked)
        assert streamed.startswith(b"HTTP/1.1 413") or streamed == b"reset", streamed[:200]
        assert sent < 20_000_000  # cut off near the limit, whatever the socket buffers held
        with urllib.request.urlopen(url + "healthz", timeout=10) as answer:
            assert answer.status == 200  # and the server goes on


def test_images_too_big_or_too_elongated_are_refused_from_their_header(client, monkeypatch):
    strip = io.BytesIO()
    Image.new("RGB", (8000, 1)).save(strip, "PNG")   # 256 x 2,048,000 after the resize
    answer = upload(client, "strip.png", strip.getvalue())
    assert answer.status_code == 400
    assert answer.json()["detail"] == "strip.png: 8000x1 is more elongated than the server accepts (50:1)"
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 200 * 200)
    big = upload(client, "big.jpg", jpeg_bytes(np.zeros((300, 200, 3), np.uint8)))
    assert big.status_code == 400
    assert big.json()["detail"] == "big.jpg: 200x300 is over the server's limit of 0 megapixels"


def test_a_model_in_training_mode_is_served_in_eval_mode(cat_jpeg):
    model = imagezoo.load_model("efficientnet_lite0").train()
    served = TestClient(create_app(model))
    assert not model.training
    assert upload(served, "chelsea.jpg", cat_jpeg).json()["predictions"][0]["label"] in CAT_LABELS


def test_ten_crops_through_the_server_match_classify(lite0, cat_jpeg, tmp_path):
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(cat_jpeg)
    body = upload(TestClient(create_app(lite0, ten_crop=True)), "chelsea.jpg", cat_jpeg).json()
    expected = imagezoo.classify(lite0, [path], workers=0, ten_crop=True)[0].predictions
    assert [p["index"] for p in body["predictions"]] == [r.index for r in expected]
    np.testing.assert_allclose([p["probability"] for p in body["predictions"]],
                               [r.probability for r in expected], rtol=1e-5, atol=1e-7)


def test_model_description_page_and_health(client):
    model = client.get("/api/model").json()
    assert model["name"] == "efficientnet_lite0" and model["classes"] == 1000
    assert (model["backend"], model["precision"], model["numerics"]) == ("torch", "exact", "fp32")
    assert model["input_size"] == 224
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "/api/classify" in client.get("/openapi.json").json()["paths"]


def test_cli_serve_runs_the_engine_it_is_asked_for(monkeypatch, cat_jpeg):
    started = {}

    def fake_serve(model, **options):  # what uvicorn would be handed, without blocking
        started.update(model=model, address=options.pop("sock").getsockname(), **options)

    monkeypatch.setattr("imagezoo.serve.serve", fake_serve)
    code = cli.main(["serve", "efficientnet_lite0", "--backend", "onnxruntime",
                     "--precision", "exact", "--port", "0", "--top", "3"])
    assert code == 0
    engine = started["model"]
    assert (engine.backend, engine.precision) == ("onnxruntime", "exact")
    assert started["address"][0] == "127.0.0.1" and started["top"] == 3
    client = TestClient(create_app(engine, top=started["top"]))
    assert client.get("/api/model").json()["backend"] == "onnxruntime"
    body = upload(client, "chelsea.jpg", cat_jpeg).json()
    assert len(body["predictions"]) == 3 and body["predictions"][0]["label"] in CAT_LABELS


def test_cli_serve_refuses_two_model_names(capsys):
    assert cli.main(["serve", "resnet50", "--model", "resnet18"]) == 2
    assert "name the model once" in capsys.readouterr().err


def test_cli_serve_reports_a_port_in_use_before_loading_the_model(monkeypatch, capsys):
    monkeypatch.setattr("imagezoo.cli.inference.model_from_args",
                        lambda args: pytest.fail("loaded the model"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert f"imagezoo: error: cannot listen on 127.0.0.1:{port}: Address already in use" in error


def test_the_serve_command_end_to_end(cat_jpeg):
    """`imagezoo serve --port 0` in its own process: it says where it listens, answers
    uploads, refuses requests addressed to another host name, and stops cleanly on Ctrl-C."""
    process = subprocess.Popen([sys.executable, "-m", "imagezoo", "serve", "--port", "0",
                                "--backend", "torch", "--top", "2"],
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        match = re.search(r"serving efficientnet_lite0 \(torch, exact\) on (http://127\.0\.0\.1:\d+/)", line)
        assert match, line
        url = match.group(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=5) as answer:
                    assert answer.read() == b'{"status":"ok"}'
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        boundary = "imagezoo-test"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"chelsea.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() \
            + cat_jpeg + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(url + "api/classify", data=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            predictions = json.loads(answer.read())["predictions"]
        assert len(predictions) == 2 and predictions[0]["label"] in CAT_LABELS
        rebound = urllib.request.Request(url + "api/model", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=5)
        assert refused.value.code == 400
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        # One access-log line per request (client, method, path, status, time, image), then
        # the stop.
        lines = process.stderr.read().strip().splitlines()
        assert lines[-1] == "imagezoo: stopped"
        logged = [line.split(" ", 2)[2] for line in lines[:-1]]
        assert [" ".join(entry.split()[:3]) for entry in logged] == \
            ["GET /healthz 200"] * (len(logged) - 2) + ["POST /api/classify 200", "GET /api/model 400"]
        assert re.fullmatch(r"POST /api/classify 200 [\d.]+ms 451x300 38\.\dkB", logged[-2])
        process.stderr.close()


@contextlib.contextmanager
def running(app):
    """``app`` behind a real uvicorn server on a free port of 127.0.0.1; yields its URL."""
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def running_server(lite0):
    with running(create_app(lite0)) as url:
        yield url


def chromium_or_skip() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = "Debian's Chromium is not installed (apt-get install chromium; make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI must run the browser test, never skip it quietly
    pytest.skip(message)


def test_upload_page_in_a_browser(running_server, cat_jpeg, tmp_path):
    playwright_api = needed("playwright.sync_api", "Playwright")
    executable = chromium_or_skip()
    cat = tmp_path / "chelsea.jpg"
    cat.write_bytes(cat_jpeg)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo at all")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            # Root in a container needs --no-sandbox; the rest keep Chromium off the network.
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page()
            page.goto(running_server)
            playwright_api.expect(page.locator("#model")).to_contain_text(
                "efficientnet_lite0 · 1000 classes")
            page.set_input_files("#file", [str(cat), str(broken)])
            done = page.locator(".result.done")
            failed = page.locator(".result.failed")
            playwright_api.expect(done).to_have_count(1, timeout=30_000)
            playwright_api.expect(failed).to_have_count(1, timeout=30_000)
            assert done.locator(".name").inner_text() == "chelsea.jpg"
            labels = done.locator(".prediction .label").all_inner_texts()
            assert len(labels) == 5 and labels[0] in CAT_LABELS
            first_share = done.locator(".prediction .probability").first.inner_text()
            assert first_share.endswith("%") and 10 < float(first_share[:-1]) <= 100
            assert failed.locator(".error").inner_text() == \
                "broken.jpg: not an image Pillow can read (unrecognised content)"
            done.locator(".explain").click()  # on request: the heat map of the upload
            heat = done.locator(".heatmap")
            playwright_api.expect(heat).to_be_visible(timeout=60_000)
            assert heat.evaluate("img => img.naturalWidth") == 700
            assert failed.locator(".explain").is_hidden()
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with Image.open(shot) as picture:
        assert picture.format == "PNG" and picture.width > 300
