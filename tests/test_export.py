"""Export to ONNX and TorchScript: raw-pixel graphs with the normalisation inside, checked
against PyTorch; the metadata; OnnxModel with classify; failures that must be loud."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import imagezoo
from imagezoo import export
from imagezoo.data.transforms import Preprocess, to_tensor
from imagezoo.errors import ImagezooError, WeightsError
from imagezoo.export import (
    DEFAULT_OPSET, ExportError, OnnxModel, export_onnx, export_torchscript, is_onnx_file,
)
from imagezoo.models.normalize import InputNormalization, NormalizedModel, raw_pixel_preprocess
from imagezoo.models.resnet import ResNet, ResNetSpec

from conftest import shared_fixture

TOLERANCE = dict(rtol=1e-3, atol=1e-4)


# --- helpers and fixtures --------------------------------------------------------------------

def random_crops(count: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            for _ in range(count)]


def raw_pixels(crops: list[Image.Image]) -> torch.Tensor:
    """N x 3 x H x W float32 RGB 0..255, the exported graphs' input."""
    return torch.stack([torch.from_numpy(np.asarray(c, dtype=np.float32).transpose(2, 0, 1).copy())
                        for c in crops])


def pytorch_logits(model: torch.nn.Module, crops: list[Image.Image]) -> np.ndarray:
    """The model fed as classify feeds it: to_tensor with the model's own card."""
    with torch.no_grad():
        return model(torch.stack([to_tensor(c, model.card.preprocess) for c in crops])).numpy()


