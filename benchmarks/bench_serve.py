#!/usr/bin/env python
"""The HTTP server under load, next to in-process classification, in one run.

1. In-process ceiling: the same photos through ``imagezoo.classify`` at the server's batch
   size, decoding in the calling process (``workers=0``: decode, preprocess and forward pass
   in one process, nothing in between; worker processes cost more to start than a round).
2. The server (``imagezoo.serve.serve`` in a subprocess, EfficientNet-Lite0, float32, on the
   engine ``imagezoo.optimize`` builds for ``$IMAGEZOO_BACKEND``, default onnxruntime, the
   same in-process), once with dynamic batching (``max_batch=8``, the default) and once one
   image per forward pass (``max_batch=1``, the server before batching), each driven by a bounded
   closed-loop client on 127.0.0.1 at concurrency 1, 4, 16 and 64: that many connections,
   each sending the next upload when its answer has arrived (keep-alive; after a 503 it waits
   what ``Retry-After`` says, as a well-behaved client does). The real photos in
   ``src/imagezoo/resources`` (three JPEGs and a PNG) are sent in turn. Per level: accepted
   req/s, p50/p95/p99 latency of the accepted requests, how many got 503 and how fast, and
   the server's resident memory (VmRSS sampled every 50 ms). On a shared machine the load of
   other processes comes and goes, so each level alternates rounds of the server and of the
   in-process ceiling (1.): both sides of each ratio see the same moments.
3. Memory: eight 8000x8000 PNGs sent at once (each retried after its 503 until answered),
   while one client keeps sending a normal photo; the server's peak and final resident memory
   and the normal photo's latencies.

    python benchmarks/bench_serve.py            # writes benchmarks/RESULTS-serve.md
    python benchmarks/bench_serve.py --quick    # shorter levels
    IMAGEZOO_BACKEND=torch python benchmarks/bench_serve.py   # eager PyTorch instead

Eager PyTorch runs its forward pass on OpenMP threads, which slow down by an order of
magnitude when other processes take the cores (measured here under load: 2-10 img/s against
60-75 for ONNX Runtime on the same model); ONNX Runtime is also what ``imagezoo serve`` runs
once its engine is in the cache.
"""
from __future__ import annotations

import asyncio
import io
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

import imagezoo
from imagezoo.serve.limits import (MAX_PIXELS_IN_FLIGHT, MAX_QUEUE, MAX_WAIT_MS, REQUEST_TIMEOUT,
                                   RETRY_AFTER)

# What every benchmark shares (this script's folder is on sys.path when it runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (BENCHMARKS, OtherLoad, bench_arguments, log, machine_cpu,  # noqa: E402
                     report_header, versions, write_report)

DEFAULT_OUT = BENCHMARKS / "RESULTS-serve.md"
RESOURCES = Path(imagezoo.__file__).parent / "resources"
PHOTOS = [RESOURCES / name for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg", "cat.png")]
MODEL = "efficientnet_lite0"
BACKEND = os.environ.get("IMAGEZOO_BACKEND") or "onnxruntime"
BATCH = 8
CONCURRENCY = (1, 4, 16, 64)
BIG_SIDE, BIG_COUNT = 8000, 8
BOUNDARY = "imagezoo-bench"

SERVER = textwrap.dedent("""
    import sys
    import imagezoo
    from imagezoo.serve import listening_socket, serve
    model = imagezoo.load_model(sys.argv[1])
    if sys.argv[3] != "torch":
        model = imagezoo.optimize(model, precision="exact", backend=sys.argv[3],
                                  batch_size=int(sys.argv[2]))
    sock = listening_socket("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    serve(model, sock=sock, max_batch=int(sys.argv[2]), access_log=False, log_level="warning")
""")


# ------------------------------------------------------------------------------ the client

def request_bytes(content: bytes, name: str) -> bytes:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() \
        + content + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, request: bytes) -> tuple[int, dict[bytes, bytes]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            self.writer.write(request)
            await self.writer.drain()
            status = int((await self.reader.readline()).split()[1])
            headers = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.partition(b":")
                headers[key.strip().lower()] = value.strip()
            await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        except (ConnectionError, IndexError, ValueError, asyncio.IncompleteReadError):
            self.close()
            raise ConnectionError("the server closed the connection") from None
        if headers.get(b"connection") == b"close":
            self.close()
        return status, headers

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Outcome:
    started: float
    seconds: float
    status: int


async def closed_loop(port: int, requests: list[bytes], concurrency: int, warmup: float,
                      seconds: float) -> tuple[list[Outcome], float]:
    """``concurrency`` clients, each sending its next request when its answer has arrived;
    the outcomes of the requests started after ``warmup`` and the measured window."""
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds

    async def client(index: int) -> None:
        connection = Connection(port)
        turn = index
        while time.perf_counter() < end:
            request = requests[turn % len(requests)]
            turn += 1
            sent = time.perf_counter()
            try:
                status, headers = await connection.post(request)
            except ConnectionError:
                status, headers = 0, {}
            answered = time.perf_counter()
            if sent >= measure_from and answered <= end:
                outcomes.append(Outcome(sent, answered - sent, status))
            if status == 503:
                await asyncio.sleep(float(headers.get(b"retry-after", b"1")))
        connection.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return outcomes, seconds


# ------------------------------------------------------------------------------ the server

def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, max_batch: int):
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, MODEL, str(max_batch),
                                         BACKEND],
                                        stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline())
        self.pid = self.process.pid
        self.max_batch = max_batch

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


