"""Redraw the README's pictures with imagezoo's own API (the calls the CLI makes).

    .venv/bin/python docs/images/make_images.py [--cifar ../shared/data/cifar10-test]

Writes, beside this file: resnet18-blocks.svg and resnet18-graph.svg (the diagrams at depth 2
and 3), cat-prediction.png, cat-gradcam.png (the default model on the bundled photo),
curves.png and evaluation/ (a 15-epoch fine-tune of the default model on 5 CIFAR-10 classes,
40 training and 20 test images each, from the JPEG copy of the CIFAR-10 test set).
"""
from __future__ import annotations

import argparse
import tempfile
from importlib import resources
from pathlib import Path

import imagezoo
from imagezoo.viz import (evaluation_charts, explain, overlay, prediction_chart, summary,
                          training_curves, write_graph)

HERE = Path(__file__).resolve().parent
CLASSES = ("bird", "cat", "deer", "dog", "horse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path,
                        default=HERE.parents[2] / "shared" / "data" / "cifar10-test")
    args = parser.parse_args()
    cat = str(resources.files("imagezoo.resources").joinpath("cat.png"))

    resnet18 = imagezoo.load_model("resnet18", weights="random")
    write_graph(resnet18, HERE / "resnet18-blocks.svg", depth=2)
    write_graph(resnet18, HERE / "resnet18-graph.svg", depth=3)
    print(summary(resnet18, depth=1).format_table())

    model = imagezoo.load_model("efficientnet_lite0")
    [prediction] = imagezoo.classify(model, cat, top=5)
    prediction_chart(cat, prediction, HERE / "cat-prediction.png")
    [explanation] = explain(model, cat)
    overlay(cat, explanation, HERE / "cat-gradcam.png")

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for split, numbers in (("train", range(0, 40)), ("test", range(40, 60))):
            for name in CLASSES:
                folder = work / split / name
                folder.mkdir(parents=True)
                for number in numbers:
                    (folder / f"{number:04d}.jpg").symlink_to(args.cifar / name / f"{number:04d}.jpg")
        result = imagezoo.finetune(work / "train", work / "model", test=work / "test",
                                   epochs=15, lr=0.01, seed=0, log_stream=None)
        training_curves(work / "model" / "history.jsonl", HERE / "curves.png")
        evaluation = imagezoo.evaluate(result.model, work / "test", top=2)
        evaluation_charts(evaluation, HERE / "evaluation")
        print(f"fine-tuned: test error {result.test_error:.2%} of {result.test_count}; "
              f"top-1 {evaluation.top1:.2%}")


if __name__ == "__main__":
    main()