def randomize_batch_norm(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def small_resnet() -> torch.nn.Module:
    """A tiny torchvision-style ResNet (10 classes) with resnet18's card, adjusted."""
    torch.manual_seed(0)
    spec = ResNetSpec(block="basic", layers=(1, 1, 1, 1), width=16, num_classes=10)
    model = randomize_batch_norm(ResNet(spec), 0).eval()
    card = imagezoo.load_model("resnet18", weights="random").card
    model.card = replace(card, name="tiny_resnet", architecture=spec.to_dict(),
                         labels=[f"class {i}" for i in range(10)])
    return model


@pytest.fixture(scope="module")
def matconvnet_model() -> torch.nn.Module:
    """RGB 0..255 minus a 224 x 224 mean image: the mean image goes inside the graph."""
    return imagezoo.load_model(shared_fixture("matconvnet", "resnet_v1_w16_b1211.mat"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, lite0, small_resnet) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    return {
        "lite0": export_onnx(lite0, folder / "lite0.onnx"),
        "small": export_onnx(small_resnet, folder / "small.onnx"),
    }


# --- the normalisation module ----------------------------------------------------------------

MEAN_IMAGE = np.random.default_rng(5).uniform(80, 150, (32, 32, 3)).astype(np.float32)
SPECS = {
    "torchvision": Preprocess(crop=32),
    "efficientnet_lite": Preprocess(crop=32, scale=1.0, mean=(127.0,) * 3, std=(128.0,) * 3),
    "paddle_bgr": Preprocess(crop=32, scale=1.0, channel_order="BGR",
                             mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
    "matconvnet_mean_image": Preprocess(crop=32, scale=1.0, mean_image=MEAN_IMAGE,
                                        std=(1.0, 1.0, 1.0)),
    "mean_pixel_image": Preprocess(crop=32, scale=1.0, mean_image=MEAN_IMAGE[:1, :1],
                                   std=(1.0, 1.0, 1.0)),
    "odd_scale_bgr_std": Preprocess(crop=32, scale=0.5, channel_order="BGR",
                                    mean=(10.0, 20.0, 30.0), std=(2.0, 3.0, 4.0)),
}


@pytest.mark.parametrize("name", SPECS)
def test_input_normalization_equals_to_tensor(name):
    spec = SPECS[name]
    crops = random_crops(3, 32, seed=1)
    expected = torch.stack([to_tensor(c, spec) for c in crops])
    actual = InputNormalization(spec)(raw_pixels(crops))
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * scale)


def test_mean_image_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        InputNormalization(Preprocess(crop=224, scale=1.0, mean_image=MEAN_IMAGE))


def test_normalized_model_takes_raw_pixels_and_carries_a_raw_pixel_card(small_resnet, cat_photo):
    wrapped = NormalizedModel(small_resnet).eval()
    crops = random_crops(2, 224, seed=2)
    with torch.no_grad():
        actual = wrapped(raw_pixels(crops)).numpy()
    np.testing.assert_allclose(actual, pytorch_logits(small_resnet, crops), rtol=1e-5, atol=1e-5)
    assert wrapped.card.preprocess == raw_pixel_preprocess(small_resnet.card.preprocess)
    assert small_resnet.card.preprocess.mean == (0.485, 0.456, 0.406)   # the original is kept
    [theirs] = imagezoo.classify(wrapped, cat_photo, device="cpu")
    [ours] = imagezoo.classify(small_resnet, cat_photo, device="cpu")
    assert [r.index for r in theirs.predictions] == [r.index for r in ours.predictions]


# --- ONNX ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lite0", "small"])
def test_onnx_runtime_matches_pytorch_for_batches_of_1_and_3(name, exported, lite0, small_resnet):
    model = {"lite0": lite0, "small": small_resnet}[name]
    runtime = OnnxModel(exported[name])
    for count in (1, 3):
        crops = random_crops(count, 224, seed=count)
        actual = runtime(raw_pixels(crops)).numpy()
        assert actual.shape == (count, model.card.num_classes)
        np.testing.assert_allclose(actual, pytorch_logits(model, crops), **TOLERANCE)


def test_onnx_graph_interface_and_metadata(exported, lite0):
    proto = onnx.load(str(exported["lite0"]))
    [graph_input], [graph_output] = proto.graph.input, proto.graph.output
    assert graph_input.name == "pixels" and graph_output.name == "logits"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    metadata = {p.key: p.value for p in proto.metadata_props}
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == DEFAULT_OPSET and metadata["imagezoo.opset"] == str(DEFAULT_OPSET)
    card = imagezoo.ModelCard.from_json(metadata["imagezoo.card"])
    assert card.preprocess == raw_pixel_preprocess(lite0.card.preprocess)
    assert (card.preprocess.resize, card.preprocess.crop, card.preprocess.interpolation) == (256, 224, "bilinear")
    assert card.to_dict() == replace(lite0.card, preprocess=card.preprocess).to_dict()
    assert json.loads(metadata["imagezoo.labels"]) == lite0.card.labels
    assert json.loads(metadata["imagezoo.source_preprocess"]) == lite0.card.preprocess.to_dict()
    assert json.loads(metadata["imagezoo.input"])["range"] == [0, 255]

    runtime = OnnxModel(exported["lite0"])
    assert runtime.card.to_dict() == card.to_dict()
    assert list(runtime.parameters()) == []
    assert runtime.to("cpu") is runtime and runtime.eval() is runtime


def test_classify_through_onnx_equals_pytorch(exported, lite0, cat_photo, tmp_path):
    second = tmp_path / "noise.png"
    random_crops(1, 300, seed=7)[0].resize((400, 300)).save(second)
    inputs = [cat_photo, second]
    ours = imagezoo.classify(lite0, inputs, top=5, device="cpu", workers=0)
    theirs = imagezoo.classify(OnnxModel(exported["lite0"]), inputs, top=5, device="cpu", workers=0)
    for expected, actual in zip(ours, theirs):
        assert actual.ok, actual.error
        assert [r.index for r in actual.predictions] == [r.index for r in expected.predictions]
        np.testing.assert_allclose([r.probability for r in actual.predictions],
                                   [r.probability for r in expected.predictions], atol=1e-4, rtol=0)
        assert [r.label for r in actual.predictions] == [r.label for r in expected.predictions]
    assert theirs[0].predictions[0].label == "tiger cat"


def test_mean_image_model_exports_with_the_mean_inside(matconvnet_model, tmp_path):
    path = export_onnx(matconvnet_model, tmp_path / "mcn.onnx")
    runtime = OnnxModel(path)
    assert runtime.card.preprocess.mean_image is None and runtime.card.preprocess.scale == 1.0
    crops = random_crops(2, 224, seed=3)
    np.testing.assert_allclose(runtime(raw_pixels(crops)).numpy(),
                               pytorch_logits(matconvnet_model, crops), **TOLERANCE)
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    source = json.loads(metadata["imagezoo.source_preprocess"])
    assert source["mean_image"]["shape"] == [224, 224, 3] and source["scale"] == 1.0


def test_bgr_paddle_model_exports(tmp_path):
    model = imagezoo.load_model(shared_fixture("paddle_v1", "resnet_v1_w16_b1211"))
    assert model.card.preprocess.channel_order == "BGR"
    runtime = OnnxModel(export_onnx(model, tmp_path / "paddle.onnx"))
    crops = random_crops(2, 224, seed=4)
    np.testing.assert_allclose(runtime(raw_pixels(crops)).numpy(), pytorch_logits(model, crops),
                               **TOLERANCE)


def _corrupt_first_weight(proto):
    """Scale the largest initializer by 1.5: a graph that runs but computes something else."""
    tensor = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = onnx.numpy_helper.to_array(tensor) * 1.5
    tensor.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), tensor.name))
    return proto


