"""Format detection by content, load_model on any source, convert and inspect."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

import imagezoo
from imagezoo.cli import main
from imagezoo.errors import WeightsError
from imagezoo.model_folder import MEAN_IMAGE_FILE
from imagezoo.models.resnet import resnet
from imagezoo.tasks.convert import convert, inspect_weights
from imagezoo.weights.formats import detect_format
from conftest import ROOT, shared_fixture


@pytest.fixture(scope="module")
def matconvnet_file():
    return shared_fixture("matconvnet", "resnet_v1_w16_b1211.mat")


@pytest.fixture(scope="module")
def paddle_folder():
    return shared_fixture("paddle_v1", "resnet_v1_w16_b1211")


def test_detection_ignores_misleading_names(tmp_path, matconvnet_file, paddle_folder):
    torch_file = shared_fixture("torchvision", "resnet18_random.pth")
    safetensors_file = shared_fixture("torchvision", "resnet50_random_fp16.safetensors")
    for source, expected, disguise in [(matconvnet_file, "matconvnet", "weights.pth"),
                                       (torch_file, "torch", "weights.mat"),
                                       (safetensors_file, "safetensors", "weights.bin")]:
        disguised = tmp_path / disguise
        disguised.symlink_to(source)
        assert detect_format(source) == expected
        assert detect_format(disguised) == expected
    assert detect_format(paddle_folder) == "paddle_v1"
    (tmp_path / "text.pth").write_text("plain text")
    with pytest.raises(WeightsError, match="text.pth: not a weight file imagezoo knows"):
        detect_format(tmp_path / "text.pth")
    with pytest.raises(WeightsError, match="neither an imagezoo model folder"):
        detect_format(tmp_path)


def test_load_model_from_a_matconvnet_file_gives_the_reference(matconvnet_file):
    reference = np.load(shared_fixture("matconvnet", "resnet_v1_w16_b1211_io.npz"))
    model = imagezoo.load_model(matconvnet_file)
    assert model.card.source_format == "matconvnet"
    assert model.card.architecture["stride_in_1x1"] and model.card.architecture["pool1"] == "caffe"
    x = imagezoo.preprocess(reference["photo"], model.card)
    np.testing.assert_allclose(x.numpy(), reference["input"], atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), reference["logits"], rtol=1e-4, atol=1e-4)


def test_load_model_from_a_paddle_folder_gives_the_reference(paddle_folder):
    reference = np.load(shared_fixture("paddle_v1", "resnet_v1_w16_b1211_io.npz"))
    model = imagezoo.load_model(paddle_folder)
    assert model.card.preprocess.channel_order == "BGR"
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["input_bgr"]))
    np.testing.assert_allclose(logits.numpy(), reference["logits"], rtol=1e-4, atol=1e-4)


def test_load_model_infers_a_torchvision_architecture_from_the_file():
    reference = np.load(shared_fixture("torchvision", "resnet50_random_fp16_io.npz"))
    model = imagezoo.load_model(shared_fixture("torchvision", "resnet50_random_fp16.safetensors"))
    assert model.card.architecture["layers"] == [3, 4, 6, 3]
    assert model.card.architecture["block"] == "bottleneck"
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["input"]))
    np.testing.assert_allclose(logits.numpy(), reference["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("source_name", ["matconvnet", "paddle", "torch"])
def test_convert_gives_bit_identical_outputs(tmp_path, source_name, matconvnet_file, paddle_folder):
    source = {"matconvnet": matconvnet_file, "paddle": paddle_folder,
              "torch": shared_fixture("torchvision", "resnet18_random.pth")}[source_name]
    folder = convert(source, tmp_path / "converted")
    assert (folder / "weights.safetensors").is_file() and (folder / "card.json").is_file()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    original, converted = imagezoo.load_model(source), imagezoo.load_model(folder)
    card = json.loads((folder / "card.json").read_text())
    assert card["source"] == source.name and len(card["sha256"]) == 64
    assert card["labels"] == original.card.labels
    photo = np.random.default_rng(1).integers(0, 256, (260, 300, 3), dtype=np.uint8)
    x_original = imagezoo.preprocess(photo, original.card)
    x_converted = imagezoo.preprocess(photo, converted.card)
    assert torch.equal(x_original, x_converted)
    with torch.no_grad():
        assert torch.equal(original(x_original), converted(x_converted))


def test_mean_image_is_stored_beside_the_card(tmp_path, matconvnet_file):
    folder = convert(matconvnet_file, tmp_path / "m")
    card = json.loads((folder / "card.json").read_text())
    assert card["preprocess"]["mean_image"] == MEAN_IMAGE_FILE
    assert np.load(folder / MEAN_IMAGE_FILE).shape == (224, 224, 3)


def test_inspect_summarises(matconvnet_file, paddle_folder):
    summary = inspect_weights(matconvnet_file)
    assert summary["format"] == "matconvnet" and summary["num_classes"] == 10
    assert summary["architecture"]["layers"] == [1, 2, 1, 1] and summary["architecture"]["width"] == 16
    assert summary["preprocess"]["mean_image"]["shape"] == [224, 224, 3]
    reference = np.load(shared_fixture("matconvnet", "resnet_v1_w16_b1211_io.npz"))
    assert summary["labels"] == [str(d) for d in reference["descriptions"][:5]]
    model = imagezoo.load_model(matconvnet_file)
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert inspect_weights(paddle_folder)["preprocess"]["channel_order"] == "BGR"


def test_cli_convert_and_inspect(tmp_path, matconvnet_file, capsys):
    assert main(["convert", str(matconvnet_file), "--out", str(tmp_path / "out")]) == 0
    assert "weights.safetensors" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "model_folder" and summary["architecture"]["family"] == "resnet"
    assert main(["inspect", str(matconvnet_file)]) == 0
    table = capsys.readouterr().out
    assert "matconvnet" in table and "stride_in_1x1=True" in table and "mean image" in table


def test_cli_bad_weight_files_exit_two_without_traceback(tmp_path, capsys):
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(shared_fixture("matconvnet", "resnet_v1_w16_b1211.mat").read_bytes()[:5000])
    broken = tmp_path / "paddle"
    shutil.copytree(shared_fixture("paddle_v1", "resnet_v1_w16_b1211"), broken)
    (broken / "_res3_2_branch2b_bn.w2").unlink()
    for arguments, message in [(["inspect", str(truncated)], "truncated.mat"),
                               (["convert", str(broken), "--out", str(tmp_path / "x")],
                                "_res3_2_branch2b_bn.w2"),
                               (["inspect", str(tmp_path / "nothing.mat")], "no such weight file")]:
        assert main(arguments) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_named_model_with_an_imported_file_of_another_depth(tmp_path, matconvnet_file):
    with pytest.raises(WeightsError, match=r"layers \[1, 2, 1, 1\], not the \[3, 8, 36, 3\] of resnet152"):
        imagezoo.load_model("resnet152", weights=matconvnet_file)


def test_unknown_tensors_without_a_model_name(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="cannot tell which architecture"):
        imagezoo.load_model(tmp_path / "other.pth")
    torch.save(resnet(18, num_classes=3).state_dict(), tmp_path / "r18_3.pth")
    model = imagezoo.load_model(tmp_path / "r18_3.pth")
    assert model.card.labels == ["class 0", "class 1", "class 2"]


def test_cli_weights_alone_bring_their_architecture(paddle_folder, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (230, 240, 3), dtype=np.uint8)).save(photo)
    assert main(["classify", str(photo), "--weights", str(paddle_folder), "--json", "--top", "3"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["predictions"]) == 3
    model = imagezoo.load_model(paddle_folder)
    [expected] = imagezoo.classify(model, photo, top=3)
    assert [p["index"] for p in record["predictions"]] == [r.index for r in expected.predictions]


# --- torch.save files: the legacy (pre-zip) layout, truncation, TorchScript -------------------


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
            "bn.running_mean": torch.randn(8, generator=generator),
            "bn.num_batches_tracked": torch.tensor(7),
            "fc.weight": torch.randn(4, 8, generator=generator).half()}


@pytest.mark.parametrize("wrapper", ["plain", "checkpoint"])
def test_legacy_torch_file_round_trip(tmp_path, wrapper):
    from imagezoo.weights.torch_state import read_state_dict
    state = _state()
    saved = state if wrapper == "plain" else {
        "state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 91.7}
    path = tmp_path / "legacy.pth"
    torch.save(saved, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80" and not zipfile.is_zipfile(path)
    assert detect_format(path) == "torch"
    tensors = read_state_dict(path)
    assert tensors.keys() == state.keys()
    for name, tensor in state.items():
        expected = tensor.float() if tensor.is_floating_point() else tensor
        assert torch.equal(tensors[name], expected), name
    assert tensors["fc.weight"].dtype == torch.float32


def test_legacy_file_with_code_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (print, ("this must never run",))
    path = tmp_path / "evil.pth"
    torch.save({"x": RunsCode()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="refused to load: the file holds pickled code") as error:
        imagezoo.load_model(path)
    message = str(error.value)
    assert message.endswith("(Unsupported global: GLOBAL print was not an allowed global by default)")
    assert "weights_only" not in message and "safe_globals" not in message


def test_publisher_cifar_files_load_as_state_dicts():
    from imagezoo.weights.torch_state import read_state_dict
    folder = ROOT.parent / "shared" / "weights" / "cifar10"
    files = sorted(folder.glob("resnet*.th"))
    if not files:
        pytest.skip(f"the CIFAR-10 weights are not in {folder}")
    for path, blocks in zip(files, (3, 5, 7, 9)):           # resnet20, 32, 44, 56
        assert path.read_bytes()[:1] == b"\x80" and not zipfile.is_zipfile(path)  # legacy
        raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        tensors = read_state_dict(path)

        def imagezoo_name(name: str) -> str:  # the publisher's head is 'linear', imagezoo's 'fc'
            return name.removeprefix("module.").replace("linear.", "fc.")
        assert tensors.keys() == {imagezoo_name(name) for name in raw}
        for name, tensor in raw.items():
            assert torch.equal(tensors[imagezoo_name(name)], tensor), name
        assert tensors["fc.weight"].shape == (10, 64)
        assert tensors["conv1.weight"].shape == (16, 3, 3, 3)
        assert f"layer3.{blocks - 1}.conv2.weight" in tensors and f"layer3.{blocks}.conv2.weight" not in tensors


def _cut_points(data: bytes) -> list[int]:
    return [1, 2, 40, len(data) // 3, len(data) // 2, len(data) - 1]


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_truncated_torch_file_says_truncated(tmp_path, layout):
    from imagezoo.weights.torch_state import read_state_dict
    whole = tmp_path / "whole.pth"
    torch.save(_state(), whole, _use_new_zipfile_serialization=(layout == "zip"))
    data = whole.read_bytes()
    path = tmp_path / "cut.pth"
    for keep in _cut_points(data):
        if layout == "zip" and keep < 4:
            continue                      # fewer bytes than the zip signature: nothing to tell
        path.write_bytes(data[:keep])
        assert detect_format(path) == "torch", keep
        for read in (read_state_dict, imagezoo.load_model):
            with pytest.raises(WeightsError) as error:
                read(path)
            message = str(error.value)
            assert message.startswith(f"{path}: truncated or damaged PyTorch file ("), (keep, message)
            assert "\n" not in message and "weights_only" not in message


def test_torchscript_archive_is_detected_and_not_read_as_weights(tmp_path, recwarn):
    from imagezoo.weights.torch_state import is_torchscript_file, read_state_dict
    scripted = torch.jit.trace(torch.nn.Linear(3, 2), torch.zeros(1, 3))
    path = tmp_path / "program.pt"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(scripted, str(path))
    recwarn.clear()
    names = zipfile.ZipFile(path).namelist()
    assert any(name.endswith("/constants.pkl") for name in names)
    assert any("/code/" in name for name in names)
    assert is_torchscript_file(path) and detect_format(path) == "torchscript"
    state = tmp_path / "state.pth"
    torch.save(scripted.state_dict(), state)
    assert not is_torchscript_file(state) and detect_format(state) == "torch"
    with pytest.raises(WeightsError, match="a TorchScript program .* not a state dict"):
        read_state_dict(path)
    with pytest.raises(WeightsError, match="a TorchScript program .*not weights"):
        imagezoo.load_model("resnet18", weights=path)
    with pytest.raises(WeightsError, match="not exported by imagezoo"):
        imagezoo.load_model(path)
    assert len(recwarn) == 0, [str(w.message) for w in recwarn]
