"""Files nobody on the project made: hundreds of mixed, odd and broken images in one folder.

The promise under test: no file ends a run; every file plain Pillow decodes is classified;
every other one is reported with its name and a reason in words; files that are not images
are counted as skipped; nothing anonymous reaches stderr. The reference for "decodes" is plain
Pillow itself (``difficult_files.pillow_decodes``), run independently of imagezoo.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imagezoo
from imagezoo.cli import main
from imagezoo.data.images import load_image
from imagezoo.data.sources import expand_sources, image_extensions

import difficult_files as files


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    folder = files.mixed_folder(tmp_path_factory.mktemp("real") / "photos", copies=3)
    files.register_boom_plugin()
    for name in ("MemoryError", "IndexError", "struct.error", "KeyError", "ZeroDivisionError",
                 "RuntimeError"):
        files.boom_file(folder / "odd" / f"{name}.boom", name)
    return folder


@pytest.fixture(scope="module")
def expected(mixed):
    """(decodable, undecodable, skipped) paths, by plain Pillow and Pillow's extension list."""
    decodable, undecodable, skipped = set(), set(), set()
    for path in sorted(p for p in mixed.rglob("*") if p.is_file()):
        if path.suffix.lower() not in image_extensions():
            skipped.add(str(path))
        elif files.pillow_decodes(path):
            decodable.add(str(path))
        else:
            undecodable.add(str(path))
    return decodable, undecodable, skipped


def test_the_folder_is_as_hard_as_intended(mixed, expected):
    decodable, undecodable, skipped = expected
    assert len(decodable) + len(undecodable) + len(skipped) > 300
    assert len(decodable) >= 90 and len(undecodable) >= 90
    names = {Path(p).name for p in skipped}
    assert names == {"notes.txt", "features.h5", "README"}


def test_cli_classifies_every_decodable_file_and_reports_the_rest(mixed, expected, capfd):
    decodable, undecodable, skipped = expected
    status = main(["classify", str(mixed), "--json", "--top", "1", "--list-skipped",
                   "--batch-size", "32"])
    out, err = capfd.readouterr()
    assert status == 1  # some failed, the rest were classified
    records = [json.loads(line) for line in out.splitlines()]
    classified = {r["input"] for r in records if "predictions" in r}
    failed = {r["input"]: r["error"] for r in records if "error" in r}
    listed_skipped = {r["input"] for r in records if "skipped" in r}
    assert classified == decodable
    assert set(failed) == undecodable
    assert listed_skipped == skipped
    for path, error in failed.items():
        assert error.startswith(f"{path}: ") and len(error) > len(path) + 10
    assert "Traceback" not in err
    for line in err.splitlines():  # every line names an input, or is the closing count
        assert line.startswith("imagezoo: "), line
    assert err.splitlines()[-1].startswith(
        f"imagezoo: {len(decodable)} classified, {len(undecodable)} failed, 3 skipped (")


def test_reasons_are_words_not_decoder_codes(mixed):
    odd = mixed / "odd"
    results = {Path(r.input).name: r for r in imagezoo.classify(
        imagezoo.load_model("resnet18", weights="random"), odd, workers=2)}
    reasons = {name: result.error for name, result in results.items() if not result.ok}
    assert "a DDS file using a format or feature Pillow cannot decode here" in reasons["really-a-dds.png"]
    assert "Unimplemented DXGI format 2" in reasons["really-a-dds.png"]
    assert "too large: refused as a possible decompression bomb" in reasons["bomb.png"]
    assert reasons["empty.jpg"].endswith("empty file")
    assert "not an image Pillow can read" in reasons["text.jpg"]
    assert "corrupt PNG image" in reasons["bad-pixels.png"]
    # libtiff prints this line itself, in a DataLoader worker; it becomes the file's reason.
    assert "corrupt TIFF image: the compressed data is corrupt" in reasons["corrupt-deflate.tif"]
    assert "ZIPDecode" in reasons["corrupt-deflate.tif"]
    assert "too large" in reasons["MemoryError.boom"]
    for name in ("IndexError", "struct.error", "KeyError", "ZeroDivisionError", "RuntimeError"):
        reason = reasons[f"{name}.boom"]
        assert "BOOM image" in reason and "raised by the BOOM test plugin" in reason, reason
    assert all("decoder error" not in reason for reason in reasons.values())
    assert results["tag-warning.tif"].ok


