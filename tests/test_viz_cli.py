"""The picture subcommands from the command line: what they print and the files they write."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from PIL import Image

from imagezoo.cli import main


def test_summary_prints_the_published_totals(capsys):
    assert main(["summary", "resnet50", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "25,557,032" in out and "4,089,184,256" in out and "layer4" in out
    assert main(["summary", "resnet18", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][0] == "name" and any(row[0] == "layer4.1.conv2" for row in rows)
    assert main(["summary", "resnet101", "--depth", "2", "--names", "caffe", "--json"]) == 0
    assert "res4b22" in capsys.readouterr().out


def test_graph_writes_dot_and_svg(tmp_path, capsys):
    assert main(["graph", "resnet18", "--depth", "2", "--out", str(tmp_path / "net.dot")]) == 0
    assert (tmp_path / "net.dot").read_text().startswith("digraph")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (make test installs it)")
    assert main(["graph", "resnet18", "--depth", "2", "--out", str(tmp_path / "net.svg")]) == 0
    assert "<svg" in (tmp_path / "net.svg").read_text()


def test_explain_and_plot_write_pictures(cat_photo, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    assert main(["explain", str(cat_photo), str(broken), "--top", "2", "--json",
                 "--out", str(tmp_path / "maps")]) == 1
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2 and records[0]["index"] in range(281, 286)
    for record in records:
        with Image.open(record["picture"]) as picture:
            assert picture.format == "PNG"
    assert f"imagezoo: {broken}: not an image Pillow can read" in err
    assert main(["classify", str(cat_photo), "--plot", str(tmp_path / "charts"), "--top", "3"]) == 0
    assert (tmp_path / "charts" / "cat-prediction.png").is_file()
    history = tmp_path / "run" / "history.jsonl"
    history.parent.mkdir()
    history.write_text("\n".join(json.dumps(r) for r in [
        {"event": "epoch", "epoch": 1, "loss": 1.0, "metric": 0.5, "average_loss": 1.0},
        {"event": "epoch", "epoch": 2, "loss": 0.5, "metric": 0.25, "average_loss": 0.75}]) + "\n")
    assert main(["plot", str(history)]) == 0
    assert (tmp_path / "run" / "curves.png").is_file()
    assert main(["plot", str(tmp_path / "nothing.jsonl")]) == 2
