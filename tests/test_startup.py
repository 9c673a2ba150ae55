"""The first minutes: no waiting for tuning on a short run, no PyTorch where none is needed.

Speed is measured in benchmarks/bench_startup.py; these tests check the mechanisms: which
modules a command imports, which backend a short run takes and why, that the PyTorch-free path
gives the PyTorch path's numbers, and that timing tables are shared where they apply.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import imagezoo
from imagezoo.cli import main
from imagezoo.data.transforms import Preprocess, preprocess_array, preprocess_ten_crop_array
from imagezoo.engine import optimize
from imagezoo.engine.light import CACHED_ENGINE, find_light_engine
from imagezoo.engine.optimizer import engine_cache, is_tuned, tuning_file
from imagezoo.tasks.light_classify import classify_light

from conftest import CAT_PHOTO, ROOT


def imports_torch(code: str, env: dict | None = None) -> bool:
    """Whether running ``code`` in a fresh interpreter imports PyTorch."""
    probe = code + "\nimport sys; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["classify", "--help"], ["cache"]])
def test_commands_that_need_no_tensors_do_not_import_torch(argv, tmp_path):
    code = ("from imagezoo.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass"
            % argv)
    assert not imports_torch(code, {"IMAGEZOO_CACHE": str(tmp_path)})


def test_import_imagezoo_and_inspect_of_a_card_do_not_import_torch(tmp_path):
    folder = tmp_path / "model"
    imagezoo.save_model(imagezoo.load_model("resnet18", weights="random"), folder)
    assert not imports_torch("import imagezoo")
    assert not imports_torch(f"from imagezoo.cli import main\nmain(['inspect', {str(folder)!r}])")
    assert imports_torch("import imagezoo\nimagezoo.classify")  # the API's names still work


@pytest.mark.parametrize("spec", [
    Preprocess(),  # torchvision's
    Preprocess(resize=256, crop=224, scale=1.0, mean=(127.0,) * 3, std=(128.0,) * 3),  # Lite0
    Preprocess(resize=224, crop=224, scale=1.0, channel_order="BGR", mean=(103.9, 116.8, 123.7),
               std=(1.0, 1.0, 1.0)),  # Caffe's
    Preprocess(resize=None, crop=None, scale=1.0,
               mean_image=np.random.default_rng(0).uniform(0, 255, (1, 1, 3)), std=(1.0,) * 3),
])
def test_numpy_preprocessing_is_the_torch_paths_bit_for_bit(spec):
    from imagezoo.data.transforms import preprocess_image, preprocess_ten_crop
    image = Image.open(CAT_PHOTO).convert("RGB")
    np.testing.assert_array_equal(preprocess_array(image, spec), preprocess_image(image, spec).numpy())
    if spec.crop:
        np.testing.assert_array_equal(preprocess_ten_crop_array(image, spec),
                                      preprocess_ten_crop(image, spec).numpy())


def test_random_weights_are_seeded():
    first = imagezoo.load_model("resnet18", weights="random")
    again = imagezoo.load_model("resnet18", weights="random:0")
    other = imagezoo.load_model("resnet18", weights="random:7")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 again.state_dict().values()))
    assert not torch.equal(first.conv1.weight, other.conv1.weight)
    assert (first.card.source, other.card.source) == ("random:0", "random:7")
    assert engine_cache(first) == engine_cache(again) != engine_cache(other)
    with pytest.raises(imagezoo.WeightsError, match="must be a non-negative integer"):
        imagezoo.load_model("resnet18", weights="random:x")


def test_a_short_run_never_times_and_says_which_backend(monkeypatch, tmp_path):
    model = imagezoo.load_model("resnet18", weights="random")
    monkeypatch.setattr("imagezoo.engine.optimizer.images_per_second",
                        lambda *a, **k: pytest.fail("a short run timed the backends"))
    engine = optimize(model, batch_size=1, images=1, cache_dir=tmp_path)
    assert engine.backend == "torch" and "no engine of this model is cached" in engine.note
    optimize(model, backend="onnxruntime", batch_size=1, cache_dir=tmp_path)  # built and checked
    engine = optimize(model, batch_size=4, images=3, cache_dir=tmp_path)
    assert engine.backend == "onnxruntime" and "built for this model earlier" in engine.note
    assert not is_tuned(model, "exact", 4, tmp_path)


def test_one_tuning_serves_every_batch_size_and_every_model_of_the_architecture(
        monkeypatch, tmp_path):
    timed = []
    monkeypatch.setattr("imagezoo.engine.optimizer.images_per_second",
                        lambda run, example, budget_seconds=0.2:
                        timed.append(example.shape[0]) or 1.0)
    base = imagezoo.load_model("resnet18", weights="random")
    optimize(base, batch_size=2, cache_dir=tmp_path)  # the API times when not told the size
    assert timed and set(timed) == {2}
    count = len(timed)
    for batch in (1, 8, 32):
        assert is_tuned(base, "exact", batch, tmp_path)
        optimize(base, batch_size=batch, images=10_000, cache_dir=tmp_path)
    # A fine-tuned model (other weights, another head) of the same architecture inherits it.
    derived = imagezoo.load_model("resnet18", weights="random:3")
    derived.fc = torch.nn.Linear(512, 2)
    derived.card.architecture["num_classes"], derived.card.labels = 2, ["a", "b"]
    assert tuning_file(derived, tmp_path) == tuning_file(base, tmp_path)
    optimize(derived, batch_size=8, images=10_000, cache_dir=tmp_path)
    assert len(timed) == count


def test_the_torch_free_path_gives_the_torch_paths_results(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("IMAGEZOO_BACKEND", "auto")
    monkeypatch.setenv("IMAGEZOO_BACKGROUND_ENGINES", "0")
    lite0 = imagezoo.load_model("efficientnet_lite0")
    # Nothing cached yet: the shipped graph with the bundled weights, not a cached engine.
    assert find_light_engine(None, None, "exact", "auto", 1).origin != CACHED_ENGINE
    engine = optimize(lite0, backend="onnxruntime", batch_size=2)
    light = find_light_engine(None, None, "exact", "auto", 2)
    assert light.origin == CACHED_ENGINE and light.card.labels == lite0.card.labels
    photos = [str(CAT_PHOTO), *sorted(str(p) for p in (ROOT / "src/imagezoo/resources").glob("*.jpg"))]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    inputs = [*photos, str(broken)]
    for ten_crop in (False, True):
        with_torch = imagezoo.classify(engine, inputs, top=5, ten_crop=ten_crop, workers=0)
        without = classify_light(light, inputs, top=5, ten_crop=ten_crop)
        assert [r.error for r in without] == [r.error for r in with_torch]
        for a, b in zip(with_torch, without):
            if a.ok:
                assert [x.index for x in a.predictions] == [x.index for x in b.predictions]
                np.testing.assert_allclose([x.probability for x in a.predictions],
                                           [x.probability for x in b.predictions], atol=1e-6)
    # The command takes that path by itself, in a process that never imports PyTorch.
    code = ("from imagezoo.cli import main\n"
            f"assert main(['classify', {str(CAT_PHOTO)!r}, '--json', '--top', '3']) == 0")
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "assert 'torch' not in sys.modules, 'torch was imported'"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "IMAGEZOO_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    [expected] = imagezoo.classify(engine, CAT_PHOTO, top=3)
    assert [r["index"] for r in record["predictions"]] == [r.index for r in expected.predictions]


def test_a_changed_engine_file_is_not_run_without_its_check(tmp_path):
    model = imagezoo.load_model("resnet18", weights="random:1")
    optimize(model, backend="onnxruntime", batch_size=1, cache_dir=tmp_path)
    found = find_light_engine("resnet18", "random:1", "exact", "auto", 1, tmp_path)
    assert found is not None
    onnx = engine_cache(model, tmp_path) / "model.onnx"
    os.utime(onnx, ns=(onnx.stat().st_atime_ns, onnx.stat().st_mtime_ns + 10**9))
    assert find_light_engine("resnet18", "random:1", "exact", "auto", 1, tmp_path) is None
    assert find_light_engine("resnet18", "random:2", "exact", "auto", 1, tmp_path) is None
    assert find_light_engine("resnet18", "random:1", "fast", "auto", 1, tmp_path) is None


def test_first_run_prepares_the_engine_in_the_background(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("IMAGEZOO_BACKEND", "auto")
    started = []
    monkeypatch.setattr("subprocess.Popen", lambda command, **options: started.append(command))
    assert main(["classify", str(CAT_PHOTO), "--model", "resnet18", "--weights", "random:2",
                 "--top", "1"]) == 0
    err = capfd.readouterr().err
    assert "imagezoo: running on torch (eager PyTorch: no engine of this model is cached" in err
    assert "preparing the ONNX Runtime engine in the background" in err
    [command] = started
    assert command[1:] == ["-m", "imagezoo", "engines", "--prepare", "--batch-size", "1",
                           "resnet18", "--weights", "random:2"]
    # What that process does, run here: afterwards the same command finds the engine.
    assert main(command[3:]) == 0
    assert find_light_engine("resnet18", "random:2", "exact", "auto", 1) is not None
    monkeypatch.setenv("IMAGEZOO_BACKGROUND_ENGINES", "0")
    started.clear()
    assert main(["classify", str(CAT_PHOTO), "--model", "resnet18", "--weights", "random:5",
                 "--top", "1"]) == 0
    assert started == []


def test_the_cache_command_lists_and_clears(tmp_path, capfd):
    model = imagezoo.load_model("resnet18", weights="random:4")
    optimize(model, backend="onnxruntime", batch_size=1, cache_dir=tmp_path)
    assert main(["cache", "--cache-dir", str(tmp_path)]) == 0
    out = capfd.readouterr().out
    assert out.splitlines()[0] == f"cache folder: {tmp_path}"
    assert "resnet18" in out and "engines are capped at 2.0 GiB" in out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed" in capfd.readouterr().out
    assert not (engine_cache(model, tmp_path) / "model.onnx").exists()
    assert main(["cache", "--max-size", "lots", "--cache-dir", str(tmp_path)]) == 2
    assert "is not a size" in capfd.readouterr().err


def test_the_rule_chosen_engine_in_the_cli_says_so_and_the_light_path_is_quiet(
        tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("IMAGEZOO_BACKEND", "auto")
    monkeypatch.setenv("IMAGEZOO_BACKGROUND_ENGINES", "0")
    optimize(imagezoo.load_model("resnet18", weights="random:6"), backend="onnxruntime",
             batch_size=1)
    assert main(["classify", str(CAT_PHOTO), "--model", "resnet18", "--weights", "random:6",
                 "--top", "1", "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["predictions"][0]["rank"] == 1 and err == ""


def test_saved_folders_are_found_by_their_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "folder"
    imagezoo.save_model(imagezoo.load_model("resnet18", weights="random:8"), folder)
    model = imagezoo.load_model(folder)
    optimize(model, backend="onnxruntime", batch_size=1)
    assert find_light_engine(str(folder), None, "exact", "auto", 1) is not None
    card = json.loads((folder / "card.json").read_text())
    card["labels"][0] = "renamed"
    (folder / "card.json").write_text(json.dumps(card))
    assert find_light_engine(str(folder), None, "exact", "auto", 1) is None
