"""evaluate(): accuracies known exactly on real photos, checked against counts made by hand."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imagezoo
from imagezoo import DatasetError
from imagezoo.data.datasets import LabelledSet
from imagezoo.data.images import load_image
from imagezoo.data.transforms import resize_and_pad, ten_crop_images, to_tensor
from imagezoo.tasks import evaluate as evaluate_module
from imagezoo.tasks.evaluate import Evaluation, distinct_names, evaluate, format_report

skimage_data = pytest.importorskip("skimage.data")

# ImageNet indices of the classes the photos below are labelled with or predicted as.
TIGER_CAT, EGYPTIAN_CAT, TRIPOD, ESPRESSO, CUP = 282, 285, 872, 967, 968

# What lite0 makes of the photos (top-5, single centre crop): coffee -> espresso (cup is 2nd),
# camera -> tripod (no espresso in the top 5), chelsea -> tiger cat (Egyptian cat 2nd, but
# 1st with ten crops). Each photo is labelled once correctly and once wrongly, so the numbers
# below are known exactly.
LABELLED = [
    ("coffee.png", ESPRESSO),          # right
    ("coffee_copy.png", CUP),          # wrong; cup is in the top 5
    ("camera.png", TRIPOD),            # right
    ("camera_copy.png", ESPRESSO),     # wrong; espresso is not in the top 5
    ("chelsea.png", EGYPTIAN_CAT),     # wrong with one crop, right with ten
    ("chelsea_copy.png", EGYPTIAN_CAT),
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("coffee", "camera", "chelsea"):
        pixels = getattr(skimage_data, name)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        shutil.copy(folder / f"{name}.png", folder / f"{name}_copy.png")
    data = (folder / "coffee.png").read_bytes()
    (folder / "broken.png").write_bytes(data[: len(data) // 4])
    (folder / "empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def mapping(photos) -> Path:
    path = photos / "mapping.txt"
    path.write_text("# the six labelled photos\n"
                    + "".join(f"{name}\t{label}\n" for name, label in LABELLED))
    return path


@pytest.fixture(scope="module")
def single_crop(lite0, mapping) -> Evaluation:
    """The six photos evaluated once with a centre crop; the tests below read the result."""
    return evaluate(lite0, mapping, top=5, batch_size=4, workers=0)


def test_label_indices_are_the_imagenet_ones(lite0):
    labels = lite0.card.labels
    assert [labels[i] for i in (TIGER_CAT, EGYPTIAN_CAT, TRIPOD, ESPRESSO, CUP)] == [
        "tiger cat", "Egyptian cat", "tripod", "espresso", "cup"]


def test_accuracies_are_exactly_known(single_crop):
    result = single_crop
    assert result.k == 5 and result.count == 6 and result.failed == []
    assert result.top1 == pytest.approx(2 / 6) and result.topk == pytest.approx(5 / 6)
    assert result.per_class == {
        "Egyptian cat": {"accuracy": 0.0, "count": 2},
        "tripod": {"accuracy": 1.0, "count": 1},
        "espresso": {"accuracy": 0.5, "count": 2},
        "cup": {"accuracy": 0.0, "count": 1},
    }
    assert list(result.per_class) == ["Egyptian cat", "tripod", "espresso", "cup"]  # index order
    assert result.confusions == [("Egyptian cat", "tiger cat", 2), ("espresso", "tripod", 1),
                                 ("cup", "espresso", 1)]


def test_accuracies_match_an_independent_count_from_classify(lite0, single_crop, photos):
    result = single_crop
    # The copies are the same bytes as their originals, so classifying the originals is enough.
    originals = ["coffee.png", "camera.png", "chelsea.png"]
    predictions = imagezoo.classify(lite0, [photos / name for name in originals], top=5)
    top5_of = {name: [r.index for r in p.predictions] for name, p in zip(originals, predictions)}
    labels = lite0.card.labels
    top1 = top5 = 0
    seen, right, mistakes = Counter(), Counter(), Counter()
    for name, true in LABELLED:
        ranked = top5_of[name.replace("_copy", "")]
        top1 += ranked[0] == true
        top5 += true in ranked
        seen[labels[true]] += 1
        right[labels[true]] += ranked[0] == true
        if ranked[0] != true:
            mistakes[labels[true], labels[ranked[0]]] += 1
    assert result.top1 == top1 / 6 and result.topk == top5 / 6
    assert {name: (entry["accuracy"], entry["count"]) for name, entry in result.per_class.items()} \
        == {name: (right[name] / seen[name], seen[name]) for name in seen}
    assert Counter({(t, p): n for t, p, n in result.confusions}) == mistakes


def hand_made_ten_crop_probabilities(model, paths) -> torch.Tensor:
    """torchvision's TenCrop protocol spelled out: resize, ten crops, softmax, average."""
    spec = model.card.preprocess
    rows = []
    with torch.inference_mode():
        for path in paths:
            resized = resize_and_pad(load_image(path), spec)
            crops = torch.stack([to_tensor(crop, spec) for crop in ten_crop_images(resized, spec.crop)])
            rows.append(torch.softmax(model(crops), dim=1).mean(dim=0))
    return torch.stack(rows)


