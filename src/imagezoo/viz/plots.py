"""Charts as PNG files: a photo's top-k classes, an evaluation, a fine-tuning run.

Every picture is reproducible and readable in print:

* drawn on a ``matplotlib.figure.Figure`` with the Agg renderer, never through pyplot, inside
  ``matplotlib.rc_context`` with a fixed style, so nothing leaks into (or in from) a program's
  own matplotlib state;
* a fixed size in pixels (``figsize`` x ``DPI``) and no metadata that changes from run to
  run (no ``Software`` line, and PNG from Agg carries no date): the same input gives the same
  bytes;
* readable in grey: bars and cells are shades of grey with their value written on them, and
  the series of a line chart differ by line style and marker, not by colour alone.

Files are written atomically (a temporary file in the same folder, then renamed).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from ..errors import ImagezooError
from ..fileio import atomic_path
from ..tasks.classify import Prediction, Ranked
from ..tasks.evaluation import Evaluation
from .photo import as_photo

DPI = 100
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 10, "axes.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#333333",
    "savefig.facecolor": "white", "figure.facecolor": "white", "axes.facecolor": "white",
    "image.interpolation": "antialiased", "path.simplify": False,
}
DARK, MID, LIGHT = "#222222", "#777777", "#bbbbbb"
CHART_FILES = {"accuracy": "per-class-accuracy.png", "confusions": "confusions.png"}


def prediction_chart(image, ranked: Sequence[Ranked] | Prediction, out_path: str | os.PathLike,
                     title: str | None = None) -> Path:
    """The photo beside a horizontal bar chart of its top-k classes, 900 x 400 pixels.

    ``image``: a path, URL, PIL image or H x W x 3 uint8 array (shown whole, as it was given,
    not the model's crop); ``ranked``: a ``Prediction`` or its list of ``Ranked``, best first.
    Bars carry the probability as a percentage; the best class is the darkest. ``title``
    (over the photo) defaults to the file name."""
    if isinstance(ranked, Prediction):
        if ranked.error is not None:
            raise ImagezooError(f"{ranked.input}: no predictions to plot ({ranked.error})")
        title = title or Path(ranked.input).name
        ranked = ranked.predictions
    if not ranked:
        raise ImagezooError("no predictions to plot")
    photo = as_photo(image)
    if title is None and isinstance(image, (str, os.PathLike)):
        title = Path(image).name
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(9, 4), dpi=DPI, layout="constrained")
        left, right = figure.subplots(1, 2, width_ratios=[1, 1.25])
        left.imshow(np.asarray(photo))
        left.set_axis_off()
        left.set_title(_shorten(title or "image", 48))
        percents = [100 * r.probability for r in ranked]
        positions = np.arange(len(ranked))
        right.barh(positions, percents, color=[DARK] + [MID] * (len(ranked) - 1), height=0.7)
        right.set_yticks(positions, [_shorten(r.label, 28) for r in ranked])
        right.invert_yaxis()
        right.set_xlim(0, 100)
        right.xaxis.set_major_formatter(PercentFormatter(decimals=0))
        for position, percent in zip(positions, percents):
            right.text(min(percent, 100) + 1.5, position, f"{percent:.1f}%", va="center")
        right.set_title(f"top {len(ranked)} classes")
        right.tick_params(axis="y", length=0)
        return save_png(figure, out_path)


def evaluation_charts(evaluation: Evaluation, out_dir: str | os.PathLike,
                      max_classes: int = 30) -> list[Path]:
    """``per-class-accuracy.png`` (top-1 accuracy of the ``max_classes`` least accurate
    classes, with the overall accuracy as a dashed line) and, when there were mistakes,
    ``confusions.png`` (the most confused classes), both 800 x 800 pixels, in ``out_dir``.

    An ``Evaluation`` keeps only its most frequent mistakes (``evaluate.MAX_CONFUSIONS`` pairs
    of true and predicted class), so the matrix shows those cells and the diagonal (images
    classified right); the other cells, which were rarer mistakes or none, are left blank.
    Cells are shaded by the share of the true class's images and carry the image count."""
    if not evaluation.per_class:
        raise ImagezooError("the evaluation has no classified image to plot")
    out = Path(out_dir)
    written = [_accuracy_chart(evaluation, out / CHART_FILES["accuracy"], max_classes)]
    if evaluation.confusions:
        written.append(_confusion_chart(evaluation, out / CHART_FILES["confusions"]))
    return written


def training_curves(history: str | os.PathLike | Sequence[dict], out_path: str | os.PathLike) -> Path:
    """Loss and classification error per epoch from a fine-tuning ``history.jsonl`` (or its
    records), 1000 x 400 pixels.

    Training: the loss of each epoch (solid, circles), the running average loss over every
    example so far (dashed, squares) and the error of each epoch (solid, circles). Test: each
    ``evaluation`` record as a triangle at its ``epoch`` (at the last epoch when it has none,
    as the one evaluation ``finetune`` runs after training), joined by a dotted line when
    there are several, with its ``loss`` too when it has one."""
    records = _read_history(history)
    epochs = [r for r in records if r.get("event") == "epoch"]
    if not epochs:
        raise ImagezooError(f"{history if not isinstance(history, Sequence) else 'history'}: "
                            f"no epoch records to plot")
    last = max(r["epoch"] for r in epochs)
    tests = [r for r in records if r.get("event") == "evaluation"]
    x = [r["epoch"] for r in epochs]
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(10, 4), dpi=DPI, layout="constrained")
        loss_axes, error_axes = figure.subplots(1, 2)
        loss_axes.plot(x, [r["loss"] for r in epochs], color=DARK, linestyle="-", marker="o",
                       label="training, this epoch")
        loss_axes.plot(x, [r["average_loss"] for r in epochs], color=MID, linestyle="--",
                       marker="s", label="training, running average")
        error_axes.plot(x, [100 * r["metric"] for r in epochs], color=DARK, linestyle="-",
                        marker="o", label="training")
        for name in dict.fromkeys(r.get("set", "test") for r in tests):
            points = [r for r in tests if r.get("set", "test") == name]
            at = [r.get("epoch", last) for r in points]
            count = points[-1].get("count")
            label = f"{name} ({count} images)" if count else name
            error_axes.plot(at, [100 * r["metric"] for r in points], color=DARK, linestyle=":",
                            marker="^", markersize=9, label=label)
            if all("loss" in r for r in points):
                loss_axes.plot(at, [r["loss"] for r in points], color=DARK, linestyle=":",
                               marker="^", markersize=9, label=label)
        loss_axes.set_title("loss (cross-entropy)")
        error_axes.set_title("classification error")
        error_axes.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        error_axes.set_ylim(bottom=0)
        loss_axes.set_ylim(bottom=0)
        for axes in (loss_axes, error_axes):
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(True, color="#dddddd", linewidth=0.8)
            axes.legend(frameon=False)
        return save_png(figure, out_path)


