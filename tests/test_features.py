"""Features from named layers: reference values, layer names, ten crops, files, flat memory."""
from __future__ import annotations

import json
import warnings
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import imagezoo
from imagezoo.cli import main
from imagezoo.data.transforms import resize_and_pad, ten_crop_images, to_tensor
from imagezoo.models.resnet import ResNet, ResNetSpec
from imagezoo.models.layers import UnknownLayerError, layer_aliases, list_layers
from imagezoo.engine import backends, engine_cache, layer_engines
from imagezoo.tasks.features import extract_features
from conftest import shared_fixture, stage_tolerance


def test_torchvision_stages_from_a_tensor():
    reference = np.load(shared_fixture("torchvision", "resnet18_random_io.npz"))
    model = imagezoo.load_model("resnet18", weights=shared_fixture("torchvision", "resnet18_random.pth"))
    names = ["layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    features = extract_features(model, torch.from_numpy(reference["input"]), names)
    for name in names[:-1]:
        np.testing.assert_allclose(features[name].numpy(), reference[name], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features["fc"].numpy(), reference["logits"], rtol=1e-4, atol=1e-4)


def test_torchvision_stages_from_the_photo_pooled():
    reference = np.load(shared_fixture("torchvision", "resnet18_random_io.npz"))
    model = imagezoo.load_model("resnet18", weights=shared_fixture("torchvision", "resnet18_random.pth"))
    photo = shared_fixture("torchvision", "photo_300x400.png")
    features = extract_features(model, photo, ["layer4", "pool5"], pool="avg")
    assert features.inputs == [str(photo)] and features.failures == []
    np.testing.assert_allclose(features["layer4"].numpy(), reference["avgpool"][:, :, 0, 0],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features["pool5"].numpy(), reference["avgpool"][:, :, 0, 0],
                               rtol=1e-4, atol=1e-4)


def test_matconvnet_stages_by_their_caffe_names():
    reference = np.load(shared_fixture("matconvnet", "resnet_v1_w16_b1211_io.npz"))
    model = imagezoo.load_model(shared_fixture("matconvnet", "resnet_v1_w16_b1211.mat"))
    names = {"stage1": "res2a", "stage2": "res3b", "stage3": "res4a", "stage4": "res5a",
             "pooled": "pool5", "logits": "fc1000"}
    features = extract_features(model, torch.from_numpy(reference["input"]), list(names.values()))
    for key, name in names.items():
        value = features[name].numpy().reshape(reference[key].shape)
        np.testing.assert_allclose(value, reference[key], **stage_tolerance(reference[key]))


def test_paddle_stages_by_their_paddle_names():
    reference = np.load(shared_fixture("paddle_v1", "resnet_v1_w16_b1211_io.npz"))
    model = imagezoo.load_model(shared_fixture("paddle_v1", "resnet_v1_w16_b1211"))
    names = {"stage1": "res2_1", "stage2": "res3_2", "stage3": "res4_1", "stage4": "res5_1",
             "pooled": "avgpool"}
    features = extract_features(model, torch.from_numpy(reference["input_bgr"]), list(names.values()))
    for key, name in names.items():
        value = features[name].numpy().reshape(reference[key].shape)
        np.testing.assert_allclose(value, reference[key], **stage_tolerance(reference[key]))
    output = extract_features(model, torch.from_numpy(reference["input_bgr"]), ["output"])["output"]
    np.testing.assert_allclose(output.numpy(), torch.softmax(torch.from_numpy(reference["logits"]), 1),
                               rtol=1e-4, atol=1e-6)


def test_paddle_stages_through_onnxruntime(tmp_path, monkeypatch):
    """The layers as outputs of one ONNX graph in ONNX Runtime give the independent
    reference's stage maps too (Paddle names, the ReLU after a '_bn' name inside the graph)."""
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    reference = np.load(shared_fixture("paddle_v1", "resnet_v1_w16_b1211_io.npz"))
    model = imagezoo.load_model(shared_fixture("paddle_v1", "resnet_v1_w16_b1211"))
    names = {"stage1": "res2_1", "stage2": "res3_2", "stage3": "res4_1", "stage4": "res5_1",
             "pooled": "avgpool"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fall-back to the hooks would be a warning
        features = extract_features(model, torch.from_numpy(reference["input_bgr"]),
                                    list(names.values()) + ["res5_1_branch2a_bn"],
                                    backend="onnxruntime")
    for key, name in names.items():
        value = features[name].numpy().reshape(reference[key].shape)
        np.testing.assert_allclose(value, reference[key], **stage_tolerance(reference[key]))
    hooks = extract_features(model, torch.from_numpy(reference["input_bgr"]), ["res5_1_branch2a_bn"])
    assert float(features["res5_1_branch2a_bn"].min()) >= 0  # after its ReLU, as Paddle names it
    torch.testing.assert_close(features["res5_1_branch2a_bn"], hooks["res5_1_branch2a_bn"],
                               rtol=1e-4, atol=1e-4)


def test_a_layer_engine_that_disagrees_gives_way_to_the_hooks(lite0, monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    real_build = backends.build

    def perturbed(*args):
        run = real_build(*args)
        return lambda x: tuple(value + 0.01 for value in run(x))

    monkeypatch.setattr(layer_engines, "build", perturbed)
    x = torch.randn(2, 3, 224, 224)
    with pytest.warns(UserWarning, match=r"features run on the torch backend \(onnxruntime: "
                                         r"layer _blocks.3 differs from the hooks"):
        got = extract_features(lite0, x, ["_blocks.3", "_fc"], backend="onnxruntime")
    hooks = extract_features(lite0, x, ["_blocks.3", "_fc"])
    torch.testing.assert_close(got["_blocks.3"], hooks["_blocks.3"], rtol=0, atol=0)
    with pytest.warns(UserWarning, match="torch-fast cannot give the model's own layers"):
        folded = extract_features(lite0, x, ["_fc"], backend="torch-fast")
    torch.testing.assert_close(folded["_fc"], hooks["_fc"], rtol=0, atol=0)


def test_layer_engine_edge_cases(lite0, monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    with pytest.raises(imagezoo.ImagezooError, match="backend must be auto or one of"):
        extract_features(lite0, torch.zeros(1, 3, 224, 224), ["_fc"], backend="onnx")
    x = torch.randn(2, 3, 224, 224)
    hooks = extract_features(lite0, x, ["_blocks.3", "_fc"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twice = extract_features(lite0, x, ["_fc", "_blocks.3", "_fc"], backend="onnxruntime")
    torch.testing.assert_close(twice["_fc"], hooks["_fc"], rtol=1e-4, atol=1e-4)
    smaller = torch.randn(2, 3, 160, 160)
    with pytest.warns(UserWarning, match="features of 160x160 inputs run on the torch backend"):
        got = extract_features(lite0, smaller, ["_fc"], backend="onnxruntime")
    torch.testing.assert_close(got["_fc"], extract_features(lite0, smaller, ["_fc"])["_fc"])
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.warns(UserWarning, match="the model has no card"):
        got = extract_features(plain, x, ["0"], backend="openvino")
    torch.testing.assert_close(got["0"], plain[0](x))


def test_a_stale_layer_engine_file_is_exported_again(lite0, monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    x = torch.randn(2, 3, 224, 224)
    imagezoo.optimize(lite0, backend="onnxruntime", batch_size=2)
    whole_model = engine_cache(lite0) / "model.onnx"   # logits where _blocks.3 should be
    extract_features(lite0, x, ["_blocks.3"], backend="onnxruntime")
    [layer_file] = (tmp_path / "engines").rglob("layers-*/model.onnx")
    layer_file.write_bytes(whole_model.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exported again and checked, not a fall-back
        got = extract_features(lite0, x, ["_blocks.3"], backend="onnxruntime")
    assert layer_file.read_bytes() != whole_model.read_bytes()
    torch.testing.assert_close(got["_blocks.3"], extract_features(lite0, x, ["_blocks.3"])["_blocks.3"],
                               rtol=1e-4, atol=1e-3)


def test_paddle_bn_names_carry_their_activation():
    model = imagezoo.load_model(shared_fixture("paddle_v1", "resnet_v1_w16_b1211"))
    x = torch.randn(1, 3, 64, 64)
    got = extract_features(model, x, ["res5_1_branch2a_bn", "res5_1_branch2c_bn", "bn5a_branch2a",
                                      "res5a_branch2a", "layer4.0.bn3"])
    block = model.layer4[0]
    with torch.no_grad():
        captured = {}
        hook = block.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0].clone()))
        model(x)
        hook.remove()
        conv = block.conv1(captured["x"])
        bn = block.bn1(conv)
        bn3 = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(torch.relu(bn))))))
    torch.testing.assert_close(got["res5a_branch2a"], conv)
    torch.testing.assert_close(got["bn5a_branch2a"], bn)               # Caffe: before the ReLU
    torch.testing.assert_close(got["res5_1_branch2a_bn"], torch.relu(bn))  # Paddle: after it
    torch.testing.assert_close(got["res5_1_branch2c_bn"], bn3)           # last branch: linear
    torch.testing.assert_close(got["layer4.0.bn3"], bn3)


def test_deep_net_names_and_unknown_names():
    model = imagezoo.load_model("resnet101", weights="random")
    aliases = layer_aliases(model)
    assert aliases["res4b22"].module == "layer3.22"
    assert aliases["res4b22_branch2c"].module == "layer3.22.conv3"
    assert aliases["bn3b3_branch2b"].module == "layer2.3.bn2"
    assert aliases["res5c"].module == aliases["res5b2"].module == "layer4.2"
    assert aliases["res4_23_branch2c_bn"].module == "layer3.22.bn3"
    with pytest.raises(UnknownLayerError, match=r"no layer 'res5c_branch2d'.*res5c_branch2c"):
        extract_features(model, torch.zeros(1, 3, 32, 32), ["res5c_branch2d"])


def test_layer_listing_shapes():
    model = imagezoo.load_model("resnet50", weights="random")
    layers = {layer.name: layer for layer in list_layers(model)}
    assert layers["layer4.2.conv3"].output_shape == (1, 2048, 7, 7)
    assert layers["avgpool"].output_shape == (1, 2048, 1, 1)
    assert layers["fc"].output_shape == (1, 1000) and layers["fc"].type == "Linear"
    assert "res5c_branch2c" in layers["layer4.2.conv3"].aliases
    assert "res5c" in layers["layer4.2"].aliases


def test_ten_crop_features_are_the_mean_of_the_crops(lite0_torchvision_geometry, cat_photo):
    lite0 = lite0_torchvision_geometry
    got = extract_features(lite0, cat_photo, ["_conv_head", "_fc"], pool="avg", ten_crop=True)
    spec = lite0.card.preprocess
    crops = torch.stack([to_tensor(c, spec) for c in
                         ten_crop_images(resize_and_pad(Image.open(cat_photo).convert("RGB"), spec),
                                         spec.crop)])
    with torch.no_grad():
        head = {}
        hook = lite0._conv_head.register_forward_hook(lambda _m, _i, out: head.setdefault("v", out.clone()))
        logits = lite0(crops)
        hook.remove()
    torch.testing.assert_close(got["_conv_head"][0], head["v"].mean(dim=(2, 3)).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["_fc"][0], logits.mean(0), rtol=1e-5, atol=1e-5)


@pytest.fixture
def photo_folder(tmp_path, cat_photo, rng):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(cat_photo).save(folder / "a.png")
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8 not really")
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "c.png")
    return folder


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".h5", ".txt"])
def test_feature_files_hold_every_good_image_and_list_the_bad(tmp_path, photo_folder, capsys, suffix):
    out = tmp_path / f"feats{suffix}"
    code = main(["features", str(photo_folder), "--layers", "_blocks.15,_fc", "--pool", "avg",
                 "--out", str(out), "--batch-size", "2", "--workers", "0"])
    assert code == 1
    assert "b_broken.jpg" in capsys.readouterr().err
    model = imagezoo.load_model("efficientnet_lite0")
    good = [str(photo_folder / "a.png"), str(photo_folder / "c.png")]
    expected = extract_features(model, good, ["_blocks.15", "_fc"], pool="avg")
    if suffix == ".npz":
        data = np.load(out)
        inputs, failed = list(data["inputs"]), list(data["failed_inputs"])
        arrays = {name: data[name] for name in expected}
        assert "b_broken.jpg" in data["failed_errors"][0]
    elif suffix == ".safetensors":
        with safe_open(str(out), "np") as handle:
            arrays = {name: handle.get_tensor(name) for name in expected}
            metadata = handle.metadata()
        inputs = json.loads(metadata["inputs"])
        failed = [source for source, _ in json.loads(metadata["failed"])]
    elif suffix == ".h5":
        with h5py.File(out) as handle:
            arrays = {name: handle["features"][name][:] for name in expected}
            inputs = [s.decode() for s in handle["inputs"][:]]
            failed = [s.decode() for s in handle["failed/inputs"][:]]
    else:
        rows = [[np.array(slot.split(), dtype=np.float32) for slot in line.split(";")]
                for line in out.read_text().splitlines()]
        arrays = {name: np.stack([row[i] for row in rows]) for i, name in enumerate(expected)}
        index = [line.split("\t") for line in (tmp_path / "feats.txt.index.tsv").read_text().splitlines()]
        inputs = [source for source, status in index if status == "ok"]
        failed = [source for source, status in index if status.startswith("error")]
    assert inputs == good and failed == [str(photo_folder / "b_broken.jpg")]
    for name, value in expected.items():
        np.testing.assert_allclose(arrays[name], value.numpy(), rtol=1e-6, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_features_command_on_onnxruntime_matches_the_hooks(tmp_path, photo_folder, capsys,
                                                           monkeypatch):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path / "cache"))
    files = {}
    for backend in ("torch", "onnxruntime"):
        files[backend] = tmp_path / f"{backend}.npz"
        code = main(["features", str(photo_folder), "--layers", "_blocks.6,_conv_head,_fc",
                     "--out", str(files[backend]), "--batch-size", "2", "--workers", "0",
                     "--backend", backend])
        err = capsys.readouterr().err
        assert code == 1 and "b_broken.jpg" in err
        assert "features run on the torch backend" not in err  # the engine really ran
    hooks, engine = np.load(files["torch"]), np.load(files["onnxruntime"])
    assert list(engine["inputs"]) == list(hooks["inputs"]) and len(hooks["inputs"]) == 2
    for name in ("_blocks.6", "_conv_head", "_fc"):
        scale = max(1.0, float(np.abs(hooks[name]).max()))
        np.testing.assert_allclose(engine[name], hooks[name], rtol=1e-4, atol=1e-4 * scale)
    assert list((tmp_path / "cache" / "engines").rglob("layers-*/model.onnx"))


