"""The PyTorch-free paths of ``evaluate`` and ``serve`` give the PyTorch paths' results.

``classify``'s PyTorch-free path is tested in test_startup.py. Here: ``evaluate`` over image
folders (with broken files, one crop and ten) and over CIFAR-10 arrays, the command taking that
path by itself in a process that never imports PyTorch, and a set's size deciding whether a
run times the backends.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import imagezoo
from imagezoo.data.cifar10 import CIFAR10_CLASSES, Cifar10Set
from imagezoo.engine import optimize
from imagezoo.engine.light import LightEngine
from imagezoo.engine.optimizer import engine_cache
from imagezoo.model_folder import read_card
from imagezoo.tasks.evaluate import evaluate
from imagezoo.tasks.light_classify import classify_light
from imagezoo.tasks.light_evaluate import evaluate_light

from conftest import CAT_PHOTO, ROOT

PHOTOS = [str(p) for p in sorted((ROOT / "src/imagezoo/resources").glob("*.jpg")) + [CAT_PHOTO]]


def checked_engine(model, cache):
    """The model's checked ONNX Runtime engine (torch-facing) and the same file as a
    ``LightEngine`` (NumPy-facing)."""
    engine = optimize(model, backend="onnxruntime", batch_size=4, cache_dir=cache)
    folder = engine_cache(model, cache)
    return engine, LightEngine(folder / "model.onnx", read_card(folder))


@pytest.fixture(scope="module")
def lite0_engines(tmp_path_factory):
    return checked_engine(imagezoo.load_model("efficientnet_lite0"),
                          tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory, lite0_engines):
    """The bundled photos in folders named by class index: each photo once under its top-1
    class and once under another one, plus a broken file and an empty one."""
    root = tmp_path_factory.mktemp("set")
    best = [p.predictions[0].index for p in classify_light(lite0_engines[1], PHOTOS, top=1)]
    for number, (photo, right) in enumerate(zip(PHOTOS, best)):
        for label in (right, 0 if right == 281 else 281):
            folder = root / str(label)
            folder.mkdir(exist_ok=True)
            (folder / f"{number}-{os.path.basename(photo)}").write_bytes(open(photo, "rb").read())
    (root / "281" / "broken.jpg").write_bytes(open(PHOTOS[0], "rb").read()[:300])
    (root / "281" / "empty.png").write_bytes(b"")
    return root


@pytest.mark.parametrize("ten_crop", [False, True])
def test_evaluate_without_torch_gives_the_torch_paths_figures(lite0_engines, class_folders,
                                                                ten_crop):
    engine, light = lite0_engines
    with_torch = evaluate(engine, class_folders, top=5, ten_crop=ten_crop, batch_size=3,
                          workers=0)
    without = evaluate_light(light, class_folders, top=5, ten_crop=ten_crop, batch_size=3)
    assert without.to_dict() == with_torch.to_dict()
    assert without.count == 2 * len(PHOTOS) and len(without.failed) == 2
    assert {os.path.basename(source) for source, _ in without.failed} == {"broken.jpg", "empty.png"}
    assert without.top1 == pytest.approx(0.5) or ten_crop  # half the labels are the top-1


def test_evaluate_without_torch_on_cifar10_arrays(tmp_path):
    model = imagezoo.load_model("resnet20_cifar", weights="random:3")
    engine, light = checked_engine(model, tmp_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 23)
    dataset = Cifar10Set(images, labels, list(CIFAR10_CLASSES), "made-up batch", "python")
    with_torch = evaluate(engine, dataset, top=3, batch_size=8)
    without = evaluate_light(light, dataset, top=3, batch_size=8)
    assert without.to_dict() == with_torch.to_dict()
    assert without.count == 23


def test_the_evaluate_command_runs_without_torch_fresh_and_once_the_engine_is_cached(
        tmp_path, class_folders):
    env = {**os.environ, "IMAGEZOO_CACHE": str(tmp_path), "IMAGEZOO_BACKEND": "auto",
           "IMAGEZOO_BACKGROUND_ENGINES": "0"}

    def run(options: list[str], *probe: str) -> subprocess.CompletedProcess:
        code = ("import sys\nfrom imagezoo.cli import main\n"
                f"status = main(['evaluate', {str(class_folders)!r}, '--json', *{options!r}])\n"
                + "\n".join(probe) + "\nsys.exit(status)")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, timeout=300, env=env)
    with_torch = run(["--backend", "torch"], "assert 'torch' in sys.modules")
    assert with_torch.returncode == 1, with_torch.stderr     # 1: two files could not be read
    # An empty cache: the shipped graph of the architecture with the bundled weights.
    fresh = run([], "assert 'torch' not in sys.modules, 'torch was imported'")
    assert fresh.returncode == 1, fresh.stderr
    assert "imagezoo's graph of efficientnet_lite0" in fresh.stderr
    subprocess.run([sys.executable, "-m", "imagezoo", "engines", "--prepare", "--batch-size", "8"],
                   check=True, capture_output=True, cwd=ROOT, env=env, timeout=600)
    cached = run([], "assert 'torch' not in sys.modules, 'torch was imported'")
    assert cached.returncode == 1, cached.stderr
    assert "imagezoo's graph" not in cached.stderr
    for run_ in (fresh, cached):
        assert json.loads(run_.stdout) == json.loads(with_torch.stdout)
        assert "broken.jpg" in run_.stderr and "empty.png" in run_.stderr


SERVE_PROBE = """
import sys
import imagezoo.serve
captured = {}
imagezoo.serve.serve = lambda model, **options: captured.update(model=model, **options)
from imagezoo.cli import main
assert main(['serve', '--port', '0']) == 0
from imagezoo.engine.light import LightEngine
assert isinstance(captured['model'], LightEngine), captured['model']
assert 'torch' not in sys.modules, 'torch was imported to start the server'
from fastapi.testclient import TestClient
from imagezoo.serve.app import create_app
client = TestClient(create_app(captured['model'], explainer=captured['explainer']))
with open(sys.argv[1], 'rb') as handle:
    answer = client.post('/api/classify?top=3', files={'file': ('cat.png', handle.read())})