def test_ten_crop_averages_the_ten_crops(lite0_torchvision_geometry, photos, monkeypatch):
    lite0 = lite0_torchvision_geometry
    # chelsea is an Egyptian cat only with ten crops; coffee is no cup with one or ten.
    labelled = [("chelsea.png", EGYPTIAN_CAT), ("coffee.png", CUP)]
    mapping = photos / "ten_crop.txt"
    mapping.write_text("".join(f"{name}\t{label}\n" for name, label in labelled))
    seen = []   # (input shape, probabilities) of every batch evaluate() runs
    original = evaluate_module.class_probabilities

    def spy(model, batch):
        probabilities = original(model, batch)
        seen.append((tuple(batch.shape), probabilities.clone()))
        return probabilities

    monkeypatch.setattr(evaluate_module, "class_probabilities", spy)
    result = evaluate(lite0, mapping, top=5, ten_crop=True, batch_size=2, workers=0)

    assert [shape for shape, _ in seen] == [(2, 10, 3, 224, 224)]
    expected = hand_made_ten_crop_probabilities(lite0, [photos / name for name, _ in labelled])
    torch.testing.assert_close(seen[0][1], expected, rtol=0, atol=1e-5)
    assert expected[0].argmax() == EGYPTIAN_CAT and expected[1].argmax() == ESPRESSO
    assert result.top1 == 0.5 and result.topk == 1.0
    assert result.per_class == {"Egyptian cat": {"accuracy": 1.0, "count": 1},
                                "cup": {"accuracy": 0.0, "count": 1}}
    assert result.confusions == [("cup", "espresso", 1)]
    with_one_crop = evaluate(lite0, mapping, top=5, batch_size=2, workers=0)
    assert with_one_crop.top1 == 0.0
    assert with_one_crop.confusions == [("Egyptian cat", "tiger cat", 1), ("cup", "espresso", 1)]


def test_broken_images_are_listed_and_left_out(lite0, mapping, photos):
    with_broken = photos / "with_broken.txt"
    with_broken.write_text(mapping.read_text() + "broken.png\t967\nempty.jpg\t1\n")
    result = evaluate(lite0, with_broken, batch_size=3, workers=2)   # decoded in 2 processes
    assert result.count == 6 and result.top1 == pytest.approx(2 / 6)
    assert result.topk == pytest.approx(5 / 6)
    assert [source for source, _ in result.failed] == [str(photos / "broken.png"),
                                                       str(photos / "empty.jpg")]
    assert "truncated" in result.failed[0][1] and "empty file" in result.failed[1][1]
    assert sum(entry["count"] for entry in result.per_class.values()) == 6


def test_nothing_readable_gives_no_accuracy(lite0, photos):
    only_broken = photos / "only_broken.txt"
    only_broken.write_text("broken.png\t0\n")
    result = evaluate(lite0, only_broken, workers=0)
    assert result.count == 0 and result.top1 is None and result.topk is None
    assert result.per_class == {} and len(result.failed) == 1
    assert "no image could be evaluated" in format_report(result)
    assert json.loads(json.dumps(result.to_dict()))["top1"] is None