def test_unknown_layer_on_the_command_line(photo_folder, tmp_path, capsys):
    assert main(["features", str(photo_folder), "--layers", "res5c", "--out", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err
    assert "no layer 'res5c'" in err and "Traceback" not in err
    assert not (tmp_path / "f.npz").exists()


MEMORY_PROBE = """
import sys
from pathlib import Path
from imagezoo.cli import main


def status(field):  # kB, from the kernel's own accounting of this process
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])


count, suffix, folder = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
def run(count, out):
    listing = folder / f"first{count}.list"
    listing.write_text("".join(f"img{i:04d}.png\\n" for i in range(count)))
    return main(["features", str(listing), "--model", str(folder / "tiny"), "--layers", "layer1",
                 "--out", str(out), "--batch-size", "4", "--workers", "0"])
run(16, folder / f"warmup{count}{suffix}")          # imports, allocator pools, first batches
Path("/proc/self/clear_refs").write_text("5")      # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
run(count, folder / f"out{count}{suffix}")
print(status("VmHWM") - before)
"""


def test_hdf5_memory_stays_flat_while_npz_grows(tmp_path):
    """Peak memory for 50 vs 250 images: the streamed HDF5 file keeps it flat. A narrow
    ResNet keeps the run short; each image's layer1 map is still 64x56x56 floats (0.8 MB),
    160 MB for the 200 more. The peak is measured from after a warm-up run (the kernel's
    VmHWM, reset through /proc/self/clear_refs), so start-up costs do not blur it."""
    tiny = ResNet(ResNetSpec(block="basic", layers=(1, 1, 1, 1), width=64, num_classes=10))
    card = imagezoo.load_model("resnet18", weights="random").card
    card.architecture, card.labels = tiny.spec.to_dict(), [str(i) for i in range(10)]
    imagezoo.save_model(tiny, tmp_path / "tiny", card)
    for i in range(250):
        Image.new("RGB", (32, 32), (i % 256, 50, 90)).save(tmp_path / f"img{i:04d}.png")

    def peak_kib(count: int, suffix: str) -> int:
        done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(count), suffix, str(tmp_path)],
                              capture_output=True, text=True, check=True)
        return int(done.stdout.strip().splitlines()[-1])

    hdf5_growth = peak_kib(250, ".h5") - peak_kib(50, ".h5")
    npz_growth = peak_kib(250, ".npz") - peak_kib(50, ".npz")
    with h5py.File(tmp_path / "out250.h5") as handle:
        assert handle["features/layer1"].shape == (250, 64, 56, 56)
    assert npz_growth > 120 * 1024, npz_growth          # holding 200 extra maps shows up ...
    assert hdf5_growth < npz_growth / 4, (hdf5_growth, npz_growth)  # ... streaming them does not
