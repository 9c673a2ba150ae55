"""The start-up benchmark's report (``bench_startup.py``): the process cases, the targets, where
a fresh and a warm run's time goes, and the end-to-end figures."""
from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING

from harness import (BUSY_SHARE, JPEG_QUALITY, PHOTO_SIZE, OtherLoad, machine_cpu,
                     other_load_fact, report_header, versions)
from startup_cases import Case, ImportReport
from startup_e2e import E2E_BATCH, MALLOC_FIXED, EndToEnd

if TYPE_CHECKING:
    from bench_startup import Settings


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def fmt_mb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:.0f} MB"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def compile_fact(compiled: dict) -> str:
    setting = (f"this environment sets PYTHONDONTWRITEBYTECODE={compiled['dont_write']}, so "
               f"without it every imagezoo module would compile afresh in every process"
               if compiled["dont_write"] else "PYTHONDONTWRITEBYTECODE is not set here")
    return (f"Bytecode: `python -m compileall -q src` first ({fmt_s(compiled['seconds'])}), "
            f"byte-compiled as `make bench` does; {setting}")


def fresh_vs_warm(c: dict[str, Case], phases: list[tuple[str, float]],
                  fresh_rows: list[tuple[str, str, float]], fresh_torch: int) -> str:
    """The paragraph on the fresh and warm runs' paths, and what the fresh one's extra is."""
    prof = {key: seconds for key, _, seconds in fresh_rows}

    def ms(*keys: str) -> str:
        found = [prof[key] for key in keys if key in prof]
        return f"{sum(found) * 1000:.0f} ms" if found else "(not in the profile)"
    warm_session = dict(phases).get("find the cached engine, create the ONNX Runtime session")
    warm_text = (f"{warm_session:.0f} ms in its steps below" if warm_session is not None
                 else "see its steps below")
    return (
        f"The fresh and warm runs take different paths to ONNX Runtime, and neither imports "
        f"PyTorch: the warm one finds the checked engine in the cache and opens its model.onnx; "
        f"the fresh one finds no engine recorded, so it reads the bundled weight file without "
        f"PyTorch (hashed against its published SHA-256, its tensors unpickled by an allow-list "
        f"reader into NumPy arrays), fills the weightless graph of the architecture shipped in "
        f"the package with them and creates an ONNX Runtime session from it; it writes nothing "
        f"to the cache and starts nothing in the background ({fmt_s(c['fresh'].best)}, "
        f"{c['fresh'].best / c['warm'].best:.1f}x the warm run; against the hand-written eager "
        f"script it is {c['fresh'].best / c['baseline'].best:.2f}x). Its extra time over the "
        f"warm run, {fmt_s(c['fresh'].best - c['warm'].best)} at the minimum, is what those "
        f"steps take (in the profile below, with cProfile's own overhead: reading the weight "
        f"file {ms('read_file')}, hashing it {ms('hash')}, `read_arrays` {ms('read_arrays')}, "
        f"`graph_session`, which fills the graph and creates and optimises its session, "
        f"{ms('graph_session')}) beyond what the warm run takes to find the cached engine and "
        f"open its session ({warm_text}); both import onnxruntime and imagezoo.data alike."
        + (f" **But this fresh run imported {fresh_torch} torch modules: see the targets.**"
           if fresh_torch else ""))


def build_report(args, settings: Settings, cases: dict[str, Case], checks: dict, e2e: EndToEnd,
                 phases: list[tuple[str, float]], fresh_rows: list[tuple[str, str, float]],
                 imports: dict[str, ImportReport],
                 load_before: float, other: OtherLoad, round_shares: list[float]) -> str:
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
    lines = report_header(
        "imagezoo start-up benchmark: short commands as whole processes", "bench_startup.py", [
            f"CPU: {machine_cpu()} (os.cpu_count), no GPU",
            other_load_fact(load_before, other, ", including the detached background "
                                                "preparation of case 3b and any time spent "
                                                "waiting for a quiet moment")
            + f"; per round of the process cases: {', '.join(f'{s:.0%}' for s in round_shares)}"
            f"; per end-to-end round: {', '.join(f'{s:.0%}' for s in e2e.other_shares)}",
            versions("torch", "onnxruntime", "PIL", "numpy"),
            compile_fact(checks["compile"]),
            "Every process case ran once untimed first (page cache), then "
            f"{settings.runs} times, in rounds running each case once in a new random order; "
            "min and median of the whole-process wall time (start to reaped); peak RSS of the "
            "untimed run, from GNU time. \"Fresh\" is an empty imagezoo cache, not a cold "
            "disk: the libraries are in the OS page cache like every other case's.",
        ], command_note=(" (quick run: 3 runs per case, 200 photos end to end; figures less "
                         "steady)" if args.quick else ""),
        written_note=" The targets are issue 11's.")
    lines += [
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
    lines.append(f"| 3b | fresh cache, a model folder of one's own (no shipped graph), background "
                 f"preparation on (1 run) | `{bg['shown']}` | {fmt_s(bg['seconds'])} | | "
                 f"{fmt_mb(bg['rss_mb'])} | {bg['note']} |")
    lines += [
        "",
        f"The warm cache was made by `imagezoo engines --prepare --batch-size 1` "
        f"({fmt_s(checks['warmup']['prepare_seconds'])}; the default model's ONNX export and its "
        f"check against eager PyTorch). A first run of the default model does not make it: it "
        f"runs the shipped graph and writes nothing to the cache (case 3). A first run of a "
        f"model with no shipped graph starts the same preparation in the background (case 3b: "
        f"the default model saved once as a model folder, `imagezoo.save_model(imagezoo."
        f"load_model(\"efficientnet_lite0\"), \"mymodel\")`; its peak RSS is that of an "
        f"untimed run with the background preparation off).",
        "",
        f"Case 3 runs in a new empty cache every time, as `make run` on a fresh machine: with "
        f"the background preparation left on (none starts for the default model; the check "
        f"looks for one). `imagezoo --help` is timed as a user's second and later runs: the "
        f"first run in an empty cache renders argparse's text and keeps it in "
        f"`<cache>/.help/` ({fmt_s(checks['help_first'])}, timed once: see its checks); the "
        f"untimed first run did that in the cache every timed run uses, and they print the "
        f"kept copy.",
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
        fresh_vs_warm(c, phases, fresh_rows, imports["fresh"].torch_modules),
        "",
        f"Where a fresh run's time goes: one fresh-cache run of `{c['fresh'].shown}` under "
        f"cProfile (cumulative seconds; the fresh run's `-X importtime`: "
        f"{imports['fresh'].modules} modules, {imports['fresh'].torch_modules} of them torch, "
        f"{imports['fresh'].total_ms:.0f} ms of import time in all, onnxruntime "
        f"{imports['fresh'].cumulative.get('onnxruntime', float('nan')):.0f} ms; `import torch` "
        f"took {imports['baseline'].cumulative.get('torch', float('nan')):.0f} ms in the "
        f"baseline's; {checks['profile']}: the absolute figures grow with other load, the "
        f"shares are what matter):",
        "",
        "| part | s |",
        "|---|---:|",
        *[f"| {label} | {seconds:.3f} |" for _, label, seconds in fresh_rows],
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
    for key, title in (("warm", "warm `imagezoo classify cat.png`"),
                       ("help", "`imagezoo --help` (printing the kept text)")):
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
        f"those faults (its decoding threads keep up to three batches of decoded arrays in "
        f"hand ahead of the engine, so the heap is not handed back between photos: see its "
        f"faults per image above), so the "
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