def test_a_graph_that_differs_fails_loudly_and_leaves_no_file(small_resnet, tmp_path, monkeypatch):
    original = export._onnx_proto
    monkeypatch.setattr(export, "_onnx_proto", lambda *a: _corrupt_first_weight(original(*a)))
    target = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="largest difference"):
        export_onnx(small_resnet, target)
    assert list(tmp_path.iterdir()) == []

    # An existing file at the target is left as it was.
    target.write_bytes(b"previous")
    with pytest.raises(ExportError):
        export_onnx(small_resnet, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


def test_export_needs_a_card_a_crop_and_a_supported_opset(small_resnet, tmp_path):
    bare = ResNet(ResNetSpec(block="basic", layers=(1, 1, 1, 1), width=8, num_classes=3))
    with pytest.raises(ExportError, match="no card"):
        export_onnx(bare, tmp_path / "bare.onnx")
    bare.card = replace(small_resnet.card, preprocess=replace(small_resnet.card.preprocess, crop=None))
    with pytest.raises(ExportError, match="crop"):
        export_onnx(bare, tmp_path / "bare.onnx")
    with pytest.raises(ExportError, match="opset 17"):
        export_onnx(small_resnet, tmp_path / "old.onnx", opset=17)
    assert list(tmp_path.iterdir()) == []


def test_export_leaves_the_model_as_it_was(small_resnet):
    model = small_resnet.train()
    try:
        copy = export._cpu_eval_copy(model)
        assert copy is not model and not copy.training and model.training
    finally:
        small_resnet.eval()
    assert export._cpu_eval_copy(small_resnet) is small_resnet


# --- TorchScript -----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_round_trip(lite0, tmp_path):
    path = export_torchscript(lite0, tmp_path / "lite0.pt")   # Conv2dSame traced, then checked
    extra = {"imagezoo.card": ""}
    loaded = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    card = imagezoo.ModelCard.from_json(extra["imagezoo.card"])
    assert card.preprocess == raw_pixel_preprocess(lite0.card.preprocess)
    assert card.labels == lite0.card.labels
    crops = random_crops(3, 224, seed=13)
    expected = pytorch_logits(lite0, crops)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(raw_pixels(crops)).numpy(), expected, **TOLERANCE)
        np.testing.assert_allclose(loaded(raw_pixels(crops[:1])).numpy(), expected[:1], **TOLERANCE)
    assert not is_onnx_file(path)
    assert [p.name for p in tmp_path.iterdir()] == ["lite0.pt"]


# --- files that are not imagezoo ONNX models -------------------------------------------------

