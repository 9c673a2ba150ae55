"""The start-up benchmark's end-to-end part (``bench_startup.py``, case 6): a folder of photos
through `imagezoo classify DIR --json` against the bound set by decoding and the model sharing
the cores, each side timed in a helper process of its own."""
from __future__ import annotations

import json
import os
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness import OtherLoad, QuietWaiter, checked, log, read_all, run_process
from startup_cases import IMAGEZOO, environment, importtime_run, tuning_files

if TYPE_CHECKING:
    from bench_startup import Settings

E2E_BATCH = 8            # what `imagezoo classify` runs a folder at (its default --batch-size)
MODEL_RATE_PHOTOS = 64   # preprocessed photos cycled through for the model rate (sides.py)
MALLOC_FIXED = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}

# The decoding and model sides of the end-to-end bound, each timed inside a process of its own
# (the same imagezoo code as the command's, whatever this process imported at its start).
# decode: load_image + preprocess_array of every listed photo in a forked pool of one worker
# per core, started (and every worker up) before the clock. model: the cached ONNX Runtime
# engine the command finds, warmed up, then images / batch calls on preprocessed batches
# (the first MODEL_RATE_PHOTOS photos, cycled).
SIDES_SCRIPT = """\
import json, multiprocessing, os, resource, sys, time
import numpy as np
from imagezoo.data.images import load_image
from imagezoo.data.transforms import preprocess_array
from imagezoo.models.registry import MODELS

side, list_file, batch, sample = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
paths = open(list_file, encoding="utf-8").read().splitlines()
SPEC = MODELS["efficientnet_lite0"].preprocess()

def decode_one(path):
    return preprocess_array(load_image(path), SPEC).shape[0]

if side == "decode":
    workers = os.cpu_count() or 1
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(abs, range(workers))
        started = time.perf_counter()
        pool.map(decode_one, paths, chunksize=4)
        seconds = time.perf_counter() - started
        pool.close()
        pool.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the joined workers
    print(json.dumps({"seconds": seconds, "images": len(paths), "workers": workers,
                      "user": usage.ru_utime, "system": usage.ru_stime,
                      "minor_faults": usage.ru_minflt}))
else:
    from imagezoo.engine.light import find_light_engine
    engine = find_light_engine(None, None, "exact", "auto", batch)
    if engine is None or engine.origin != "cached engine":   # the warm path: the cached engine
        print(json.dumps({"found": False}))
        sys.exit(0)
    arrays = [preprocess_array(load_image(path), SPEC) for path in paths[:sample]]
    batches = [np.stack(arrays[i:i + batch]) for i in range(0, len(arrays), batch)]
    for x in batches[:3]:
        engine(x)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for i in range(len(paths) // batch):
        engine(batches[i % len(batches)])
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"found": True, "seconds": seconds, "images": len(paths) // batch * batch,
                      "same_preprocessing": engine.card.preprocess == SPEC,
                      "user": after.ru_utime - before.ru_utime,
                      "system": after.ru_stime - before.ru_stime,
                      "minor_faults": after.ru_minflt - before.ru_minflt,
                      "threads": engine.session.get_session_options().intra_op_num_threads}))
"""


@dataclass
class EndToEnd:
    images: int
    photo_kib: float
    command: str
    command_seconds: list[float] = field(default_factory=list)
    rss_mb: float | None = None          # peak RSS of the untimed (importtime) run
    decode_seconds: list[float] = field(default_factory=list)
    model_seconds: list[float] = field(default_factory=list)
    other_shares: list[float] = field(default_factory=list)
    # Per pass, in the order of the *_seconds lists: (user s, system s, minor page faults).
    usage: dict[str, list[tuple[float, float, int]]] = field(
        default_factory=lambda: {"command": [], "decode": [], "model": []})
    fixed_malloc: dict | None = None     # the diagnostic decoding pass, see MALLOC_FIXED
    path_note: str = ""
    summary_line: str = ""

    def usage_text(self, side: str, seconds: list[float], images: int) -> str:
        """CPU per image (user + system, ms) and minor page faults per image of the fastest pass."""
        user, system, faults = self.usage[side][seconds.index(min(seconds))]
        return (f"{(user + system) / images * 1000:.1f} ({system / images * 1000:.1f} system) "
                f"| {faults / images:.0f}")

    def rate(self, seconds: list[float], best: bool = True) -> float:
        return self.images / (min(seconds) if best else statistics.median(seconds))

    def round_ratios(self) -> list[float]:
        """Each round's command rate over that round's bound: N/(d+m) over N/c = (d+m)/c."""
        return [(d + m) / c for c, d, m in
                zip(self.command_seconds, self.decode_seconds, self.model_seconds)]

    def quietest_round(self) -> int:
        return min(range(len(self.other_shares)), key=self.other_shares.__getitem__)

    def bound(self, best: bool = True) -> float:
        return 1 / (1 / self.rate(self.decode_seconds, best) + 1 / self.rate(self.model_seconds, best))


