"""The engine benchmark's report (``bench_engine.py``): the summary against the peers, every
contender per case, the accuracy of the fast precisions, the end-to-end rate and the targets."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from imagezoo.data.batches import INFERENCE_BATCH, default_workers
from imagezoo.engine import FAST_PROBABILITY_SHIFT

from engine_contenders import Case, Contender
from harness import (JPEG_QUALITY, PHOTO_SIZE, OtherLoad, machine_cpu, other_load_fact,
                     report_header, versions)

if TYPE_CHECKING:
    from bench_engine import EndToEndRow, Settings

# (bench_engine.py imports these from here: the report cannot import the script.)
ACCURACY_MODEL = "efficientnet_lite0"   # the only model with real weights, and the default
E2E_MODEL = "efficientnet_lite0"        # what `imagezoo classify` runs without --model
BUSY_REPORT_SHARE = 0.25                # above this the report calls the case "busy"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def header(args, settings: Settings, load_before: float, other: OtherLoad, busy: list[str]) -> str:
    flags = cpu_flags()
    flag_text = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in
                          ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"))
    lines = report_header("imagezoo inference engine benchmark", "bench_engine.py", [
        f"CPU: {machine_cpu()} (os.cpu_count), no GPU used; flags: {flag_text}",
        versions("torch", "onnxruntime", "openvino", "onnx", "numpy",
                 torch_threads=f"{torch.get_num_threads()} intra-op threads"),
        other_load_fact(load_before, other, "; per case below"),
    ], command_note=(" (quick smoke run: batch 1 and 8, one model, few calls; figures not "
                     "representative)" if args.quick else ""))
    if busy:
        lines += ["", f"**Warning:** other processes took more than {BUSY_REPORT_SHARE:.0%} of the "
                      f"CPU while these were timed: {', '.join(busy)}. Their figures are "
                      f"pessimistic and noisier (all contenders of a case alternate, so the "
                      f"ratios suffer less than the rates)."]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def burst_text(case: Case) -> str:
    counts = sorted(set(case.bursts.values()))
    if counts == [1]:
        return ", one call per contender per round"
    return (f", each contender called {counts[0]} to {counts[-1]} times in a row per round "
            f"(calls shorter than a second, in bursts of about 0.1 s)")


def case_table(case: Case) -> str:
    eager = case.rate(case.eager)
    best_fp32, best_any = case.best_peer(True), case.best_peer(False)
    lines = [
        f"### {case.model}, batch {case.batch}",
        "",
        f"Timed in {case.rounds} rounds after warm-up, in a new random order each round"
        + burst_text(case) + f"; other processes took "
        f"{case.other_share:.0%} of the CPU meanwhile ({case.build_share:.0%} while the engines "
        f"were built and auto tuned). Best fp32 peer: "
        f"{best_fp32.name if best_fp32 else '-'}; best peer at any precision: "
        f"{best_any.name if best_any else '-'}.",
        "",
        "| contender | asked | runs as | img/s | vs eager | vs best peer (class) | spread "
        "| build s | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in case.contenders:
        rate = case.rate(c)
        best = best_fp32 if c.exact_class else best_any
        best_rate = case.rate(best) if best else None
        runs_as = f"{c.backend} {c.numerics}" if c.side == "imagezoo" and c.backend else c.numerics
        note = c.note
        if c.same_as:
            note = "; ".join(filter(None, [f"same engine as {c.same_as}, its figure", note]))
        vs_best = f"{rate / best_rate:.2f} ({'fp32' if c.exact_class else 'any'})" if rate and best_rate else "-"
        lines.append(
            f"| {'**' + c.name + '**' if 'auto' in c.name else c.name} | {c.requested} | {runs_as} "
            f"| {fmt(rate)} | {fmt(rate / eager if rate and eager else None, 2)} | {vs_best} "
            f"| {'-' if case.spread(c) is None else f'{case.spread(c):.0%}'} "
            f"| {fmt(c.build_seconds if c.call is not None or c.build_seconds else None)} "
            f"| {note.replace('|', '/')} |")
    lines += [""] + [f"- {note}" for note in case.auto_notes]
    if case.export_seconds > 0.5:
        lines.append(f"- ONNX export (once per model, cached): {case.export_seconds:.1f} s")
    return "\n".join(lines)


def summary_table(cases: list[Case]) -> str:
    lines = [
        "## Summary: imagezoo auto against the peers",
        "",
        "| model | batch | eager img/s | best fp32 peer | auto exact | exact / best fp32 peer "
        "| best peer (any) | auto fast | fast / best peer | other CPU |",
        "|---|---:|---:|---|---|---:|---|---|---:|---:|",
    ]
    for case in cases:
        exact, fast = case.find("imagezoo auto exact"), case.find("imagezoo auto fast")
        best_fp32, best_any = case.best_peer(True), case.best_peer(False)

        def cell(c):
            return f"{fmt(case.rate(c))} ({c.backend} {c.numerics})" if c and case.rate(c) else "-"

        def peer_cell(c):
            return f"{fmt(case.rate(c))} ({c.name})" if c else "-"
        lines.append(
            f"| {case.model} | {case.batch} | {fmt(case.rate(case.eager))} | {peer_cell(best_fp32)} "
            f"| {cell(exact)} | {fmt(ratio(case, exact, best_fp32), 2)} | {peer_cell(best_any)} "
            f"| {cell(fast)} | {fmt(ratio(case, fast, best_any), 2)} | {case.other_share:.0%} |")
    return "\n".join(lines)


def ratio(case: Case, a: Contender | None, b: Contender | None) -> float | None:
    if a is None or b is None or not case.rate(a) or not case.rate(b):
        return None
    return case.rate(a) / case.rate(b)


def accuracy_section(accuracy: dict) -> str:
    photos, rows = accuracy["photos"], accuracy["rows"]
    ties = sum(p["tie"] for p in photos)
    lines = [
        f"## Accuracy on real photos ({ACCURACY_MODEL}, real weights)",
        "",
        f"{len(photos)} inputs: the card's four sample photos (the fast engines' calibration and "
        f"guard set) and {len(photos) // 2 - 4} photos from `skimage.data` (grey ones as RGB), "
        f"each also mirrored; one image per call, engines built at batch {accuracy['batch']}. "
        f"Reference: eager float32. {ties} inputs are ties (float32 top-2 less than "
        f"{FAST_PROBABILITY_SHIFT} apart). \"changed\" counts top-1 changes on the other inputs; "
        f"\"tie swaps\" those on ties. \"max shift\" is the largest change of float32's top-1 "
        f"probability.",
        "",
        "| contender | runs as | same top-1 | changed | tie swaps | max shift | on | max logit diff |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.contender} | {row.numerics} | {row.agree}/{len(photos)} "
                     f"| {row.changed_decided} | {row.changed_ties} | {row.max_shift:.3f} "
                     f"| {row.max_shift_input} | {row.max_logit_diff:.2g} |")
    fast_rows = [r for r in rows if r.numerics in ("bf16", "int8")]
    lines += [
        "",
        "Per input (fast contenders only): `=` same top-1, else the new top-1; then the shift "
        "of float32's top-1 probability.",
        "",
        "| input | float32 top-1 | p | margin | " + " | ".join(r.contender for r in fast_rows) + " |",
        "|---|---|---:|---:|" + "---|" * len(fast_rows),
    ]
    for index, photo in enumerate(photos):
        cells = []
        for row in fast_rows:
            same, shift, new_top = row.per_input[index]
            cells.append(("=" if same else f"**{accuracy['labels'][new_top]}**") + f" {shift:.3f}")
        tie = " (tie)" if photo["tie"] else ""
        lines.append(f"| {photo['input']} | {photo['top1']} | {photo['p']:.3f} "
                     f"| {photo['margin']:.3f}{tie} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def end_to_end_section(rows: list[EndToEndRow], settings: Settings, photo_bytes: float,
                       other_share: float) -> str:
    lines = [
        "## End to end: `imagezoo classify` on a folder of JPEGs",
        "",
        f"{settings.image_count} generated {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs (quality "
        f"{JPEG_QUALITY}, mean {photo_bytes / 1024:.0f} KiB) through `imagezoo classify FOLDER "
        f"--json --backend auto --precision P`"
        + ("" if settings.e2e_batch == INFERENCE_BATCH else f" `--batch-size {settings.e2e_batch}`")
        + f" ({E2E_MODEL}, the default model) in a subprocess; e2e img/s = images / wall time "
        f"from start to exit, so interpreter start-up, imports, model load and engine load from "
        f"the cache are included. `$IMAGEZOO_CACHE` is a fresh folder warmed by one untimed run "
        f"per precision, so the tuning is not timed; the timed runs alternate exact and fast, "
        f"{settings.e2e_runs} each, fastest kept. Model-only: the rate of the engine the command chose "
        f"(at its batch size, {settings.e2e_batch}) at batch {settings.model_only_batch} in the "
        f"model-only table, the machine's best for that engine. To separate start-up from throughput, "
        f"the same command also ran on a folder holding one of the images (its own engine at "
        f"batch 1, also tuned beforehand): \"once started\" = (images - 1) / (full-folder "
        f"time - one-image time). Other processes took {other_share:.0%} of the CPU during the "
        f"timed runs.",
        "",
        "| precision | engine chosen | e2e img/s | model-only img/s | e2e / model-only "
        "| one-image run s | once started img/s | once started / model-only "
        "| first run s (tuning) | timed runs s | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        share = row.rate / row.model_only if row.model_only else None
        steady = row.steady_rate
        steady_share = steady / row.model_only if steady and row.model_only else None
        lines.append(f"| {row.precision} | {row.chosen} | {row.rate:.1f} | {fmt(row.model_only)} "
                     f"| {fmt(share, 2)} | {fmt(min(row.one_image_seconds) if row.one_image_seconds else None, 2)} "
                     f"| {fmt(steady)} | {fmt(steady_share, 2)} | {row.first_run_seconds:.1f} "
                     f"| {', '.join(f'{s:.2f}' for s in row.seconds)} | {row.note} |")
    if len(rows) == 2:
        same = sum(a == b for a, b in zip(rows[0].top1, rows[1].top1))
        lines += ["", f"exact and fast gave the same top-1 on {same}/{rows[0].images} of these "
                      f"generated (noise) images; fast also decodes the JPEGs in libjpeg's "
                      f"reduced-scale draft mode. Decoding runs in "
                      f"{default_workers(rows[0].images)} DataLoader worker(s), `classify`'s "
                      f"default here."]
    return "\n".join(lines)


def targets_section(cases: list[Case], accuracy: dict | None, e2e: list[EndToEndRow]) -> str:
    lines = ["## Targets", ""]
    verdicts = []

    def check(label: str, values: list[tuple[str, float | None]], target: float) -> None:
        known = [(k, v) for k, v in values if v is not None]
        met = bool(known) and len(known) == len(values) and all(v >= target for _, v in known)
        worst = min((v for _, v in known), default=None)
        detail = ", ".join(f"{k} {fmt(v, 2)}" for k, v in values)
        lines.append(f"- {label} (target >= {target:g}): {detail}. "
                     f"**{'MET' if met else 'NOT MET'}**" + (f" (lowest {worst:.2f})" if worst else ""))
        verdicts.append((label, met))

    check("Exact: imagezoo auto exact / best fp32 peer",
          [(f"{c.model} b{c.batch}", ratio(c, c.find("imagezoo auto exact"), c.best_peer(True)))
           for c in cases], 1.1)
    check("Fast: imagezoo auto fast / best peer at any precision",
          [(f"{c.model} b{c.batch}", ratio(c, c.find("imagezoo auto fast"), c.best_peer(False)))
           for c in cases], 1.2)
    if accuracy is not None:
        count = len(accuracy["photos"])
        ties = sum(p["tie"] for p in accuracy["photos"])
        parts, strict, decided = [], True, True
        for row in accuracy["rows"]:
            if not row.contender.startswith("imagezoo") or not row.contender.endswith(" fast"):
                continue
            strict &= row.changed_decided == 0 and row.changed_ties == 0
            decided &= row.changed_decided == 0
            parts.append(f"{row.contender} ({row.numerics}) {row.agree}/{count} same, "
                         f"{row.changed_decided} changed + {row.changed_ties} tie swap(s), "
                         f"max shift {row.max_shift:.3f}")
        verdict = ("MET" if strict else "MET only with ties excused" if decided else "NOT MET")
        lines.append(f"- Fast: top-1 unchanged on every real photo ({count} inputs, {ties} of them "
                     f"ties), for every imagezoo fast engine (auto may pick any of them at another "
                     f"batch size): {'; '.join(parts)}. **{verdict}**"
                     + ("" if strict else " (strictly: no; the accuracy table shows which inputs)"))
        verdicts.append(("fast top-1 unchanged on real photos"
                         + ("" if strict or not decided else " (only with ties excused)"), strict))
    if e2e:
        check("End to end / model-only of the chosen engine",
              [(f"{row.precision} ({row.chosen})",
                row.rate / row.model_only if row.model_only else None) for row in e2e], 0.8)
    met = [label for label, ok in verdicts if ok]
    missed = [label for label, ok in verdicts if not ok]
    lines += ["", f"Met: {', '.join(met) or 'none'}. Not met: {', '.join(missed) or 'none'}."]
    return "\n".join(lines)


MODEL_ONLY_INTRO = (
    "## Model only, every contender\n\n"
    "Random input, the same tensor for every contender (peers get its numpy view). img/s "
    "from each contender's fastest call; spread = median call / fastest - 1; \"vs best "
    "peer\" compares exact engines and fp32 peers with the best fp32 peer, and fast "
    "engines and int8/bf16 peers with the best peer at any precision. Build s: wall time "
    "of `optimize` (auto: including its tuning) or of the peer's session/compile (int8: "
    "including quantisation); the first case of a model also exports and quantises into "
    "the cache, later cases reuse those files. The ResNets run with random weights "
    "(speed does not depend on the values) whose batch-norm statistics were set from the "
    "sample photos (with fresh statistics ResNet-152's logits reach 1e7 and no float32 "
    "engine can match eager PyTorch within imagezoo's 1e-4), so whether their fast engines pass imagezoo's "
    "guard (same top-1 and top-1 probability within 0.05 on the sample photos) says "
    "little about real weights; a fast engine that fell back runs float32 and is compared "
    "as asked, with the best peer at any precision.")


def full_report(args, settings: Settings, cases: list[Case], accuracy: dict | None,
                e2e: list[EndToEndRow], photo_bytes: float, e2e_share: float,
                load_before: float, other: OtherLoad, wall: float) -> str:
    """The whole RESULTS-engine.md."""
    busy = [f"{c.model} batch {c.batch}" for c in cases if c.other_share > BUSY_REPORT_SHARE]
    if e2e_share > BUSY_REPORT_SHARE:
        busy.append("end to end")
    return "\n\n".join(
        [header(args, settings, load_before, other, busy), summary_table(cases), MODEL_ONLY_INTRO]
        + [case_table(case) for case in cases]
        + ([accuracy_section(accuracy)] if accuracy else [])
        + [end_to_end_section(e2e, settings, photo_bytes, e2e_share),
           targets_section(cases, accuracy, e2e),
           f"Total benchmark time: {wall:.0f} s."]) + "\n"