def _accuracy_chart(evaluation: Evaluation, out: Path, max_classes: int) -> Path:
    worst = sorted(evaluation.per_class.items(), key=lambda item: (item[1]["accuracy"], item[0]))
    shown = worst[:max_classes]
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(8, 8), dpi=DPI, layout="constrained")
        axes = figure.subplots()
        positions = np.arange(len(shown))
        percents = [100 * entry["accuracy"] for _, entry in shown]
        axes.barh(positions, percents, color=MID, height=0.7)
        axes.set_yticks(positions, [f"{_shorten(name, 28)} ({entry['count']})"
                                    for name, entry in shown])
        axes.invert_yaxis()
        axes.set_xlim(0, 112)
        axes.set_xticks(range(0, 101, 20))
        axes.xaxis.set_major_formatter(PercentFormatter(decimals=0))
        for position, percent in zip(positions, percents):
            axes.text(percent + 1, position, f"{percent:.0f}%", va="center", fontsize=9,
                      bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
        if evaluation.top1 is not None:
            axes.axvline(100 * evaluation.top1, color=DARK, linestyle="--", linewidth=1.2,
                         label=f"all classes: {100 * evaluation.top1:.1f}% of {evaluation.count}")
            axes.legend(loc="lower right", frameon=True)
        total = len(evaluation.per_class)
        which = f"all {total} classes" if len(shown) == total else \
            f"the {len(shown)} least accurate of {total} classes"
        axes.set_title(f"top-1 accuracy per class ({which}; images in brackets)")
        axes.tick_params(axis="y", length=0)
        return save_png(figure, out)


def _confusion_chart(evaluation: Evaluation, out: Path) -> Path:
    named = list(dict.fromkeys(name for true, predicted, _ in evaluation.confusions
                               for name in (true, predicted)))
    # Rows: the true classes (they had images), in class order; columns: the same, then the
    # classes that were only ever predicted, so that the diagonal is the top-left square.
    rows = [name for name in evaluation.per_class if name in named]
    columns = rows + [name for name in named if name not in evaluation.per_class]
    counts = np.full((len(rows), len(columns)), np.nan)
    for i, name in enumerate(rows):
        entry = evaluation.per_class[name]
        counts[i, i] = round(entry["accuracy"] * entry["count"])
    for true, predicted, n in evaluation.confusions:
        counts[rows.index(true), columns.index(predicted)] = n
    images = np.array([evaluation.per_class[name]["count"] for name in rows])
    share = counts / np.maximum(images, 1)[:, None]
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(8, 8), dpi=DPI, layout="constrained")
        axes = figure.subplots()
        axes.imshow(np.ma.masked_invalid(share), cmap="Greys", vmin=0, vmax=1,
                    interpolation="nearest")
        for (row, column), value in np.ndenumerate(counts):
            if not np.isnan(value):
                axes.text(column, row, f"{int(value)}", ha="center", va="center", fontsize=9,
                          color="white" if share[row, column] > 0.5 else "black")
        axes.set_xticks(range(len(columns)), [_shorten(name, 22) for name in columns],
                        rotation=45, ha="right")
        axes.set_yticks(range(len(rows)), [_shorten(name, 22) for name in rows])
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_title(f"the {len(evaluation.confusions)} most frequent mistakes and the "
                       f"diagonal (images);\nshade: share of the true class; blank: not recorded")
        for side in ("top", "right"):
            axes.spines[side].set_visible(True)
        return save_png(figure, out)


def _read_history(history) -> list[dict]:
    if not isinstance(history, (str, os.PathLike)):
        return list(history)
    path = Path(history)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ImagezooError(f"{path}: cannot read the history ({error.strerror or error})") from None
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ImagezooError(f"{path}: not a history.jsonl file ({error})") from None


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def save_png(figure: Figure, out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    with atomic_path(out) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, metadata={"Software": None})
    return out
