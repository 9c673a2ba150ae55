"""The weightless graphs shipped in the package (engine/graphs.py) and the engine made of one
before any is cached (engine/light.py): the same logits as eager PyTorch, not stale against the
model code, found only when the weights fit, and run without importing PyTorch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import imagezoo
from imagezoo.cli import main
from imagezoo.data.items import prepare_item
from imagezoo.data.transforms import preprocess_array
from imagezoo.engine import records
from imagezoo.engine.graphs import (DEFAULT_GRAPHS, export_graph, find_graph, graph_session,
                                    graphs_dir, registry_side)
from imagezoo.engine.light import CACHED_ENGINE, find_light_engine
from imagezoo.errors import WeightsMismatchError
from imagezoo.models.registry import MODELS, build_model, efficientnet_lite0_file
from imagezoo.weights.numpy_state import read_arrays

from conftest import CAT_PHOTO, ROOT

PHOTOS = [CAT_PHOTO, *sorted((ROOT / "src" / "imagezoo" / "resources").glob("*.jpg"))]
SHARED_CIFAR = ROOT.parent / "shared" / "weights" / "cifar10" / "resnet20-12fca82f.th"


def photo_batch(card) -> np.ndarray:
    """The sample photos preprocessed as both classify paths do."""
    arrays = []
    for photo in PHOTOS:
        array, error, _ = prepare_item(str(photo), preprocess_array, card.preprocess)
        assert error is None, error
        arrays.append(array)
    return np.stack(arrays)


def eager_logits(model, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


def graph_logits(name: str, arrays: dict, batch: np.ndarray) -> np.ndarray:
    entry = MODELS[name]
    graph = find_graph(entry.architecture, registry_side(name))
    assert graph is not None and graph.name == name
    return graph_session(graph, arrays).run(None, {"input": batch})[0]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("IMAGEZOO_CACHE", str(cache))
    monkeypatch.setenv("IMAGEZOO_BACKEND", "auto")
    monkeypatch.setenv("IMAGEZOO_BACKGROUND_ENGINES", "0")
    return cache


# --- (a) the graphs give eager PyTorch's logits ---------------------------------------------

def test_the_default_models_graph_with_its_bundled_weights_gives_eager_logits(lite0):
    batch = photo_batch(lite0.card)
    expected = eager_logits(lite0, batch)
    got = graph_logits("efficientnet_lite0", read_arrays(efficientnet_lite0_file()), batch)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # batches of one (the dynamic batch axis) give the same numbers
    np.testing.assert_allclose(graph_logits("efficientnet_lite0",
                                            read_arrays(efficientnet_lite0_file()), batch[:1]),
                               expected[:1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name,seed", [("resnet18", 3), ("resnet20_cifar", 4)])
def test_resnet_graphs_with_weights_from_a_file_give_eager_logits(tmp_path, name, seed,
                                                                  empty_cache):
    model = imagezoo.load_model(name, weights=f"random:{seed}")
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    batch = photo_batch(model.card)
    expected = eager_logits(model, batch)
    np.testing.assert_allclose(graph_logits(name, read_arrays(path), batch), expected,
                               rtol=0, atol=1e-4)
    # and through find_light_engine, with the card load_model gives that file
    engine = find_light_engine(name, str(path), "exact", "auto", 1)
    assert engine is not None and engine.origin == (
        f"imagezoo's graph of {name} with the weights of {path.name} (no engine cached yet)")
    np.testing.assert_allclose(engine(batch), expected, rtol=0, atol=1e-4)
    assert engine.card.to_dict() == imagezoo.load_model(name, weights=str(path)).card.to_dict()


def test_the_published_cifar_resnet_runs_in_its_graph(empty_cache):
    if not SHARED_CIFAR.exists():
        pytest.skip(f"{SHARED_CIFAR} is absent (../shared is not beside the project)")
    model = imagezoo.load_model("resnet20_cifar", weights=str(SHARED_CIFAR))
    batch = photo_batch(model.card)
    engine = find_light_engine("resnet20_cifar", str(SHARED_CIFAR), "exact", "auto", 1)
    assert engine is not None  # a legacy file, DataParallel's prefix, the publisher's names
    np.testing.assert_allclose(engine(batch), eager_logits(model, batch), rtol=0, atol=1e-4)
    assert engine.card.to_dict() == model.card.to_dict()


def test_the_default_model_without_a_cache_is_the_graph_with_the_torch_paths_card(
        lite0, empty_cache):
    engine = find_light_engine(None, None, "exact", "auto", 1)
    assert engine is not None
    assert engine.origin == ("imagezoo's graph of efficientnet_lite0 with the weights of "
                             "efficientnet-lite0-57934424.pth (no engine cached yet)")
    assert engine.card.to_dict() == lite0.card.to_dict()
    batch = photo_batch(lite0.card)
    np.testing.assert_allclose(engine(batch), eager_logits(lite0, batch), rtol=0, atol=1e-4)
    assert list(empty_cache.iterdir()) == []  # this path writes nothing to the cache


# --- (b) the shipped graphs are not stale ------------------------------------------------------

def graph_signature(model: onnx.ModelProto) -> dict:
    """What the network is, without the names the exporter gives intermediate values: the
    nodes in order with their attributes and the weights they read, the inputs and outputs,
    every initializer's name and shape (and the values of the non-weight constants)."""
    graph = model.graph
    weights = {t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    nodes = [(node.op_type, node.domain,
              sorted((a.name, repr(helper.get_attribute_value(a))) for a in node.attribute),
              [name for name in node.input if name in weights]) for node in graph.node]
    constants = {t.name: numpy_helper.to_array(t).tolist() for t in graph.initializer
                 if t.name not in weights}
    return {"inputs": [(i.name, str(i.type)) for i in graph.input],
            "outputs": [(o.name, str(o.type)) for o in graph.output],
            "nodes": nodes, "constants": constants,
            "weights": sorted((t.name, tuple(t.dims), t.data_type) for t in graph.initializer
                              if t.name in weights),
            "opsets": sorted((o.domain, o.version) for o in model.opset_import)}


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "resnet50", "resnet20_cifar"])
def test_the_shipped_graph_is_what_the_model_code_exports_now(name):
    shipped = onnx.load(str(graphs_dir() / f"{name}.onnx"), load_external_data=False)
    sidecar = json.loads((graphs_dir() / f"{name}.json").read_text())
    proto, fresh_sidecar = export_graph(dict(MODELS[name].architecture), registry_side(name))
    assert graph_signature(shipped) == graph_signature(proto), (
        f"resources/graphs/{name}.onnx is stale: run python -m imagezoo.engine.graphs --write")
    for key in ("architecture", "input", "output", "state_dict", "initializers"):
        assert sidecar[key] == fresh_sidecar[key], key