def sides_run(script: Path, side: str, list_file: Path, env: dict[str, str]) -> dict:
    run = checked(run_process([sys.executable, str(script), side, str(list_file),
                               str(E2E_BATCH), str(MODEL_RATE_PHOTOS)], env), f"{side} side")
    return json.loads(run.stdout.strip().splitlines()[-1])


def bench_end_to_end(folder: Path, paths: list[Path], cache: Path, scratch: Path,
                     settings: Settings, waiter: QuietWaiter, rng: random.Random) -> EndToEnd:
    photo_kib = statistics.mean(path.stat().st_size for path in paths) / 1024
    shown = f"imagezoo classify {folder.name}/ --json > /dev/null"
    result = EndToEnd(len(paths), photo_kib, shown)
    env = environment(cache)
    names = [str(path) for path in paths]
    command = [IMAGEZOO, "classify", str(folder), "--json"]

    # Untimed: the photos into the page cache, and which path the command takes.
    read_all(paths)
    tuning_before = tuning_files(cache)
    run, imports = importtime_run([IMAGEZOO, "classify", str(folder), "--json"], env, rss=True)
    result.rss_mb = run.max_rss_mb
    summary = [line for line in run.stderr.splitlines() if not line.startswith("import time:")]
    result.summary_line = summary[-1] if summary else ""
    sides_script = scratch / "sides.py"
    sides_script.write_text(SIDES_SCRIPT, encoding="utf-8")
    list_file = scratch / "photos.list"
    list_file.write_text("\n".join(names) + "\n", encoding="utf-8")
    probe = sides_run(sides_script, "model", list_file, env)  # also the untimed first pass
    engine = probe["found"]
    path = ("PyTorch-free (the cached ONNX Runtime engine; Pillow + NumPy decoding in a pool "
            f"of {os.cpu_count()} threads)" if not imports.torch_modules else "PyTorch")
    found = "found" if engine else "did not find"
    result.path_note = (
        f"{path}: its `python -X importtime` run imported {imports.modules} modules, "
        f"{imports.torch_modules} of them torch; `find_light_engine(None, None, \"exact\", "
        f"\"auto\", {E2E_BATCH})` {found} the engine; timing files {tuning_before} before, "
        f"{tuning_files(cache)} after")
    if not engine:
        raise RuntimeError("no cached ONNX Runtime engine after the warm-up")
    if not probe["same_preprocessing"]:
        result.path_note += ("; **the cached engine's card preprocessing differs from the "
                             "registry's (the decoding side uses the registry's)**")
    result.path_note += (f"; ONNX Runtime intra-op threads setting "
                         f"{probe['threads']} (0: its default, one per core)")

    def command_side() -> None:
        run = checked(run_process(command, env, stdout_to_null=True), shown)
        result.command_seconds.append(run.seconds)
        result.usage["command"].append((run.user, run.system, run.minor_faults))

    def decode_side() -> None:
        measured = sides_run(sides_script, "decode", list_file, env)
        result.decode_seconds.append(measured["seconds"])
        result.usage["decode"].append((measured["user"], measured["system"],
                                       measured["minor_faults"]))

    def model_side() -> None:
        measured = sides_run(sides_script, "model", list_file, env)
        if not measured["found"]:
            raise RuntimeError("the cached engine is gone")
        # Whole batches only: scaled to the photo count, the rate is the same.
        scale = len(names) / measured["images"]
        result.model_seconds.append(measured["seconds"] * scale)
        result.usage["model"].append((measured["user"] * scale, measured["system"] * scale,
                                      int(measured["minor_faults"] * scale)))

    for round_index in range(settings.runs):
        sides = [command_side, decode_side, model_side]
        rng.shuffle(sides)
        shares = []
        for side in sides:  # each side is long: a quiet moment is looked for before each
            waiter.wait()
            other = OtherLoad()
            side()
            shares.append(other.share())
        result.other_shares.append(max(shares))
        log(f"  round {round_index + 1}: command {result.command_seconds[-1]:.1f} s, decode "
            f"{result.decode_seconds[-1]:.1f} s, model {result.model_seconds[-1]:.1f} s, "
            f"other load {result.other_shares[-1]:.0%}")
    if tuning_files(cache) != tuning_before:
        result.path_note += f"; **timing files changed during the rounds: {tuning_files(cache)}**"

    # Diagnostic, not part of the bound: the same decoding pass with glibc's malloc thresholds
    # fixed, so that freed image buffers are kept instead of returned to the system and
    # faulted in afresh for the next photo.
    waiter.wait()
    other = OtherLoad()
    result.fixed_malloc = sides_run(sides_script, "decode", list_file, {**env, **MALLOC_FIXED})
    result.fixed_malloc["other_share"] = other.share()
    return result
