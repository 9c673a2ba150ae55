"""A small real labelled image set for trying fine-tuning: scikit-learn's handwritten digits.

    python -m imagezoo.demo digits data/          # data/train/mapping.txt, data/test/mapping.txt

scikit-learn (a test dependency, installed by ``make``) ships the 1797 8x8 digit images of the
UCI "Optical Recognition of Handwritten Digits" set. They are written as 64x64 PNGs (scaled
up with nearest-neighbour so the pixels stay as recorded) with CNTK-style mapping files
(``path<TAB>label``, paths relative to the file) and a ``classes.txt``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder: str | Path, train_per_class: int = 20, test_per_class: int = 10,
                 seed: int = 0) -> tuple[Path, Path]:
    """Write train and test sets of the given size per class; returns their mapping files."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the digits demo needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    mappings = {}
    chosen = {label: rng.permutation(np.flatnonzero(digits.target == label)) for label in range(10)}
    for split, start, count in (("train", 0, train_per_class), ("test", train_per_class, test_per_class)):
        split_folder = folder / split
        split_folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for label in range(10):
            for index in chosen[label][start:start + count]:
                pixels = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
                name = f"{label}_{index:04d}.png"
                Image.fromarray(255 - pixels).resize((64, 64), Image.Resampling.NEAREST).save(split_folder / name)
                lines.append(f"{name}\t{label}")
        (split_folder / "mapping.txt").write_text("\n".join(lines) + "\n")
        mappings[split] = split_folder / "mapping.txt"
    (folder / "classes.txt").write_text("".join(f"{label}\n" for label in range(10)))
    return mappings["train"], mappings["test"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m imagezoo.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["digits"])
    parser.add_argument("folder")
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--test-per-class", type=int, default=10)
    args = parser.parse_args()
    train, test = write_digits(args.folder, args.train_per_class, args.test_per_class)
    print(f"wrote {train} and {test}")


if __name__ == "__main__":
    main()
