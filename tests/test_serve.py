"""The HTTP server: its JSON API on real photos, errors by status and message, the CLI's
engine options, and the upload page driven in a real browser (Debian's Chromium)."""
from __future__ import annotations

import io
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

fastapi = pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

import imagezoo  # noqa: E402
from imagezoo import cli  # noqa: E402
from imagezoo.serve import create_app  # noqa: E402

CAT_LABELS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cat_jpeg() -> bytes:
    return jpeg_bytes(skdata.chelsea())


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
    assert not_an_image.json()["detail"] == "notes.jpg: not an image Pillow can read"
    truncated = upload(client, "cut.jpg", cat_jpeg[: len(cat_jpeg) // 3])
    assert truncated.status_code == 400
    assert truncated.json()["detail"].startswith("cut.jpg: corrupt or truncated image")
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
        started.update(model=model, **options)

    monkeypatch.setattr(cli, "serve", fake_serve)
    code = cli.main(["serve", "efficientnet_lite0", "--backend", "onnxruntime",
                     "--precision", "exact", "--port", "8123", "--top", "3"])
    assert code == 0
    engine = started["model"]
    assert (engine.backend, engine.precision) == ("onnxruntime", "exact")
    assert (started["host"], started["port"], started["top"]) == ("127.0.0.1", 8123, 3)
    client = TestClient(create_app(engine, top=started["top"]))
    assert client.get("/api/model").json()["backend"] == "onnxruntime"
    body = upload(client, "chelsea.jpg", cat_jpeg).json()
    assert len(body["predictions"]) == 3 and body["predictions"][0]["label"] in CAT_LABELS


def test_cli_serve_refuses_two_model_names(capsys):
    assert cli.main(["serve", "resnet50", "--model", "resnet18"]) == 2
    assert "name the model once" in capsys.readouterr().err


@pytest.fixture
def running_server(lite0):
    """The app behind a real uvicorn server on a free port of 127.0.0.1."""
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(create_app(lite0), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=30)


def chromium_or_skip() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = "Debian's Chromium is not installed (apt-get install chromium; make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI must run the browser test, never skip it quietly
    pytest.skip(message)


def test_upload_page_in_a_browser(running_server, cat_jpeg, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
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
                "broken.jpg: not an image Pillow can read"
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with Image.open(shot) as picture:
        assert picture.format == "PNG" and picture.width > 300
