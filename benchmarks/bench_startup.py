#!/usr/bin/env python
"""How long do imagezoo's short commands take as whole processes, from a cold and a warm cache,
next to `python -c pass` and the script a user writes by hand?

Everything is a separate process, timed from before it is started to when it has been reaped
(what a shell's `time` says), several times in rounds that run every case once in a new
random order, so a slow spell on a shared machine hits all of them. Each case reports its
fastest and median run (other load only ever adds time) and its peak memory. Cases:

1. `python -c pass` (the floor) and `imagezoo --help` as a user's second and later runs
   print it: the kept copy of argparse's text, which the untimed first run in that cache
   renders and writes to `<cache>/.help/` (that first run is timed once on its own, in an
   empty cache);
2. a warm one-image `imagezoo classify` of the bundled cat, with `$IMAGEZOO_CACHE` warmed
   first by `imagezoo engines --prepare --batch-size 1` (the default model's ONNX Runtime
   engine, exported and checked); checked to find that engine (nothing on stderr) and, with
   `python -X importtime`, not to import PyTorch;
3. the same with an empty cache every run, as `make run` on a fresh machine: the default
   model's weightless ONNX graph shipped in the package, filled with the bundled weights read
   without PyTorch, in ONNX Runtime; checked to say so on stderr, to time nothing, to import
   no PyTorch, to start no background preparation and to leave its cache empty;
3b. a model of one's own, which has no shipped graph (the default model saved once as a model
   folder with `imagezoo.save_model`), classified with `--model FOLDER` in an empty cache
   with the background preparation on, once, timed to the end of the foreground command: it
   runs eager PyTorch and starts `imagezoo engines --prepare` in the background; that process
   is waited for, and the next run in that cache is checked not to import PyTorch;
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

The package's sources are byte-compiled first (`python -m compileall -q src`), as `make bench`
does: where PYTHONDONTWRITEBYTECODE is set, every imagezoo module would otherwise compile afresh
in every process.

A quiet moment (other processes under 5% of the CPU for 3 s) is waited for before each
round, each end-to-end side and each one-off measurement, within one time budget for the run
(`wait_for_quiet` through the harness's `QuietWaiter`); the other load is reported.

    python benchmarks/bench_startup.py            # full run, writes benchmarks/RESULTS-startup.md
    python benchmarks/bench_startup.py --quick    # smoke run: 3 runs per case, 200 photos

The cases and their scripts are in startup_cases.py, the end-to-end part in startup_e2e.py and
the report in startup_report.py.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# What every benchmark shares (this script's folder is on sys.path when it runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (BENCHMARKS, REPO, OtherLoad, QuietWaiter, bench_arguments,  # noqa: E402
                     checked, log, make_photos, run_process, write_report)
from startup_cases import (BACKGROUND_NOTE, BASELINE_SCRIPT, CAT, EAGER_NOTE,  # noqa: E402
                           IMAGEZOO, LABELS, PHASES_SCRIPT, SAVE_MODEL_SCRIPT, SHIPPED_NOTE,
                           TIMING_NOTE, Case, ImportReport, after_run_clean, baseline_top5,
                           cache_files, environment, fresh_profile, help_files, imagezoo_top5,
                           importtime_run, run_case, tuning_files, wait_for_background)
from startup_e2e import bench_end_to_end  # noqa: E402
from startup_report import build_report, fmt_s, target_verdicts  # noqa: E402

DEFAULT_OUT = BENCHMARKS / "RESULTS-startup.md"


@dataclass(frozen=True)
class Settings:
    """How much work each measurement does; ``--quick`` swaps in a smaller set."""

    runs: int = 5                   # timed runs per case (and end-to-end rounds)
    e2e_images: int = 1000
    quiet_wait_seconds: float = 30  # longest wait for a quiet moment before each round
    quiet_wait_budget: float = 480  # total waiting allowed over the whole run (QuietWaiter)


FULL = Settings()
QUICK = Settings(runs=3, e2e_images=200, quiet_wait_seconds=6, quiet_wait_budget=30)


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = bench_arguments(__doc__, "3 runs per case, 200 photos end to end", DEFAULT_OUT, argv)
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    checks: dict = {"compile": byte_compile()}
    load_before = os.getloadavg()[0]
    other = OtherLoad()
    waiter = QuietWaiter(settings)
    rng = random.Random(0)

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
        # 3b's model of one's own: no shipped graph (saved in a cache of its own, then dropped).
        own_model = scratch / "mymodel"
        save_script = scratch / "save_model.py"
        save_script.write_text(SAVE_MODEL_SCRIPT, encoding="utf-8")
        checked(run_process([sys.executable, str(save_script), str(own_model)],
                            environment(scratch / "save-cache")), "save_model")
        shutil.rmtree(scratch / "save-cache", ignore_errors=True)

        # The warm cache, as a user's run finds it after `imagezoo engines --prepare`.
        log("warming the cache")
        prepare = checked(run_process([IMAGEZOO, "engines", "--prepare", "--batch-size", "1"],
                                      warm_env), "engines --prepare")
        checks["warmup"] = {"prepare_seconds": prepare.seconds}

        cat = str(CAT.relative_to(REPO))
        cases = {
            "pass": Case("pass", "the floor: an empty Python", [sys.executable, "-c", "pass"], "python -c pass",
                         warm_env),
            "help": Case("help", "help (no PyTorch; the kept text)", [IMAGEZOO, "--help"],
                         "imagezoo --help", warm_env),
            "warm": Case("warm", "warm one-image classify", [IMAGEZOO, "classify", cat],
                         f"imagezoo classify {cat}", warm_env),
            "fresh": Case("fresh", "fresh-cache one-image classify", [IMAGEZOO, "classify", cat],
                          f"IMAGEZOO_CACHE=<empty dir> imagezoo classify {cat}", None),
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
        own_command = [IMAGEZOO, "classify", cat, "--model", str(own_model)]

        # Untimed: every case once (page cache; --help's first run in the warm cache renders
        # and keeps its text), and the checks of what each run imports.
        log("untimed first runs and import checks")
        for case in cases.values():
            run = run_case(case, scratch, rss=True)
            case.rss_mb = run.max_rss_mb
            if case.key == "warm" and run.stderr.strip():
                raise RuntimeError("the warm run did not find the cached engine (it said: "
                                   f"{run.stderr.strip()[:500]})")
        kept_help = help_files(warm)
        if len(kept_help) != 1:
            raise RuntimeError(f"--help kept {len(kept_help)} texts in the warm cache, not 1")
        kept_stamp = kept_help[0].stat().st_mtime_ns
        own_cache = scratch / "own-untimed"  # 3b's page cache and peak RSS, background off
        own_rss = checked(run_process(own_command, environment(own_cache, background=False),
                                      rss=True), "3b untimed").max_rss_mb
        shutil.rmtree(own_cache, ignore_errors=True)
        tuning_before = tuning_files(warm)
        imports: dict[str, ImportReport] = {}
        for key in ("help", "warm", "warm4", "warm8"):
            _, imports[key] = importtime_run(cases[key].command, warm_env)
        _, imports["baseline"] = importtime_run(cases["baseline"].command[1:], warm_env)
        fresh_cache = scratch / "fresh-importtime"
        fresh_imported, imports["fresh"] = importtime_run(cases["fresh"].command,
                                                          environment(fresh_cache))
        wait_for_background(fresh_cache)
        fresh_imported_files = cache_files(fresh_cache)
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
        warm_quiet = all(not run.stderr.strip() for run in cases["warm"].runs)
        checks["warm"] = (f"{imports['warm'].torch_modules} torch modules imported "
                          f"(`-X importtime`: {imports['warm'].modules} modules); "
                          + ("stderr empty on every run (the cached engine)" if warm_quiet else
                             "**a run wrote on stderr: not the cached engine**")
                          + f"; top 5: {', '.join(warm_top)}")
        same = "same labels and order as imagezoo's" if base_top == warm_top else \
            "differs from imagezoo's"
        checks["baseline"] = f"top 5: {', '.join(base_top)} ({same})"
        fresh_ok = (imports["fresh"].torch_modules == 0 and fresh_imported_files == 0
                    and SHIPPED_NOTE.search(fresh_imported.stderr) is not None
                    and all(SHIPPED_NOTE.search(run.stderr) and not TIMING_NOTE.search(run.stderr)
                            and not BACKGROUND_NOTE.search(run.stderr) and after_run_clean(run)
                            for run in cases["fresh"].runs))
        note_line = next((line for line in cases["fresh"].runs[0].stderr.splitlines()
                          if SHIPPED_NOTE.search(line)), "(no 'running on onnxruntime' line)")
        checks["fresh"] = (f"{imports['fresh'].torch_modules} torch modules (`-X importtime`: "
                           f"{imports['fresh'].modules} modules); every run said `{note_line}`, "
                           f"started no background preparation and left its cache empty"
                           if fresh_ok else "see the targets")
        checks["no_tuning"] = bool(fresh_ok)
        checks["no_tuning_text"] = (
            "every fresh run's stderr names the shipped graph (\"running on onnxruntime "
            "(imagezoo's graph of ...\"), has no \"timing backends\" step and no background "
            f"preparation; {imports['fresh'].torch_modules} torch modules imported "
            "(`-X importtime`); 0 timing files, 0 files of any kind left in its cache"
            if fresh_ok else
            "a fresh run imported PyTorch, timed the backends, started a background "
            "preparation, wrote to its cache or did not say it runs on the shipped graph")
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

        # --help: every timed run printed the kept text; its first run in an empty cache, once.
        log("--help's first run in an empty cache")
        kept_text = kept_help[0].read_text(encoding="utf-8")
        help_same = (help_files(warm) == kept_help
                     and kept_help[0].stat().st_mtime_ns == kept_stamp
                     and all(run.stdout == kept_text for run in cases["help"].runs))
        waiter.wait()
        help_cache = scratch / "help-first"
        help_load = OtherLoad()
        help_first = checked(run_process(cases["help"].command, environment(help_cache)),
                             "--help in an empty cache")
        help_share = help_load.share()
        kept_now = help_files(help_cache)
        rendered_same = len(kept_now) == 1 and help_first.stdout == kept_text \
            and kept_now[0].read_text(encoding="utf-8") == kept_text
        shutil.rmtree(help_cache, ignore_errors=True)
        checks["help_first"] = help_first.seconds
        checks["help"] = (
            f"{imports['help'].torch_modules} torch modules; "
            + ("every run printed the text kept in the cache (unchanged)" if help_same else
               "**a run did not print the kept text, or the kept text changed**")
            + f"; the first run in an empty cache, which renders and keeps the text: "
              f"{fmt_s(help_first.seconds)} (once; other load {help_share:.0%}"
            + ("" if rendered_same else "; **it kept no text, or another one**") + ")")

        # 3b: a model of one's own in an empty cache, the background preparation on, once.
        log("a model folder in an empty cache, the background preparation on")
        waiter.wait()
        bg_cache = scratch / "fresh-background"
        bg_cache.mkdir()
        bg_load = OtherLoad()
        bg_run = checked(run_process(own_command, environment(bg_cache)), "3b")
        bg_share = bg_load.share()
        background_seconds = wait_for_background(bg_cache)
        next_run, next_imports = importtime_run(own_command, environment(bg_cache))
        next_said = [line for line in next_run.stderr.splitlines()
                     if not line.startswith("import time:")]
        eager = EAGER_NOTE.search(bg_run.stderr) is not None
        said = BACKGROUND_NOTE.search(bg_run.stderr) is not None
        checks["background"] = {
            "seconds": bg_run.seconds, "rss_mb": own_rss,
            "shown": f"imagezoo classify {cat} --model {own_model.name}/",
            "note": ("ran on eager PyTorch" if eager else "**did not say it runs on eager PyTorch**")
                    + (" and said it prepares the engine in the background" if said else
                       "; **no background notice**")
                    + (f"; the background process ended {background_seconds:.1f} s after the "
                       f"foreground (that run's preparation: "
                       f"{bg_run.seconds + background_seconds:.1f} s from the start)"
                       if background_seconds is not None else
                       "; no background process was seen")
                    + f"; the next run in that cache imported {next_imports.torch_modules} "
                      f"torch modules ({fmt_s(next_run.seconds)} under -X importtime"
                    + ("; stderr empty: the cached engine" if not next_said else
                       f"; it said `{next_said[0]}`")
                    + f"); other load during the foreground run {bg_share:.0%}"}

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
    write_report(report, args.out)
    return 0


def byte_compile() -> dict:
    """``python -m compileall -q src``, as ``make bench`` does first (``make compile``)."""
    log("byte-compiling src")
    run = checked(run_process([sys.executable, "-m", "compileall", "-q", str(REPO / "src")],
                              environment()), "compileall")
    return {"seconds": run.seconds,
            "dont_write": os.environ.get("PYTHONDONTWRITEBYTECODE", "")}  # any value counts


if __name__ == "__main__":
    sys.exit(main())
