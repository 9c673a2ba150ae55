"""classify(): the API and the command line, on real photos and on broken ones."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagezoo
from imagezoo.cli import main

CAT_LABELS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture
def mixed_folder(tmp_path, cat_photo, rng):
    """Two good photos and three bad files, in a folder with a subfolder."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(cat_photo, folder / "a_cat.png")
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / "sub" / "noise.jpg")
    (folder / "b_empty.jpg").write_bytes(b"")
    (folder / "c_text.png").write_text("not a picture")
    data = (folder / "sub" / "noise.jpg").read_bytes()
    (folder / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder


def test_api_classifies_the_cat(lite0, cat_photo):
    [result] = imagezoo.classify(lite0, cat_photo, top=3)
    assert result.ok and result.input == str(cat_photo)
    assert [r.rank for r in result.predictions] == [1, 2, 3]
    assert result.predictions[0].label in CAT_LABELS
    probabilities = [r.probability for r in result.predictions]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0 + 1e-6
    assert lite0.card.labels[result.predictions[0].index] == result.predictions[0].label


def test_api_keeps_order_and_reports_bad_inputs(lite0, mixed_folder):
    results = imagezoo.classify(lite0, [mixed_folder, mixed_folder / "gone.jpg"], batch_size=2, workers=2)
    names = [Path(r.input).name for r in results]
    assert names == ["a_cat.png", "b_empty.jpg", "c_text.png", "noise.jpg", "truncated.jpg", "gone.jpg"]
    assert [r.ok for r in results] == [True, False, False, True, False, False]
    assert "empty file" in results[1].error and "not an image" in results[2].error
    assert "truncated" in results[4].error and "no such file" in results[5].error
    assert results[0].predictions[0].label in CAT_LABELS


def test_workers_do_not_change_the_numbers(lite0, mixed_folder):
    in_process = imagezoo.classify(lite0, mixed_folder, workers=0, batch_size=1)
    in_workers = imagezoo.classify(lite0, mixed_folder, workers=2, batch_size=4)
    assert [r.error for r in in_process] == [r.error for r in in_workers]
    for one, other in zip(in_process, in_workers):
        if one.ok:  # batch size changes the rounding of the convolutions, nothing more
            assert [r.index for r in one.predictions] == [r.index for r in other.predictions]
            np.testing.assert_allclose([r.probability for r in one.predictions],
                                       [r.probability for r in other.predictions], atol=1e-5)


def test_cli_table(cat_photo, capsys):
    assert main(["classify", str(cat_photo), "--top", "10"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == str(cat_photo)
    assert lines[1].split() == ["rank", "probability", "label"]
    assert len(lines) == 2 + 10
    first = lines[2].split(maxsplit=2)
    assert first[0] == "1" and first[1].endswith("%") and first[2] in CAT_LABELS


def test_cli_json_lines_and_exit_status_one_for_bad_inputs(mixed_folder, capsys):
    assert main(["classify", str(mixed_folder), "--json", "--top", "2", "--workers", "0"]) == 1
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(r["input"]).name for r in records] == [
        "a_cat.png", "b_empty.jpg", "c_text.png", "noise.jpg", "truncated.jpg"]
    good = records[0]
    assert set(good) == {"input", "predictions"} and len(good["predictions"]) == 2
    assert set(good["predictions"][0]) == {"rank", "index", "label", "probability"}
    assert good["predictions"][0]["rank"] == 1 and good["predictions"][0]["label"] in CAT_LABELS
    assert set(records[1]) == {"input", "error"} and "empty file" in records[1]["error"]
    assert "Traceback" not in captured.err
    assert captured.err.splitlines()[-1] == "imagezoo: 2 classified, 3 failed"
    assert captured.err.count("imagezoo: ") == 4  # one line per failed input, then the counts


@pytest.mark.parametrize("arguments, message", [
    (["--model", "resnet51"], "unknown model 'resnet51'"),
    (["--model", "resnet50"], "resnet50 has no bundled weights"),
    (["--model", "resnet50", "--weights", "absent.pth"], "absent.pth: no such weight file"),
])
def test_cli_usage_errors_exit_two_with_one_line(cat_photo, capsys, arguments, message):
    assert main(["classify", str(cat_photo), *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_empty_folder_is_an_error(tmp_path, capsys):
    assert main(["classify", str(tmp_path)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_cli_argument_errors_exit_two(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["classify", "x.jpg", "--top", "0"])
    assert caught.value.code == 2


def test_python_dash_m_and_console_script(cat_photo, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "imagezoo", "classify", str(cat_photo), str(broken),
                           "--json", "--top", "1"], capture_output=True, text=True, env=env)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["predictions"][0]["label"] in CAT_LABELS and "error" in lines[1]
    assert "Traceback" not in done.stderr
    script = Path(sys.executable).parent / "imagezoo"
    listing = subprocess.run([str(script), "models"], capture_output=True, text=True).stdout
    families = [line.split()[1] for line in listing.splitlines()]
    assert families.count("resnet") == 5 and families.count("resnet_cifar") == 5
