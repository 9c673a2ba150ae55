"""What the benchmarks share: their options, the other-load meter and the quiet-moment waiter,
timing helpers, whole-process timing, the generated photos, the machine facts and the report
file.

Every ``bench_*.py`` script imports from here (its folder is on ``sys.path`` when it runs as a
script), so the reports measure and describe the machine the same way:

- ``bench_arguments``: ``--quick`` (a smoke run) and ``--out`` (where the Markdown goes);
- ``OtherLoad``: the CPU time other processes take while something is measured, from
  /proc/stat; ``wait_for_quiet``, ``QuietWaiter`` (one waiting budget for a whole run),
  ``quiet_moment`` (one bounded wait) and ``measure_quietly`` (measure again when disturbed);
- ``warm_up``, ``iterations_for`` and ``time_alternating``: timing calls in this process;
  ``run_process``: timing a whole command, from before its start to after its reaping;
- ``make_photos``: photo-sized JPEGs of smooth random content, and ``read_all``;
- ``report_header`` and the facts it lists (``machine_cpu``, ``other_load_fact``,
  ``versions``), and ``write_report``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
from PIL import Image

import imagezoo

BENCHMARKS = Path(__file__).resolve().parent     # where the scripts and their RESULTS*.md are
REPO = BENCHMARKS.parent
VENV_BIN = Path(sys.executable).parent
TIME_BIN = Path("/usr/bin/time")  # GNU time, for the peak memory of the untimed runs
PHOTO_SIZE = (1600, 1200)
JPEG_QUALITY = 90
BUSY_SHARE = 0.05   # other processes' share of the CPU above which the reports warn


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_arguments(doc: str, quick_help: str, default_out: Path,
                    argv: list[str] | None = None) -> argparse.Namespace:
    """``--quick`` and ``--out``, the options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick_help}")
    parser.add_argument("--out", type=Path, default=default_out,
                        help=f"where to write the Markdown results (default: {default_out})")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- other load

def machine_cpu_seconds() -> float:
    """CPU time used by everything on the machine since boot (busy and stolen, from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the DataLoader workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a running process (user + system, from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Measures the CPU time other processes take from the moment it is created.

    All busy CPU time on the machine (from /proc/stat) minus this process's and its finished
    children's (the DataLoader workers are joined, so they count as ours), and minus that of
    the running processes ``ours`` (a server this process started, say).
    """

    def __init__(self, ours: Sequence[int] = ()) -> None:
        self.ours = tuple(ours)
        self.started = time.perf_counter()
        self.machine = machine_cpu_seconds()
        self.own = self._own_seconds()

    def _own_seconds(self) -> float:
        return own_cpu_seconds() + sum(process_cpu_seconds(pid) for pid in self.ours)

    def cpu_seconds(self) -> float:
        used = (machine_cpu_seconds() - self.machine) - (self._own_seconds() - self.own)
        return max(0.0, used)   # tick rounding can make it slightly negative

    def share(self) -> float:
        """Other processes' CPU time as a share of all the cores' time so far."""
        wall = time.perf_counter() - self.started
        return self.cpu_seconds() / (wall * (os.cpu_count() or 1))


def wait_for_quiet(max_seconds: float, window: float = 3.0) -> bool:
    """Sleep until other processes have left the CPU (nearly) idle for ``window`` seconds.

    Gives up after ``max_seconds``; returns whether a quiet window was found.
    """
    deadline = time.perf_counter() + max_seconds
    while time.perf_counter() < deadline:
        other = OtherLoad()
        time.sleep(window)
        if other.share() <= BUSY_SHARE:
            return True
    return False


def quiet_moment(max_seconds: float, window: float = 3.0) -> None:
    """``wait_for_quiet`` once (nothing when ``max_seconds`` is 0), saying when it gave up."""
    if max_seconds > 0 and not wait_for_quiet(max_seconds, window):
        log(f"  the machine did not go quiet within {max_seconds:.0f} s")


class QuietWaiter:
    """Waits for quiet moments before measurements, within one budget for the whole run.

    ``settings`` has ``quiet_wait_seconds`` (the longest wait before one measurement) and
    ``quiet_wait_budget`` (all the waiting allowed over the run).
    """

    def __init__(self, settings) -> None:
        self.per_wait = settings.quiet_wait_seconds
        self.remaining = settings.quiet_wait_budget

    def wait(self) -> None:
        limit = min(self.per_wait, self.remaining)
        if limit <= 0:
            return
        started = time.perf_counter()
        if not wait_for_quiet(limit):
            log(f"  other processes kept the CPU busy for {limit:.0f} s; measuring anyway")
        self.remaining -= time.perf_counter() - started


Measured = TypeVar("Measured")   # a row with an ``other_share``


def measure_quietly(measure: Callable[[], Measured], attempts: int,
                    waiter: QuietWaiter) -> Measured:
    """Measure a row, again (up to ``attempts`` times) while other processes disturb it.

    Keeps the least disturbed attempt; its ``other_share`` goes into the report either way.
    A retry is only worth it when there was time to wait for the disturbance to pass.
    """
    best = None
    for attempt in range(attempts):
        waiter.wait()
        row = measure()
        if best is None or row.other_share < best.other_share:
            best = row
        if row.other_share <= BUSY_SHARE or waiter.remaining <= 0:
            break
        if attempt + 1 < attempts:
            log(f"  other processes took {row.other_share:.0%} of the CPU; measuring again")
    assert best is not None
    return best