@pytest.fixture
def synset_folders(tmp_path, photos) -> Path:
    """The photos in ImageNet-style synset folders (espresso, tripod, Egyptian cat)."""
    root = tmp_path / "val"
    for synset, photo in (("n07920052", "coffee.png"), ("n04485082", "camera.png"),
                          ("n02124075", "chelsea.png")):
        (root / synset).mkdir(parents=True)
        shutil.copy(photos / photo, root / synset / photo)
    return root


def write_synset_mapping(path: Path, lines: int = 1000) -> Path:
    """Like LOC_synset_mapping.txt: ``<synset> <names>``, line i naming class i."""
    synsets = {ESPRESSO: "n07920052 espresso", TRIPOD: "n04485082 tripod",
               EGYPTIAN_CAT: "n02124075 Egyptian cat"}
    path.write_text("".join(synsets.get(i, f"n{i:08d} class {i}") + "\n" for i in range(lines)))
    return path


def test_class_folders_through_a_classes_file(lite0, synset_folders, tmp_path):
    classes = write_synset_mapping(tmp_path / "LOC_synset_mapping.txt")
    result = evaluate(lite0, synset_folders, classes_file=classes, workers=0)
    assert result.count == 3 and result.top1 == pytest.approx(2 / 3) and result.topk == 1.0
    assert result.per_class == {"Egyptian cat": {"accuracy": 0.0, "count": 1},
                                "tripod": {"accuracy": 1.0, "count": 1},
                                "espresso": {"accuracy": 1.0, "count": 1}}
    short = write_synset_mapping(tmp_path / "short.txt", lines=999)
    with pytest.raises(DatasetError, match=r"short.txt names 999 classes, but the model has 1000"):
        evaluate(lite0, synset_folders, classes_file=short)


def test_class_folders_named_after_the_model_labels_or_by_index(lite0, photos, tmp_path):
    for folder, names in (("by_label", ("espresso", "tripod")), ("by_index", ("967", "872"))):
        for name, photo in zip(names, ("coffee.png", "camera.png")):
            (tmp_path / folder / name).mkdir(parents=True)
            shutil.copy(photos / photo, tmp_path / folder / name / photo)
        result = evaluate(lite0, tmp_path / folder, workers=0)
        assert result.top1 == 1.0 and result.count == 2
        assert result.per_class == {"tripod": {"accuracy": 1.0, "count": 1},
                                    "espresso": {"accuracy": 1.0, "count": 1}}


def test_class_folders_that_fit_no_rule_are_explained(lite0, synset_folders):
    with pytest.raises(DatasetError) as caught:
        evaluate(lite0, synset_folders)
    message = str(caught.value)
    assert str(synset_folders) in message and "'n02124075'" in message
    assert "classes file" in message and "model label" in message and "class index (0..999)" in message


def test_class_index_folders_out_of_range(lite0, photos, tmp_path):
    (tmp_path / "val" / "1000").mkdir(parents=True)
    shutil.copy(photos / "coffee.png", tmp_path / "val" / "1000")
    with pytest.raises(DatasetError, match="class index 1000 is out of range"):
        evaluate(lite0, tmp_path / "val")


def test_mapping_labels_must_fit_the_model(lite0, photos):
    mapping = photos / "too_big.txt"
    mapping.write_text("coffee.png\t967\ncamera.png\t1000\n")
    with pytest.raises(DatasetError, match=re.escape(f"{mapping} line 2: label 1000 is out of range")):
        evaluate(lite0, mapping)


def test_a_labelled_set_can_be_passed_directly(lite0, photos):
    labelled = LabelledSet([(str(photos / "coffee.png"), ESPRESSO)], ["whatever"] * 1000, "by hand")
    assert evaluate(lite0, labelled, top=1, workers=0).top1 == 1.0
    bad = LabelledSet([(str(photos / "coffee.png"), 1000)], ["x"], "by hand", [3])
    with pytest.raises(DatasetError, match="by hand line 3: label 1000 is out of range"):
        evaluate(lite0, bad)