def test_decoder_warnings_belong_to_their_file(mixed, recwarn, capfd):
    tiff = mixed / "odd" / "tag-warning.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping imagezoo would fail the test
        [result] = imagezoo.classify(imagezoo.load_model("resnet18", weights="random"), tiff)
    assert result.ok and any("Truncated File Read" in note for note in result.notes)
    assert result.to_dict()["warnings"] == result.notes
    assert capfd.readouterr().err == ""
    notes: list[str] = []
    load_image(tiff, notes=notes)
    load_image(tiff, notes=notes)  # the same warning again: attributed again, not swallowed
    assert sum("Truncated File Read" in note for note in notes) == 2


def test_verbose_shows_the_notes_with_the_file_name(mixed, capfd):
    tiff = mixed / "odd" / "tag-warning.tif"
    assert main(["classify", str(tiff), "--top", "1"]) == 0
    quiet = capfd.readouterr().err
    assert "Truncated File Read" not in quiet
    assert "1 with decoder warnings (-v shows them)" in quiet
    assert main(["-v", "classify", str(tiff), "--top", "1"]) == 0
    assert f"imagezoo: {tiff}: note: UserWarning: Truncated File Read" in capfd.readouterr().err


def test_every_exception_is_the_inputs_error_in_workers_too(mixed):
    boom = sorted((mixed / "odd").glob("*.boom"))
    good = mixed / "set0" / "rgb.png"
    model = imagezoo.load_model("resnet18", weights="random")
    for workers in (0, 2):
        results = imagezoo.classify(model, [*boom, good], workers=workers)
        assert [r.ok for r in results] == [False] * len(boom) + [True]


def test_features_and_evaluate_carry_on_past_every_bad_file(mixed, expected, tmp_path):
    decodable, undecodable, _ = expected
    model = imagezoo.load_model("resnet18", weights="random")
    features = imagezoo.extract_features(model, mixed / "set1", "avgpool", workers=2)
    in_set1 = {p for p in decodable | undecodable if "/set1/" in p}
    assert set(features.inputs) == {p for p in decodable if "/set1/" in p}
    assert {source for source, _ in features.failures} == in_set1 - set(features.inputs)
    assert features["avgpool"].shape[0] == len(features.inputs)

    # A class-folder set whose classes hold broken files beside good ones.
    root = tmp_path / "labelled"
    for label, subset in enumerate(("set0", "set2")):
        shutil.copytree(mixed / subset, root / str(label))  # folders named by class index
    evaluation = imagezoo.evaluate(model, root, workers=2)
    assert evaluation.count == sum(1 for p in decodable if "/set0/" in p or "/set2/" in p)
    assert len(evaluation.failed) == sum(1 for p in undecodable if "/set0/" in p or "/set2/" in p)
    assert evaluation.count + len(evaluation.failed) == len(files.GOOD_VARIANTS) * 3 * 2


def test_the_server_answers_400_with_the_reason_for_every_bad_file(mixed, expected):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from imagezoo.serve.app import create_app
    _, undecodable, _ = expected
    client = TestClient(create_app(imagezoo.load_model("resnet18", weights="random")))
    for path in sorted(undecodable)[:60]:
        response = client.post("/api/classify", files={"file": (Path(path).name, Path(path).read_bytes())})
        assert response.status_code in (400, 413), (path, response.status_code, response.text)
        assert response.json()["detail"].startswith(f"{Path(path).name}: ")


def test_folder_walk_takes_every_extension_pillow_decodes(tmp_path):
    for name in ("a.psd", "b.jp2", "c.avif", "d.dds", "e.qoi", "f.icns", "g.pcx", "h.sgi", "i.xpm",
                 "j.tga", "k.webp", "l.JPG"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "m.txt").write_text("x")
    sources = expand_sources([tmp_path])
    assert [Path(s).name for s in sources] == [
        "a.psd", "b.jp2", "c.avif", "d.dds", "e.qoi", "f.icns", "g.pcx", "h.sgi", "i.xpm",
        "j.tga", "k.webp", "l.JPG"]
    assert [Path(p).name for p, _ in sources.skipped] == ["m.txt"]


def test_all_files_looks_inside_every_file(tmp_path, cat_photo, capfd):
    (tmp_path / "photo.dat").write_bytes(cat_photo.read_bytes())
    (tmp_path / "photo").write_bytes(cat_photo.read_bytes())
    (tmp_path / "notes.txt").write_text("not a picture")
    assert main(["classify", str(tmp_path), "--top", "1"]) == 2
    err = capfd.readouterr().err
    assert "no images found" in err and "3 skipped" in err and "--all-files" in err
    assert main(["classify", str(tmp_path), "--all-files", "--json", "--top", "1"]) == 0
    out, err = capfd.readouterr()
    assert sorted(Path(json.loads(line)["input"]).name for line in out.splitlines()) == [
        "photo", "photo.dat"]
    assert "2 classified, 1 skipped (.txt 1)" in err