# ---------------------------------------------------------------------------- timing

def warm_up(call: Callable[[], object], seconds: float) -> float:
    """Run ``call`` until ``seconds`` have passed (at least once); return the last call's time.

    The first calls of a module allocate buffers and pick kernels, so they are not timed.
    """
    started = time.perf_counter()
    while True:
        call_start = time.perf_counter()
        call()
        last = time.perf_counter() - call_start
        if time.perf_counter() - started >= seconds:
            return last


def iterations_for(call_seconds: float, settings) -> int:
    """Enough calls to fill ``settings.target_seconds``, within ``settings.min_iterations``
    and ``settings.max_iterations``."""
    wanted = math.ceil(settings.target_seconds / max(call_seconds, 1e-9))
    return max(settings.min_iterations, min(settings.max_iterations, wanted))


def time_alternating(first: Callable[[], object], second: Callable[[], object],
                     rounds: int) -> tuple[list[float], list[float]]:
    """Time both calls once per round, swapping which goes first every round.

    Interleaving spreads any drift (other processes, CPU clock changes) over both sides, and
    swapping the order cancels any advantage of running right after the other one.
    """
    times: tuple[list[float], list[float]] = ([], [])
    for round_index in range(rounds):
        order = ((0, first), (1, second)) if round_index % 2 == 0 else ((1, second), (0, first))
        for side, call in order:
            start = time.perf_counter()
            call()
            times[side].append(time.perf_counter() - start)
    return times


@dataclass
class Run:
    """One whole process, as ``run_process`` timed it."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    max_rss_mb: float | None = None
    user: float = 0.0           # CPU seconds of the process (and its reaped children)
    system: float = 0.0
    minor_faults: int = 0


def run_process(command: list[str], env: dict[str, str], stdout_to_null: bool = False,
                rss: bool = False, cwd: Path = REPO) -> Run:
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
                                   stderr=err, cwd=cwd)
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


# ---------------------------------------------------------------------------- photos

def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` photo-sized JPEGs of smooth random content (two octaves of noise).

    Upscaled coarse noise gives photo-like smooth regions; a finer octave adds some texture so
    the files are not unrealistically small to decode.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        fine = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
        image = Image.blend(coarse.resize(PHOTO_SIZE, Image.Resampling.BICUBIC),
                            fine.resize(PHOTO_SIZE, Image.Resampling.BICUBIC), 0.25)
        path = folder / f"photo_{index:03d}.jpg"
        image.save(path, quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def read_all(paths: list[Path]) -> None:
    # Both sides should read the JPEGs from the page cache, not from disk.
    for path in paths:
        path.read_bytes()


# ---------------------------------------------------------------------------- machine facts

def cpu_model() -> str:
    from imagezoo.engine import cpu_model as engine_cpu_model
    return engine_cpu_model()


def git_revision() -> str:
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, check=True, cwd=BENCHMARKS).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=BENCHMARKS).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return revision + (" (with uncommitted changes)" if dirty.strip() else "")


def machine_cpu() -> str:
    """``CPU MODEL, N cores``, as every report's CPU line begins."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def load_average(load_before: float) -> str:
    return (f"1-minute load average {load_before:.2f} before the run and "
            f"{os.getloadavg()[0]:.2f} after")


def other_load_fact(load_before: float, other: OtherLoad, detail: str = "") -> str:
    """The ``Other load:`` line; ``detail`` goes inside its closing bracket."""
    return (f"Other load: {load_average(load_before)}; other processes used "
            f"{other.cpu_seconds():.0f} CPU-s during it ({other.share():.0%} of the "
            f"machine{detail})")


PACKAGE_LABELS = {"PIL": "Pillow"}


def versions(*packages: str, python: bool = True, torch_threads: str = "") -> str:
    """``Python X, torch Y, ..., imagezoo Z at REVISION``: ``packages`` by import name (a
    missing one is said to be); ``torch_threads`` goes in brackets after torch's version."""
    parts = [f"Python {platform.python_version()}"] if python else []
    for package in packages:
        label = PACKAGE_LABELS.get(package, package)
        try:
            version = importlib.import_module(package).__version__
        except ImportError:
            parts.append(f"{label} not installed")
            continue
        note = f" ({torch_threads})" if package == "torch" and torch_threads else ""
        parts.append(f"{label} {version}{note}")
    parts.append(f"imagezoo {imagezoo.__version__} at {git_revision()}")
    return ", ".join(parts)


def command_line() -> str:
    """How this script was run, as the reports show it."""
    return "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


# ---------------------------------------------------------------------------- the report

def report_header(title: str, script: str, facts: Sequence[str], command_note: str = "",
                  written_note: str = "", preface: Sequence[str] = ()) -> list[str]:
    """The lines a report begins with: its title, which script wrote it (``written_note``
    after that), the ``preface`` paragraphs, then a list of the date, the command (with
    ``command_note``) and the ``facts``."""
    lines = [f"# {title}", "",
             f"Written by `benchmarks/{script}`; rerun it to refresh (the file is "
             f"overwritten).{written_note}", ""]
    for paragraph in preface:
        lines += [paragraph, ""]
    lines += [f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
              f"- Command: `{command_line()}`{command_note}"]
    lines += [f"- {fact}" for fact in facts]
    return lines


def write_report(text: str, out: Path) -> None:
    """Print the report and write it to ``out``."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    log(f"wrote {out}")
