"""optimize(): every backend against eager PyTorch, the fast-precision guard, the tuning cache."""
from __future__ import annotations

import builtins
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import imagezoo
from imagezoo.cli import main
from imagezoo.engine import backends, engine_cache, optimize, sample_inputs
from imagezoo.engine.optimizer import tuning_file
from imagezoo.engine.fold import fold_batch_norm
from imagezoo.models.resnet import resnet


@pytest.fixture(scope="module")
def photos(lite0):
    """Real photos (scikit-image's samples), preprocessed for the default model."""
    pictures = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket(),
                np.stack([skdata.camera()] * 3, axis=-1)]
    return torch.cat([imagezoo.preprocess(Image.fromarray(p), lite0.card) for p in pictures])


@pytest.fixture(scope="module")
def reference(lite0, photos):
    with torch.inference_mode():
        return lite0(photos)


@pytest.mark.parametrize("backend", ["torch", "torch-fast", "onnxruntime", "openvino"])
def test_exact_engines_reproduce_eager_pytorch(lite0, photos, reference, backend):
    engine = optimize(lite0, precision="exact", backend=backend, batch_size=len(photos))
    assert (engine.backend, engine.precision) == (backend, "exact")
    np.testing.assert_allclose(engine(photos).numpy(), reference.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch-fast", "onnxruntime", "openvino"])
def test_fast_engines_keep_the_top1_on_real_photos(lite0, photos, reference, backend):
    """Guarded: a fast engine that changes a top-1 on the calibration photos falls back to
    float32 with a warning. These photos are others (scikit-image's): the top-1 must hold
    wherever it leads by more than the guard's 0.05; the top-1 probability may move by more
    than on the calibration photos, but stays within twice the guard's bound (with Lite0's
    TensorFlow-eval card, int8 moved one of them by 0.072)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = optimize(lite0, precision="fast", backend=backend, batch_size=len(photos))
    assert (engine.precision == "exact") == any("falling back" in str(w.message) for w in caught)
    exact = torch.softmax(reference, 1)
    fast = torch.softmax(engine(photos).float(), 1)
    for row in range(len(photos)):
        tied = torch.nonzero(exact[row] >= exact[row].max() - 0.05).flatten().tolist()
        assert int(fast[row].argmax()) in tied, (row, tied)
        assert abs(float(fast[row, exact[row].argmax()] - exact[row].max())) <= 0.10
    assert engine.precision == "fast" or backend == "onnxruntime", engine.note


def test_batch_norm_folding_is_exact_within_float32():
    torch.manual_seed(0)
    model = resnet(18).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.2, 3)
            module.weight.data.uniform_(0.5, 1.5)
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def scrambling_fast_engines(monkeypatch):
    real_build = backends.build

    def scrambled(backend, model, numerics, *rest):
        run = real_build(backend, model, numerics, *rest)
        if numerics != "fp32":
            return lambda x: run(x).roll(1, dims=1)  # every top-1 moves to the next class
        return run

    monkeypatch.setattr("imagezoo.engine.optimizer.build", scrambled)


def test_fast_engine_that_disagrees_falls_back_to_exact(lite0, monkeypatch, tmp_path):
    scrambling_fast_engines(monkeypatch)
    with pytest.warns(UserWarning, match="fast onnxruntime engine was not used.*top-1 changed"):
        engine = optimize(lite0, precision="fast", backend="onnxruntime", cache_dir=tmp_path)
    assert (engine.backend, engine.precision) == ("onnxruntime", "exact")


def test_calibration_the_model_cannot_run_fails_at_once_and_caches_nothing(lite0, tmp_path):
    with pytest.raises(RuntimeError, match="channels"):
        optimize(lite0, backend="auto", calibration=torch.zeros(2, 4, 224, 224), cache_dir=tmp_path)
    assert not tuning_file(lite0, tmp_path).exists()


def test_a_rebuilt_engine_file_is_checked_again(lite0, monkeypatch, tmp_path):
    optimize(lite0, backend="onnxruntime", batch_size=2, cache_dir=tmp_path)
    decoded = []
    real = imagezoo.engine.optimizer.sample_inputs
    monkeypatch.setattr("imagezoo.engine.optimizer.sample_inputs", lambda m: decoded.append(1) or real(m))
    optimize(lite0, backend="onnxruntime", batch_size=2, cache_dir=tmp_path)
    assert decoded == []                       # recorded: no check
    onnx_file = engine_cache(lite0, tmp_path) / "model.onnx"
    os.utime(onnx_file, ns=(onnx_file.stat().st_atime_ns, onnx_file.stat().st_mtime_ns + 10**9))
    optimize(lite0, backend="onnxruntime", batch_size=2, cache_dir=tmp_path)
    assert decoded == [1]                      # the file changed: checked again
    optimize(lite0, backend="onnxruntime", batch_size=2, cache_dir=tmp_path, retune=True)
    assert decoded == [1, 1]                   # --retune checks again too


def test_openvino_fast_tries_int8_then_bfloat16(lite0, monkeypatch, tmp_path):
    """int8 comes first (the fastest here); when it misses the guard, bf16 is tried next."""
    real_build = backends.build
    built = []

    def int8_scrambled(backend, model, numerics, *rest):
        built.append(numerics)
        run = real_build(backend, model, numerics, *rest)
        return (lambda x: run(x).roll(1, dims=1)) if numerics == "int8" else run

    monkeypatch.setattr("imagezoo.engine.optimizer.build", int8_scrambled)
    engine = optimize(lite0, precision="fast", backend="openvino", batch_size=2, cache_dir=tmp_path)
    assert built == ["int8", "bf16"]
    assert (engine.backend, engine.precision, engine.numerics) == ("openvino", "fast", "bf16")
    assert (engine_cache(lite0, tmp_path) / "model.int8.onnx").exists()


def test_own_calibration_images_get_their_own_int8_file(lite0, photos, tmp_path):
    """An int8 file calibrated on the sample photos is never reused for a caller's own
    calibration images, nor the other way round; the same images reuse their file."""
    cache = engine_cache(lite0, tmp_path)
    optimize(lite0, precision="fast", backend="onnxruntime", batch_size=2, cache_dir=tmp_path)
    assert sorted(p.name for p in cache.glob("model.int8*.onnx")) == ["model.int8.onnx"]
    own = photos[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whether int8 passes on these photos is not the point
        optimize(lite0, precision="fast", backend="onnxruntime", batch_size=2,
                 calibration=own, cache_dir=tmp_path)
    files = sorted(cache.glob("model.int8-*.onnx"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimize(lite0, precision="fast", backend="onnxruntime", batch_size=2,
                 calibration=own.clone(), cache_dir=tmp_path)
        optimize(lite0, precision="fast", backend="onnxruntime", batch_size=2,
                 calibration=photos[2:], cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == stamp          # same images: the same file, reused
    assert len(list(cache.glob("model.int8-*.onnx"))) == 2  # other images: a file of their own


def test_a_checked_engine_loads_without_the_eager_model_next_time(lite0, photos, reference,
                                                                   monkeypatch, tmp_path):
    first = optimize(lite0, precision="fast", backend="torch-fast", batch_size=4, cache_dir=tmp_path)
    assert first.precision == "fast"
    checked = json.loads((engine_cache(lite0, tmp_path) / "checked.json").read_text())
    assert checked == {"torch-fast/bf16/batch4": {"passed": True, "files": []}}

    def no_samples(model):
        raise AssertionError("the sample photos were decoded again")
    monkeypatch.setattr("imagezoo.engine.optimizer.sample_inputs", no_samples)
    again = optimize(lite0, precision="fast", backend="torch-fast", batch_size=4, cache_dir=tmp_path)
    assert again.precision == "fast"
    np.testing.assert_array_equal(again(photos).numpy(), first(photos).numpy())
    # Images the caller gives are checked every time: a broken engine is caught even though
    # the same key passed before.
    scrambling_fast_engines(monkeypatch)
    with pytest.warns(UserWarning, match="top-1 changed"):
        caught = optimize(lite0, precision="fast", backend="torch-fast", batch_size=4,
                          calibration=photos, cache_dir=tmp_path)
    assert caught.precision == "exact"


def test_tuning_is_cached_and_redone_for_another_model(lite0, monkeypatch, tmp_path):
    timed = []
    real = imagezoo.engine.optimizer.images_per_second

    def counting(run, example, budget_seconds=0.2):
        timed.append(1)
        return real(run, example, budget_seconds)

    monkeypatch.setattr("imagezoo.engine.optimizer.images_per_second", counting)
    first = optimize(lite0, backend="auto", batch_size=1, cache_dir=tmp_path)
    assert len(timed) == 4 and first.backend in first.figures
    onnx = engine_cache(lite0, tmp_path) / "model.onnx"
    built = onnx.stat().st_mtime_ns
    assert list(engine_cache(lite0, tmp_path).glob("torch-fast-b*.pt"))  # the frozen graph
    again = optimize(lite0, backend="auto", batch_size=1, cache_dir=tmp_path)  # a "restart"
    assert len(timed) == 4 and again.backend == first.backend
    assert onnx.stat().st_mtime_ns == built
    # Other weights of the same network share the timing table (speed does not depend on
    # the weights' values) but not the engine files; another network is timed anew.
    other = imagezoo.load_model("efficientnet_lite0", weights="random")
    assert engine_cache(other, tmp_path) != engine_cache(lite0, tmp_path)
    optimize(other, backend="auto", batch_size=1, cache_dir=tmp_path)
    assert len(timed) == 4
    resnet = imagezoo.load_model("resnet18", weights="random")
    optimize(resnet, backend="auto", batch_size=1, cache_dir=tmp_path)
    assert len(timed) == 8


def test_a_missing_backend_is_skipped_with_a_message(lite0, monkeypatch, tmp_path):
    real_import = builtins.__import__

    def without_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_openvino)
    monkeypatch.setattr("imagezoo.engine.optimizer.images_per_second", lambda run, example: 1.0)
    engine = optimize(lite0, backend="auto", batch_size=1, cache_dir=tmp_path)
    table = json.loads(tuning_file(lite0, tmp_path).read_text())["exact/batch1"]
    problems = {row["backend"]: row["problem"] for row in table}
    assert "openvino is not installed (pip install openvino)" == problems["openvino"]
    assert engine.backend != "openvino"
    fallback = optimize(lite0, backend="openvino", cache_dir=tmp_path)
    assert fallback.backend == "torch" and "openvino is not installed" in fallback.note


def test_cli_engines_table_and_fast_classify(cat_photo, capsys, monkeypatch):
    monkeypatch.setattr("imagezoo.engine.optimizer.images_per_second", lambda run, example: 2.0)
    assert main(["engines", "efficientnet_lite0", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["backend", "numerics", "img/s", "vs", "torch", "note"]
    assert "<- chosen" in out and "openvino" in out and "onnxruntime" in out
    assert main(["classify", str(cat_photo), "--precision", "fast", "--backend", "onnxruntime",
                 "--json", "--top", "1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["predictions"][0]["index"] in range(281, 286)


def test_features_through_openvino_match_the_hooks(lite0, photos, tmp_path):
    layers = ["_blocks.3", "_avg_pooling", "_fc"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fall-back to the hooks would be a warning
        engine = imagezoo.extract_features(lite0, photos, layers, backend="openvino")
    hooks = imagezoo.extract_features(lite0, photos, layers)
    for name in layers:
        scale = max(1.0, float(hooks[name].abs().max()))
        torch.testing.assert_close(engine[name], hooks[name], rtol=1e-4, atol=1e-4 * scale)


def test_sample_inputs_are_real_photos(lite0):
    samples = sample_inputs(lite0)
    assert samples.shape == (8, 3, 224, 224)
    with torch.inference_mode():
        assert int(lite0(samples[:1]).argmax()) in range(281, 286)


def test_a_tuned_openvino_engine_runs_without_torch_too(tmp_path):
    """When timing made OpenVINO the engine of an architecture, the next run compiles the
    cached, checked model.onnx in OpenVINO without PyTorch; the table decides between the
    two runtimes, and a backend that needs PyTorch (or no check) means the PyTorch path.
    (Here, not in test_light_paths.py: OpenVINO stays in the process, see the Makefile.)"""
    from imagezoo.engine import records
    from imagezoo.engine.light import LightEngine, OpenVinoEngine, find_light_engine
    model = imagezoo.load_model("resnet18", weights="random:1")
    with_openvino = optimize(model, backend="openvino", batch_size=2, cache_dir=tmp_path)
    found = find_light_engine("resnet18", "random:1", "exact", "openvino", 2, tmp_path)
    assert isinstance(found, OpenVinoEngine) and found.card.labels == model.card.labels
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    np.testing.assert_allclose(found(x), with_openvino(torch.from_numpy(x)).numpy(), atol=1e-5)
    # No ONNX Runtime check yet: auto without a table (the rule: ONNX Runtime) has none to run.
    assert find_light_engine("resnet18", "random:1", "exact", "auto", 2, tmp_path) is None
    optimize(model, backend="onnxruntime", batch_size=2, cache_dir=tmp_path)
    table = records.tuning_path(model.card.architecture, 224, tmp_path)

    def fastest_is(backend: str):
        rates = {"torch": 10.0, "onnxruntime": 20.0, "openvino": 20.0, backend: 30.0}
        records.write_json(table, {"exact/batch2": [
            {"backend": name, "precision": "exact", "images_per_second": rate}
            for name, rate in rates.items()]})
        return find_light_engine("resnet18", "random:1", "exact", "auto", 2, tmp_path)
    assert isinstance(fastest_is("openvino"), OpenVinoEngine)
    chosen = fastest_is("onnxruntime")
    assert isinstance(chosen, LightEngine) and chosen.backend == "onnxruntime"
    assert fastest_is("torch") is None
