"""Features on a compiled engine against PyTorch's forward hooks, side by side in one run.

For each model, the same random batch goes through ``features_of_batch`` with the hooks
(eager PyTorch, what ``imagezoo features`` runs by default) and with the ``LayerTap`` engines
of ``--backend onnxruntime`` and ``--backend openvino``, in rounds that alternate the three in
a new order each time; the fastest call of each is kept. The set-up costs are timed too: the
first ``layer_engine`` call (export to ONNX, compile, check against the hooks) and a second one
(the cached file and its recorded check). The ResNets run with random weights: speed does not
depend on their values.

    python benchmarks/bench_features.py            # writes benchmarks/RESULTS-features.md
    python benchmarks/bench_features.py --quick    # smoke run
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

import imagezoo
from imagezoo.engine import layer_engine
from imagezoo.models.layers import resolve_layers
from imagezoo.tasks.features import features_of_batch

# What every benchmark shares (this script's folder is on sys.path when it runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (BENCHMARKS, OtherLoad, bench_arguments, log, machine_cpu,  # noqa: E402
                     report_header, versions, write_report)

DEFAULT_OUT = BENCHMARKS / "RESULTS-features.md"
CASES = [  # model, weights, layers (a block's maps and the pooled vector, a typical request)
    ("resnet50", "random", ["layer4", "avgpool"]),
    ("resnet152", "random", ["layer4", "avgpool"]),
    ("efficientnet_lite0", None, ["_blocks.15", "_avg_pooling"]),
]
BACKENDS = ("torch", "onnxruntime", "openvino")


@dataclass
class Result:
    model: str
    layers: list[str]
    batch: int
    seconds: dict[str, list[float]] = field(default_factory=dict)
    first_setup: dict[str, float] = field(default_factory=dict)
    later_setup: dict[str, float] = field(default_factory=dict)

    def rate(self, backend: str) -> float:
        return self.batch / min(self.seconds[backend])


def bench_case(name: str, weights: str | None, layers: list[str], batch: int, rounds: int) -> Result:
    torch.manual_seed(0)
    model = imagezoo.load_model(name, weights=weights).eval()
    refs = resolve_layers(model, layers)
    x = torch.randn(batch, 3, 224, 224)
    result = Result(name, layers, batch)
    taps = {"torch": None}
    for backend in BACKENDS[1:]:
        for attempt, table in (("first", result.first_setup), ("later", result.later_setup)):
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a fall-back to the hooks would spoil the figure
                taps[backend] = layer_engine(model, refs, backend, batch_size=batch)
            table[backend] = time.perf_counter() - started
    with torch.inference_mode():
        for backend in BACKENDS:
            for _ in range(2):  # warm-up
                features_of_batch(model, refs, x, "avg", taps[backend])
            result.seconds[backend] = []
        for _ in range(rounds):
            for backend in random.sample(BACKENDS, len(BACKENDS)):
                started = time.perf_counter()
                features_of_batch(model, refs, x, "avg", taps[backend])
                result.seconds[backend].append(time.perf_counter() - started)
    return result


def report(results: list[Result], other: OtherLoad) -> str:
    lines = report_header(
        "imagezoo features benchmark: compiled engines against the hooks", "bench_features.py", [
            f"CPU: {machine_cpu()}, {torch.get_num_threads()} intra-op threads",
            versions("torch", python=False),
            f"Other processes used {other.share():.0%} of the machine during the run",
        ])
    lines += [
        "",
        "Model only: a random batch at 224x224, `features_of_batch(..., pool='avg')` (layers' "
        "values, then average pooling). img/s from each contender's fastest call. Set-up: the "
        "first `layer_engine` call exports the layer set to ONNX, builds the engine and checks "
        "every layer against the hooks on the 8 sample photos; the later call finds the file "
        "and its recorded check.",
        "",
        "| model | layers | batch | hooks img/s | onnxruntime img/s | vs hooks | openvino img/s "
        "| vs hooks | first set-up s (ORT / OV) | later set-up s (ORT / OV) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        hooks = r.rate("torch")
        lines.append(
            f"| {r.model} | {', '.join(r.layers)} | {r.batch} | {hooks:.1f} "
            f"| {r.rate('onnxruntime'):.1f} | {r.rate('onnxruntime') / hooks:.2f} "
            f"| {r.rate('openvino'):.1f} | {r.rate('openvino') / hooks:.2f} "
            f"| {r.first_setup['onnxruntime']:.1f} / {r.first_setup['openvino']:.1f} "
            f"| {r.later_setup['onnxruntime']:.1f} / {r.later_setup['openvino']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = bench_arguments(__doc__, "EfficientNet-Lite0 only, few rounds", DEFAULT_OUT, argv)
    cases = CASES[-1:] if args.quick else CASES
    rounds = 3 if args.quick else 12
    other = OtherLoad()
    results = []
    with tempfile.TemporaryDirectory(prefix="imagezoo-bench-features-") as cache:
        os.environ["IMAGEZOO_CACHE"] = cache   # every export and check is measured
        for name, weights, layers in cases:
            log(f"{name}: {', '.join(layers)}")
            results.append(bench_case(name, weights, layers, batch=8, rounds=rounds))
    write_report(report(results, other), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