assert answer.status_code == 200, answer.text
assert 'torch' not in sys.modules, 'torch was imported to classify'
print(answer.text)
with open(sys.argv[1], 'rb') as handle:
    heat = client.post('/api/explain', files={'file': ('cat.png', handle.read())})
assert heat.status_code == 200 and heat.content.startswith(b'\\x89PNG'), heat.text
assert 'torch' in sys.modules   # heat maps need the PyTorch model: loaded on first use
"""


def test_serve_runs_without_torch_once_the_engine_is_cached(tmp_path):
    env = {**os.environ, "IMAGEZOO_CACHE": str(tmp_path), "IMAGEZOO_BACKEND": "auto",
           "IMAGEZOO_BACKGROUND_ENGINES": "0"}
    subprocess.run([sys.executable, "-m", "imagezoo", "engines", "--prepare", "--batch-size", "8"],
                   check=True, capture_output=True, cwd=ROOT, env=env, timeout=600)
    done = subprocess.run([sys.executable, "-c", SERVE_PROBE, str(CAT_PHOTO)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    served = json.loads(done.stdout.strip().splitlines()[-1])
    [expected] = imagezoo.classify(imagezoo.load_model("efficientnet_lite0"), CAT_PHOTO, top=3)
    assert [r["index"] for r in served["predictions"]] == [r.index for r in expected.predictions]
    np.testing.assert_allclose([r["probability"] for r in served["predictions"]],
                               [r.probability for r in expected.predictions], atol=1e-5)


def test_a_weight_file_alone_is_its_own_model_on_the_torch_free_path_too(tmp_path):
    """``--weights FILE`` without ``--model`` names the file's own model (its card says so), as
    the PyTorch path does: the default model's shipped graph is not filled with it."""
    from imagezoo.models.registry import efficientnet_lite0_file
    copy = tmp_path / "my-lite0.pth"
    copy.write_bytes(efficientnet_lite0_file().read_bytes())
    env = {**os.environ, "IMAGEZOO_CACHE": str(tmp_path / "cache"), "IMAGEZOO_BACKEND": "auto",
           "IMAGEZOO_BACKGROUND_ENGINES": "0"}
    done = subprocess.run([sys.executable, "-m", "imagezoo", "classify", str(CAT_PHOTO),
                           "--weights", str(copy), "--json"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "imagezoo's graph" not in done.stderr and "running on torch" in done.stderr
    [expected] = imagezoo.classify(imagezoo.load_model(str(copy)), CAT_PHOTO)
    assert [r["index"] for r in json.loads(done.stdout)["predictions"]] == \
        [r.index for r in expected.predictions]