def test_non_onnx_files_are_rejected(tmp_path, cat_photo):
    text = tmp_path / "notes.onnx"
    text.write_text("hello, I am not a model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    looks_like_it = tmp_path / "header_only.onnx"
    looks_like_it.write_bytes(b"\x08\x08\x12\x07pytorch\xff\xff\xff")
    for path in (text, empty, looks_like_it, cat_photo, tmp_path, tmp_path / "missing.onnx"):
        assert not is_onnx_file(path), path
    with pytest.raises(WeightsError, match="not an ONNX model file"):
        OnnxModel(text)
    with pytest.raises(ImagezooError, match="not an ONNX model file"):
        OnnxModel(cat_photo)


def test_onnx_file_without_imagezoo_metadata_is_refused(exported, tmp_path):
    proto = onnx.load(str(exported["small"]))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    assert is_onnx_file(foreign)
    with pytest.raises(ImagezooError, match="not exported by imagezoo"):
        OnnxModel(foreign)


def test_command_line_export_then_classify_with_onnx_runtime(tmp_path, capsys, cat_photo):
    from imagezoo.cli import main
    onnx_path, script_path = tmp_path / "lite0.onnx", tmp_path / "lite0.pt"
    assert main(["export", "efficientnet_lite0", "--onnx", str(onnx_path),
                 "--torchscript", str(script_path)]) == 0
    assert "checked in ONNX Runtime" in capsys.readouterr().err
    assert main(["classify", str(cat_photo), "--model", str(onnx_path), "--json", "--top", "3"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert main(["classify", str(cat_photo), "--json", "--top", "3"]) == 0
    from_torch = json.loads(capsys.readouterr().out)
    assert [p["index"] for p in from_onnx["predictions"]] == [p["index"] for p in from_torch["predictions"]]
    assert main(["features", str(cat_photo), "--model", str(onnx_path), "--layers", "_fc",
                 "--out", str(tmp_path / "f.npz")]) == 2
    assert "exposes no layers" in capsys.readouterr().err
    assert main(["export", "efficientnet_lite0"]) == 2


# --- TorchScript files back in imagezoo ------------------------------------------------------

def test_torchscript_file_loads_as_a_model_and_classifies_like_the_original(small_resnet, cat_photo,
                                                                             tmp_path):
    import warnings
    from imagezoo.export import TorchScriptModel
    from imagezoo.weights.formats import detect_format
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # torch.jit.save's own notice
        path = export_torchscript(small_resnet, tmp_path / "tiny.pt")
    assert detect_format(path) == "torchscript"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = imagezoo.load_model(path)
        assert isinstance(loaded, TorchScriptModel) and not loaded.training
        assert not loaded.program.training
        [theirs] = imagezoo.classify(loaded, cat_photo, top=10, device="cpu", workers=0)
    assert [str(w.message) for w in caught] == []
    assert loaded.card.preprocess == raw_pixel_preprocess(small_resnet.card.preprocess)
    assert loaded.card.labels == small_resnet.card.labels and loaded.card.name == "tiny_resnet"
    [ours] = imagezoo.classify(small_resnet, cat_photo, top=10, device="cpu", workers=0)
    assert theirs.ok, theirs.error
    assert [r.index for r in theirs.predictions] == [r.index for r in ours.predictions]
    assert [r.label for r in theirs.predictions] == [r.label for r in ours.predictions]
    np.testing.assert_allclose([r.probability for r in theirs.predictions],
                               [r.probability for r in ours.predictions], rtol=0, atol=1e-5)
    # compiled code runs no forward hooks: features are refused in one line, not half-made
    from imagezoo.models.layers import UnknownLayerError
    with pytest.raises(UnknownLayerError, match="TorchScriptModel exposes no layers"):
        imagezoo.extract_features(loaded, cat_photo, ["program.model.layer1"])


def test_torchscript_files_that_cannot_run_are_refused_in_one_line(small_resnet, tmp_path):
    import warnings
    foreign = tmp_path / "foreign.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(foreign))
        damaged = export_torchscript(small_resnet, tmp_path / "damaged.pt")
    data = bytearray(damaged.read_bytes())
    record = data.find(b"data.pkl")         # its local header's name; the record follows it
    data[record + 40:record + 240] = bytes(200)
    damaged.write_bytes(bytes(data))
    for path, words in [(foreign, "a TorchScript file not exported by imagezoo (no "
                                  "'imagezoo.card' extra file)"),
                        (damaged, "TorchScript cannot load it")]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(WeightsError) as error:
                imagezoo.load_model(path)
        assert str(error.value).startswith(f"{path}: {words}")
        assert "\n" not in str(error.value) and "weights_only" not in str(error.value)
        assert [str(w.message) for w in caught] == []


def test_command_line_classifies_with_a_torchscript_file(small_resnet, cat_photo, tmp_path, capsys):
    import warnings
    from imagezoo.cli import main
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        path = export_torchscript(small_resnet, tmp_path / "tiny.pt")
    assert main(["classify", str(cat_photo), "--model", str(path), "--json", "--top", "3"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    [expected] = imagezoo.classify(small_resnet, cat_photo, top=3, device="cpu", workers=0)
    assert [p["index"] for p in record["predictions"]] == [r.index for r in expected.predictions]
    assert "Warning" not in captured.err and "weights_only" not in captured.err