def test_json_shape(lite0, single_crop, photos):
    data = json.loads(json.dumps(single_crop.to_dict()))
    assert set(data) == {"top1", "top5", "count", "per_class", "failed", "confusions"}
    assert data["count"] == 6 and data["top1"] == pytest.approx(2 / 6)
    assert data["per_class"]["espresso"] == {"accuracy": 0.5, "count": 2}
    assert data["confusions"][0] == {"true": "Egyptian cat", "predicted": "tiger cat", "count": 2}
    assert data["failed"] == []
    one = photos / "one.txt"
    one.write_text("camera.png\t872\n")
    assert set(evaluate(lite0, one, top=3, workers=0).to_dict()) == {
        "top1", "top3", "count", "per_class", "failed", "confusions"}
    assert set(evaluate(lite0, one, top=1, workers=0).to_dict()) == {
        "top1", "count", "per_class", "failed", "confusions"}


def test_report(single_crop, photos):
    result = dataclasses.replace(single_crop, failed=[
        (str(photos / "broken.png"), f"{photos / 'broken.png'}: truncated image")])
    report = format_report(result)
    lines = report.splitlines()
    assert lines[0].split() == ["top-1", "accuracy", "33.33%", "(2", "of", "6)"]
    assert lines[1].split() == ["top-5", "accuracy", "83.33%", "(5", "of", "6)"]
    assert lines[2].split() == ["images", "6", "evaluated,", "1", "could", "not", "be", "read"]
    assert lines[3].strip() == f"{photos / 'broken.png'}: truncated image"
    table = lines[lines.index("per class:") + 1:]
    assert table[0].split() == ["accuracy", "images", "class"]
    assert table[1].split() == ["0.00%", "2", "Egyptian", "cat"]
    assert table[3].split() == ["50.00%", "2", "espresso"]
    confused = lines[lines.index("most confused (true -> predicted):") + 1:]
    assert confused[1].split() == ["2", "Egyptian", "cat", "->", "tiger", "cat"]
    assert len(confused) == 1 + 3


def test_duplicate_label_names_are_told_apart():
    assert distinct_names(["crane", "cat", "crane"]) == ["crane (0)", "cat", "crane (2)"]
    assert Evaluation(0.5, 1.0, 5, 2).to_dict()["top5"] == 1.0


def test_ten_crop_images_follow_torchvisions_geometry():
    # Every pixel distinct: red = column, green = row, blue = 100 + row * width + column.
    width, height, crop = 8, 6, 3
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.stack([columns, rows, 100 + rows * width + columns], axis=-1).astype(np.uint8)
    mirrored = pixels[:, ::-1]
    # torchvision's five_crop: top-left, top-right, bottom-left, bottom-right, centre, where
    # the centre's offsets are int(round((size - crop) / 2)): round(2.5) = 2 and round(1.5) = 2.
    top, left = int(round((height - crop) / 2)), int(round((width - crop) / 2))
    assert (top, left) == (2, 2)

    def five(array):
        return [array[:crop, :crop], array[:crop, width - crop:], array[height - crop:, :crop],
                array[height - crop:, width - crop:], array[top:top + crop, left:left + crop]]

    expected = five(pixels) + five(mirrored)   # ten_crop = five_crop(img) + five_crop(hflip(img))
    crops = ten_crop_images(Image.fromarray(pixels), crop)
    assert len(crops) == 10
    for index, (got, want) in enumerate(zip(crops, expected)):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"crop {index}")
    # The mirrored top-left crop is the original top-right crop, flipped.
    np.testing.assert_array_equal(np.asarray(crops[5]), pixels[:crop, width - crop:][:, ::-1])


def test_command_line_json_report_and_exit_codes(mapping, synset_folders, tmp_path, capsys):
    from imagezoo.cli import main
    assert main(["evaluate", str(mapping), "--json", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["count"], report["top1"], report["top5"]) == (6, 2 / 6, 5 / 6)
    assert set(report) >= {"top1", "top5", "count", "per_class"}
    assert main(["evaluate", str(mapping), "--workers", "0"]) == 0
    assert "top-1" in capsys.readouterr().out.lower()
    broken = mapping.parent / "cli_broken.txt"
    broken.write_text(mapping.read_text() + "broken.png\t967\n")
    assert main(["evaluate", str(broken), "--json", "--workers", "0"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and json.loads(captured.out)["count"] == 6
    assert main(["evaluate", str(synset_folders), "--workers", "0"]) == 2  # folder names unknown
    assert "classes" in capsys.readouterr().err