class Sampler:
    """The server's VmRSS every 50 ms while running."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[float] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append(rss_mb(self.pid))
            await asyncio.sleep(0.05)

    def stop(self) -> list[float]:
        self.task.cancel()
        self.samples.append(rss_mb(self.pid))
        return self.samples


async def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            if (await reader.read()).startswith(b"HTTP/1.1 200"):
                writer.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------ measurements

def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


@dataclass
class Level:
    server: str
    concurrency: int
    accepted_per_second: float
    p50: float
    p95: float
    p99: float
    refused: int
    refused_p99: float
    failed: int
    rss_peak: float
    rss_mean: float
    other_share: float
    ceiling: float            # in-process img/s, measured in rounds alternating with these


async def drive(server: Server, label: str, requests: list[bytes], concurrency: int,
                rounds: int, warmup: float, seconds: float, model, paths: list[Path]) -> Level:
    """``rounds`` of (in-process classification of ``paths``, then the server at
    ``concurrency`` for ``warmup`` + ``seconds``)."""
    samples: list[float] = []
    outcomes: list[Outcome] = []
    other = OtherLoad(ours=[server.pid])   # CPU of processes other than this one and the server
    in_process_seconds = 0.0
    for _ in range(rounds):
        in_process_seconds += in_process_round(model, paths)
        sampler = Sampler(server.pid)
        measured, _ = await closed_loop(server.port, requests, concurrency, warmup, seconds)
        outcomes += measured
        samples += sampler.stop()
        await asyncio.sleep(1.2)   # the 503'd clients' retries end before the next round
    window = rounds * seconds
    accepted = [o.seconds * 1000 for o in outcomes if o.status == 200]
    refused = [o.seconds * 1000 for o in outcomes if o.status == 503]
    failed = [o for o in outcomes if o.status not in (200, 503)]
    return Level(label, concurrency, len(accepted) / window, percentile(accepted, 0.5),
                 percentile(accepted, 0.95), percentile(accepted, 0.99), len(refused),
                 percentile(refused, 0.99), len(failed), max(samples), statistics.mean(samples),
                 other.share(), rounds * len(paths) / in_process_seconds)


def in_process_round(model, paths: list[Path]) -> float:
    """Seconds ``imagezoo.classify`` takes for ``paths`` at the server's batch size."""
    started = time.perf_counter()
    imagezoo.classify(model, [str(p) for p in paths], batch_size=BATCH, workers=0)
    return time.perf_counter() - started


@dataclass
class MemoryRun:
    rss_before: float
    rss_peak: float
    rss_after: float
    big_seconds: list[float] = field(default_factory=list)
    big_refusals: int = 0
    photo_ms: list[float] = field(default_factory=list)
    photo_refusals: int = 0


