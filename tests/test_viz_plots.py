"""Charts: PNG files that decode with their fixed size, the same bytes each time, no leaks."""
from __future__ import annotations

import hashlib
import json
import sys
from importlib import resources

import matplotlib
import numpy as np
import pytest
from PIL import Image

from imagezoo.errors import ImagezooError
from imagezoo.tasks.classify import Prediction, Ranked
from imagezoo.tasks.evaluate import Evaluation
from imagezoo.tasks.progress import EpochRecord, epoch_event, evaluation_event
from imagezoo.viz.plots import evaluation_charts, prediction_chart, training_curves

CAT = str(resources.files("imagezoo.resources").joinpath("cat.png"))
RANKED = [Ranked(1, 282, "tiger cat", 0.3789), Ranked(2, 285, "Egyptian cat", 0.3752),
          Ranked(3, 281, "tabby", 0.1678), Ranked(4, 287, "lynx", 0.0157),
          Ranked(5, 904, "window screen", 0.0010)]


def decoded(path) -> Image.Image:
    with Image.open(path) as picture:
        picture.load()
        assert picture.format == "PNG"
        assert "Software" not in picture.info and "Creation Time" not in picture.info
        return picture.copy()


def digest(path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


@pytest.fixture
def no_leaks():
    """Charts never touch pyplot or the global rcParams."""
    def settings() -> dict:   # reading "backend" would itself import pyplot to resolve it
        return {key: matplotlib.rcParams[key] for key in matplotlib.rcParams.keys()
                if key != "backend"}

    had_pyplot = "matplotlib.pyplot" in sys.modules
    before = settings()
    yield
    assert settings() == before
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_prediction_chart(tmp_path, no_leaks):
    first = prediction_chart(CAT, RANKED, tmp_path / "cat.png")
    assert decoded(first).size == (900, 400)
    again = prediction_chart(CAT, Prediction(CAT, predictions=RANKED), tmp_path / "again.png")
    assert digest(first) == digest(again)
    with Image.open(CAT) as photo:
        as_array = prediction_chart(np.asarray(photo.convert("RGB")), RANKED[:2],
                                    tmp_path / "array.png", title="an array")
    assert decoded(as_array).size == (900, 400)
    # Readable in grey: the best class's bar is dark grey (#222222), the others mid grey
    # (#777777), two shades that stay apart when printed in black and white.
    grey = np.asarray(decoded(first).convert("L"))
    assert (grey == 0x22).sum() > 3000 and (grey == 0x77).sum() > 3000


def test_prediction_chart_refuses_what_it_cannot_draw(tmp_path):
    with pytest.raises(ImagezooError, match="bad.jpg: no predictions"):
        prediction_chart(CAT, Prediction("bad.jpg", error="bad.jpg: truncated"), tmp_path / "x.png")
    with pytest.raises(ImagezooError, match="no predictions"):
        prediction_chart(CAT, [], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def evaluation(with_mistakes: bool = True, classes: int = 3) -> Evaluation:
    names = ["tabby", "tiger cat", "Egyptian cat"] + [f"class {i}" for i in range(classes - 3)]
    per_class = {name: {"accuracy": 0.5 + 0.5 * (i % 2), "count": 20}
                 for i, name in enumerate(names)}
    confusions = [("tabby", "tiger cat", 8), ("tabby", "Egyptian cat", 2), ("tabby", "lynx", 2)] \
        if with_mistakes else []
    return Evaluation(top1=0.7, topk=0.9, k=5, count=20 * classes, per_class=per_class,
                      confusions=confusions)


def test_evaluation_charts(tmp_path, no_leaks):
    written = evaluation_charts(evaluation(), tmp_path / "plots")
    assert [path.name for path in written] == ["per-class-accuracy.png", "confusions.png"]
    for path in written:
        assert decoded(path).size == (800, 800)
    again = evaluation_charts(evaluation(), tmp_path / "again")
    assert [digest(p) for p in written] == [digest(p) for p in again]
    many = evaluation_charts(evaluation(classes=200), tmp_path / "many", max_classes=30)
    assert decoded(many[0]).size == (800, 800)
    perfect = evaluation_charts(evaluation(with_mistakes=False), tmp_path / "perfect")
    assert [path.name for path in perfect] == ["per-class-accuracy.png"]
    with pytest.raises(ImagezooError, match="no classified image"):
        evaluation_charts(Evaluation(None, None, 5, 0), tmp_path / "none")


def history_lines(test_per_epoch: bool = False) -> list[dict]:
    """Records as the fine-tuning trainer writes them (tasks/progress.py)."""
    records = []
    for epoch in range(1, 6):
        records.append(epoch_event(EpochRecord(epoch, 1.0 / epoch + 0.2, 1.0 / (epoch + 1),
                                               0.4 / epoch, 40 * epoch, 0.01, 0.5)))
        if test_per_epoch:
            records.append({**evaluation_event("test", 0.3 / epoch, 10), "epoch": epoch,
                            "loss": 0.9 / epoch})
    if not test_per_epoch:
        records.append(evaluation_event("test", 0.1, 10))
    return records


def test_training_curves(tmp_path, no_leaks):
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(r) + "\n" for r in history_lines()))
    first = training_curves(history, tmp_path / "curves.png")
    assert decoded(first).size == (1000, 400)
    again = training_curves(history, tmp_path / "again.png")
    assert digest(first) == digest(again)
    per_epoch = training_curves(history_lines(test_per_epoch=True), tmp_path / "per-epoch.png")
    assert decoded(per_epoch).size == (1000, 400)
    assert digest(per_epoch) != digest(first)


def test_training_curves_refuse_what_is_not_a_history(tmp_path):
    with pytest.raises(ImagezooError, match="cannot read the history"):
        training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ImagezooError, match="not a history.jsonl"):
        training_curves(broken, tmp_path / "x.png")
    only_test = tmp_path / "only-test.jsonl"
    only_test.write_text(json.dumps(evaluation_event("test", 0.1, 10)) + "\n")
    with pytest.raises(ImagezooError, match="no epoch records"):
        training_curves(only_test, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