def test_every_shipped_graph_is_indexed_and_maps_every_weight():
    index = json.loads((graphs_dir() / "index.json").read_text())
    names = [entry["name"] for entry in index["graphs"]]
    assert sorted(names) == sorted(DEFAULT_GRAPHS)
    for entry in index["graphs"]:
        name = entry["name"]
        assert entry["architecture"] == MODELS[name].architecture
        assert entry["side"] == registry_side(name)
        sidecar = json.loads((graphs_dir() / f"{name}.json").read_text())
        assert sidecar["architecture"] == entry["architecture"]
        model_keys = list(build_model(entry["architecture"]).state_dict())
        assert list(sidecar["state_dict"]) == model_keys
        # one initializer per state-dict tensor, num_batches_tracked (unused) aside
        assert sorted(e["key"] for e in sidecar["initializers"].values()) == sorted(
            key for key in model_keys if not key.endswith(".num_batches_tracked"))
        shipped = onnx.load(str(graphs_dir() / f"{name}.onnx"), load_external_data=False)
        external = {t.name for t in shipped.graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL}
        assert external == set(sidecar["initializers"])
        assert (graphs_dir() / f"{name}.onnx").stat().st_size < 200_000


def test_a_graph_refuses_weights_that_do_not_fill_it():
    graph = find_graph(MODELS["efficientnet_lite0"].architecture, 224)
    arrays = read_arrays(efficientnet_lite0_file())
    del arrays["_fc.bias"]
    arrays["_conv_stem.weight"] = arrays["_conv_stem.weight"][:16]
    with pytest.raises(WeightsMismatchError, match=r"missing 1 tensor\(s\): _fc.bias.*"
                                                   r"_conv_stem.weight \(file \(16, 3, 3, 3\)"):
        graph_session(graph, arrays)
    assert find_graph({**MODELS["efficientnet_lite0"].architecture, "num_classes": 10}, 224) is None
    assert find_graph(MODELS["efficientnet_lite0"].architecture, 256) is None


# --- (c) the first run of the default model imports no PyTorch --------------------------------