def test_a_run_where_nothing_could_be_read_exits_2(tmp_path, capfd):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.png").write_bytes(b"")
    assert main(["classify", str(tmp_path)]) == 2
    err = capfd.readouterr().err
    assert "imagezoo: 0 classified, 2 failed" in err
    assert "imagezoo: error: none of the 2 image(s) could be read" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("command", [
    ["classify", "{cat}"], ["features", "{cat}", "--layers", "avgpool", "--out", "{tmp}/f.npz"],
    ["evaluate", "{tmp}"], ["finetune", "--train", "{tmp}", "--out", "{tmp}/out"]])
def test_a_missing_gpu_is_one_line_and_exit_2(command, cat_photo, tmp_path, capfd):
    argv = [part.format(cat=cat_photo, tmp=tmp_path) for part in command] + ["--device", "cuda"]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err.strip().splitlines() == [
        "imagezoo: error: device 'cuda' is not available: this PyTorch sees no CUDA GPU "
        "(use --device cpu or auto)"]


def test_top_above_the_class_count_says_it_was_capped(tmp_path, cat_photo, capfd):
    model = imagezoo.load_model("resnet18", weights="random")
    model.fc = torch.nn.Linear(model.fc.in_features, 3)
    model.card.architecture["num_classes"], model.card.labels = 3, ["a", "b", "c"]
    imagezoo.save_model(model, tmp_path / "three")
    assert main(["classify", str(cat_photo), "--model", str(tmp_path / "three"), "--top", "10",
                 "--json"]) == 0
    out, err = capfd.readouterr()
    assert len(json.loads(out)["predictions"]) == 3
    assert "--top 10 is more than the 3 classes" in err and "showing all 3" in err


def test_optional_heif_photos_are_read_when_pillow_heif_is_installed(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    picture = Image.fromarray(files.photo_pixels(5, 64))
    try:
        pillow_heif.from_pillow(picture).save(tmp_path / "phone.heic", quality=95)
    except Exception as error:  # noqa: BLE001 - a build without an HEVC encoder
        pytest.skip(f"this pillow-heif cannot write HEIC ({error})")
    assert ".heic" in image_extensions()
    assert [Path(s).name for s in expand_sources([tmp_path])] == ["phone.heic"]
    decoded = np.asarray(load_image(tmp_path / "phone.heic"), dtype=np.int16)
    assert decoded.shape == (64, 64, 3)
    assert np.abs(decoded - np.asarray(picture, dtype=np.int16)).mean() < 8


def test_an_image_that_cannot_be_preprocessed_is_its_own_error(cat_photo):
    from imagezoo.data.batches import ImageDataset, image_batches
    from imagezoo.data.transforms import Preprocess

    def odd_transform(image, spec):
        if image.width > 100:
            raise ValueError("the crop does not fit")
        return torch.zeros(3, 8, 8)

    small = Path(__file__).parent / "small.png"  # not written: a missing file is an error too
    dataset = ImageDataset([str(cat_photo), str(small)], Preprocess(), transform=odd_transform)
    [batch] = list(image_batches(dataset, batch_size=4, workers=2))
    assert batch.tensor is None and [index for index, _ in batch.failures] == [0, 1]
    assert batch.failures[0][1] == (f"{cat_photo}: cannot preprocess this image "
                                    f"(ValueError: the crop does not fit)")
    assert batch.failures[1][1] == f"{small}: no such file"


def test_finetune_trains_on_the_readable_files_and_names_the_rest(mixed, expected, tmp_path, capfd):
    decodable, undecodable, _ = expected
    root = tmp_path / "train"
    for label, subset in (("a", "set0"), ("b", "set1")):
        shutil.copytree(mixed / subset, root / label)
    status = main(["finetune", "--train", str(root), "--model", "resnet18", "--weights", "random",
                   "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert status == 0 and "Traceback" not in err
    broken = [root / ("a" if "/set0/" in p else "b") / Path(p).name
              for p in undecodable if "/set0/" in p or "/set1/" in p]
    lines = err.splitlines()
    for path in broken:  # named once, with the reason
        assert sum(line.startswith(f"imagezoo: skipped {path}: ") for line in lines) == 1, path
    assert (tmp_path / "out" / "weights.safetensors").is_file()