def big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (BIG_SIDE, BIG_SIDE), (40, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


async def memory_run(server: Server, big: bytes, photo: bytes) -> MemoryRun:
    await asyncio.sleep(2)
    run = MemoryRun(rss_mb(server.pid), 0.0, 0.0)
    sampler = Sampler(server.pid)
    big_request = request_bytes(big, "big.png")
    photo_request = request_bytes(photo, "astronaut.jpg")
    remaining = BIG_COUNT

    async def send_big() -> None:
        nonlocal remaining
        connection = Connection(server.port)
        started = time.perf_counter()
        while True:
            status, headers = await connection.post(big_request)
            if status == 200:
                break
            assert status == 503, status
            run.big_refusals += 1
            await asyncio.sleep(float(headers.get(b"retry-after", b"1")))
        run.big_seconds.append(time.perf_counter() - started)
        remaining -= 1
        connection.close()

    async def send_photos() -> None:
        connection = Connection(server.port)
        while remaining:
            sent = time.perf_counter()
            status, _ = await connection.post(photo_request)
            if status == 200:
                run.photo_ms.append((time.perf_counter() - sent) * 1000)
            else:
                run.photo_refusals += 1
            await asyncio.sleep(0.1)
        connection.close()

    await asyncio.gather(send_photos(), *(send_big() for _ in range(BIG_COUNT)))
    samples = sampler.stop()
    await asyncio.sleep(1)
    run.rss_peak = max(samples)
    run.rss_after = rss_mb(server.pid)
    return run


# ------------------------------------------------------------------------------ report

def report(levels: list[Level],
           memory: MemoryRun, exit_codes: list[int], photo_bytes: int, wall: float) -> str:
    batched = {level.concurrency: level for level in levels if level.server == "batched"}
    single = {level.concurrency: level for level in levels if level.server == "one at a time"}
    lines = report_header("imagezoo serve benchmark: the server under load", "bench_serve.py", [
        f"CPU: {machine_cpu()} (shared with the load generator), no GPU",
        versions("torch", python=False),
        f"Model: {MODEL}, float32, backend {BACKEND} (`imagezoo.optimize(precision="
        f"'exact', backend='{BACKEND}')`, the same in-process and in the server)",
        f"Photos: {', '.join(p.name for p in PHOTOS)} sent in turn (mean "
        f"{photo_bytes / 1024:.0f} KiB)",
        f"Server defaults: max_queue {MAX_QUEUE} images, {MAX_PIXELS_IN_FLIGHT / 1e6:g} "
        f"megapixels in flight, max_wait {MAX_WAIT_MS:g} ms, timeout {REQUEST_TIMEOUT:g} s; "
        f"clients wait Retry-After ({RETRY_AFTER} s) after a 503",
        f"Server exit codes on SIGTERM: {', '.join(map(str, exit_codes))}",
    ])
    lines += [
        "",
        "## Throughput and latency",
        "",
        f"In-process: `imagezoo.classify` at batch {BATCH} (workers=0), in rounds "
        f"alternating with the server's at each level; \"other CPU\" is what processes other "
        f"than the benchmark and the server took of the machine meanwhile.",
        "",
        "| server | concurrency | accepted req/s | in-process img/s | vs in-process | p50 ms "
        "| p95 ms | p99 ms | p99/p50 | 503s | 503 p99 ms | other errors | RSS peak MB "
        "| RSS mean MB | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        lines.append(
            f"| {level.server} | {level.concurrency} | {level.accepted_per_second:.1f} "
            f"| {level.ceiling:.1f} | {level.accepted_per_second / level.ceiling:.2f} "
            f"| {level.p50:.0f} | {level.p95:.0f} "
            f"| {level.p99:.0f} | {level.p99 / level.p50:.2f} | {level.refused} "
            f"| {level.refused_p99:.1f} | {level.failed} | {level.rss_peak:.0f} "
            f"| {level.rss_mean:.0f} | {level.other_share:.0%} |")
    at16, at64 = batched.get(16), batched.get(64)
    lines += ["", "Batched against one at a time (accepted req/s): " + ", ".join(
        f"concurrency {c}: {batched[c].accepted_per_second / single[c].accepted_per_second:.2f}x"
        for c in CONCURRENCY if c in batched and c in single) + "."]
    lines += ["", "## Memory: eight 8000x8000 PNGs at once", "",
              f"Eight clients each send a {BIG_SIDE}x{BIG_SIDE} PNG "
              f"({len(big_png_cache) / 1024:.0f} KiB) at the same moment, and send it again "
              f"after each 503 until it is answered; meanwhile one client sends "
              f"{PHOTOS[0].name} every 100 ms.", "",
              "| | |", "|---|---:|",
              f"| server RSS before | {memory.rss_before:.0f} MB |",
              f"| server RSS peak (sampled every 50 ms) | {memory.rss_peak:.0f} MB |",
              f"| server RSS 1 s after the last answer | {memory.rss_after:.0f} MB |",
              f"| PNGs answered / 503s they got first | {len(memory.big_seconds)} / "
              f"{memory.big_refusals} |",
              f"| last PNG answered after | {max(memory.big_seconds):.1f} s |",
              f"| normal photo: answered / p50 / max latency | {len(memory.photo_ms)} / "
              f"{percentile(memory.photo_ms, 0.5):.0f} ms / {max(memory.photo_ms):.0f} ms |",
              f"| normal photo: not answered 200 | {memory.photo_refusals} |"]
    lines += ["", "## Targets", "",
              "| target | measured | met |", "|---|---|---|"]
    if at16:
        ratio = at16.accepted_per_second / at16.ceiling
        lines.append(f"| concurrency 16 >= 0.8 of in-process | {ratio:.2f} | "
                     f"{'yes' if ratio >= 0.8 else 'no'} |")
    if at64:
        spread = at64.p99 / at64.p50
        lines.append(f"| concurrency 64: accepted p99 <= 3x p50 | {spread:.2f}x "
                     f"({at64.p50:.0f} / {at64.p99:.0f} ms) | {'yes' if spread <= 3 else 'no'} |")
        # "At once": a refusal waits for nothing, so it takes a small part of what an
        # accepted request waits (a quarter of its median, at most).
        lines.append(f"| concurrency 64: the rest 503 at once (p99 of the 503s under a quarter "
                     f"of the accepted p50) | {at64.refused} refused, p99 "
                     f"{at64.refused_p99:.1f} ms | "
                     f"{'yes' if at64.refused and at64.refused_p99 < at64.p50 / 4 else 'no'} |")
    lines.append(f"| eight 8000x8000 PNGs: RSS < 1.5 GB | peak {memory.rss_peak:.0f} MB | "
                 f"{'yes' if memory.rss_peak < 1536 else 'no'} |")
    worst = max(memory.photo_ms)
    lines.append(f"| meanwhile a normal photo within 1 s | max {worst:.0f} ms | "
                 f"{'yes' if worst <= 1000 and not memory.photo_refusals else 'no'} |")
    lines += ["", f"Total benchmark time: {wall:.0f} s."]
    return "\n".join(lines) + "\n"


big_png_cache = b""


async def run(args) -> str:
    global big_png_cache
    rounds, warmup, seconds = (2, 1.0, 3.0) if args.quick else (3, 2.0, 5.0)
    began = time.perf_counter()
    photos = [path.read_bytes() for path in PHOTOS]
    requests = [request_bytes(content, path.name) for content, path in zip(photos, PHOTOS)]
    model = imagezoo.load_model(MODEL)
    if BACKEND != "torch":
        model = imagezoo.optimize(model, precision="exact", backend=BACKEND, batch_size=BATCH)
    paths = PHOTOS * (8 if args.quick else 12)
    in_process_round(model, paths)   # warm-up

    levels: list[Level] = []
    exit_codes = []
    for label, max_batch in (("batched", BATCH), ("one at a time", 1)):
        server = Server(max_batch)
        await wait_ready(server.port)
        log(f"{label} server (max_batch {max_batch}), warming up")
        await closed_loop(server.port, requests, 8, 0, 2)
        for concurrency in CONCURRENCY:
            log(f"  concurrency {concurrency}")
            levels.append(await drive(server, label, requests, concurrency, rounds, warmup,
                                      seconds, model, paths))
        exit_codes.append(server.stop())

    log("memory: eight 8000x8000 PNGs")
    big_png_cache = big_png()
    server = Server(BATCH)
    await wait_ready(server.port)
    await closed_loop(server.port, requests, 4, 0, 1)
    memory = await memory_run(server, big_png_cache, photos[0])
    exit_codes.append(server.stop())

    return report(levels, memory, exit_codes,
                  statistics.mean(map(len, photos)), time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    args = bench_arguments(__doc__, "2 rounds of 3 s per level instead of 3 of 5 s",
                           DEFAULT_OUT, argv)
    write_report(asyncio.run(run(args)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