def test_a_fresh_cache_classifies_without_torch_and_gives_the_torch_paths_numbers(
        tmp_path, lite0):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "IMAGEZOO_BACKEND"}
    env.update(IMAGEZOO_CACHE=str(cache), IMAGEZOO_BACKGROUND_ENGINES="0")
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "imagezoo", "classify",
                           str(CAT_PHOTO), "--json", "--top", "5"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"onnxruntime", "imagezoo.engine.graphs", "imagezoo.weights.numpy_state"} <= imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "onnx", "onnxscript")}
    record = json.loads(done.stdout)
    [expected] = imagezoo.classify(lite0, CAT_PHOTO, top=5)
    assert [r["label"] for r in record["predictions"]] == [r.label for r in expected.predictions]
    np.testing.assert_allclose([r["probability"] for r in record["predictions"]],
                               [r.probability for r in expected.predictions], rtol=0, atol=1e-5)
    assert list(cache.iterdir()) == []


# --- (d) weights that do not fit take the PyTorch path, which says why ------------------------

def misfit_files(tmp_path: Path) -> dict[str, Path]:
    state = imagezoo.load_model("resnet18", weights="random:5").state_dict()
    missing = {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}
    misshapen = {**state, "fc.weight": state["fc.weight"][:10], "fc.bias": state["fc.bias"][:10]}
    unexpected = {**state, "extra.weight": torch.zeros(3)}
    files = {}
    for label, tensors in (("missing", missing), ("misshapen", misshapen),
                           ("unexpected", unexpected)):
        files[label] = tmp_path / f"{label}.pth"
        torch.save(tensors, files[label])
    return files


def test_weights_that_do_not_fit_find_no_engine_and_the_torch_path_names_the_misfit(
        tmp_path, empty_cache, capfd):
    said = {"missing": "missing 1 tensor(s): layer2.0.conv1.weight",
            "misshapen": "2 tensor(s) of the wrong shape: fc.weight (file (10, 512)",
            "unexpected": "unexpected 1 tensor(s): extra.weight"}
    for label, path in misfit_files(tmp_path).items():
        assert find_light_engine("resnet18", str(path), "exact", "auto", 1) is None, label
        assert main(["classify", str(CAT_PHOTO), "--model", "resnet18", "--weights",
                     str(path)]) != 0
        err = capfd.readouterr().err
        assert "does not fit the model" in err and said[label] in err, err


def test_only_exact_runs_that_would_take_onnxruntime_use_the_graph(tmp_path, empty_cache):
    assert find_light_engine(None, None, "exact", "auto", 1) is not None
    assert find_light_engine(None, None, "exact", "onnxruntime", 8) is not None
    assert find_light_engine(None, None, "fast", "auto", 1) is None
    assert find_light_engine(None, None, "exact", "torch", 1) is None
    assert find_light_engine("resnet18", "random:3", "exact", "auto", 1) is None  # drawn by torch
    assert find_light_engine("resnet18", None, "exact", "auto", 1) is None  # no bundled weights
    hostile = tmp_path / "hostile.pth"
    target = tmp_path / "created"
    torch.save({"conv1.weight": torch.zeros(1), "x": Opener(target)}, hostile)
    assert find_light_engine("resnet18", str(hostile), "exact", "auto", 1) is None
    assert not target.exists()
    # a timing table that prefers PyTorch for this architecture wins over the rule
    card = find_light_engine(None, None, "exact", "auto", 1).card
    table = records.tuning_path(card.architecture, 224)
    records.write_json(table, {"exact/batch1": [
        {"backend": "torch", "precision": "exact", "images_per_second": 90.0},
        {"backend": "onnxruntime", "precision": "exact", "images_per_second": 60.0}]})
    assert find_light_engine(None, None, "exact", "auto", 1) is None
    assert find_light_engine(None, None, "exact", "onnxruntime", 1) is not None


class Opener:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), "w")


def test_a_cached_engine_is_preferred_and_says_so(empty_cache):
    model = imagezoo.load_model("resnet20_cifar", weights="random:6")
    assert find_light_engine("resnet20_cifar", "random:6", "exact", "auto", 1) is None
    imagezoo.optimize(model, backend="onnxruntime", batch_size=1)
    engine = find_light_engine("resnet20_cifar", "random:6", "exact", "auto", 1)
    assert engine is not None and engine.origin == CACHED_ENGINE


def test_bundled_weights_that_are_not_the_published_file_take_the_torch_path(
        empty_cache, monkeypatch):
    entry = MODELS["efficientnet_lite0"]
    monkeypatch.setattr(entry, "default_weights_sha256", "0" * 64)
    assert find_light_engine(None, None, "exact", "auto", 1) is None
