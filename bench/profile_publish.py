"""Where the server's time goes on the message path: a sampled profile under fan-out, saved and summarised.

    python bench/profile_publish.py            # about 1.5 minutes
    python bench/profile_publish.py --quick    # short scenarios, 20 subscribers, for CI
    python bench/profile_publish.py --target d # profile the Redis-broker variant instead

Two scenarios, driven as in bench/fanout.py: bursts of 10 publishes into a channel of 1,000
subscribers (the fan-out dominates), and one publish per tick into a channel of one subscriber
(the per-publish work dominates: parsing, spans, metrics, the ack).

1. Without a profiler, the server CPU per publish (from the OS) for instrumented_server with
   telemetry off (b), fully on (c, every trace kept) and with 1% of traces kept: the difference
   is what telemetry costs per publish. Per thread too (``/proc/<pid>/task``): the event loop's
   thread, and the others together (the span and log export threads), with the voluntary
   context switches per publish of each: a thread that waits for the GIL sleeps on it, so GIL
   waits show up as more voluntary switches than without telemetry.
2. With py-spy attached from outside (every thread; waiting frames such as epoll and condition
   waits left out), --rounds recordings per scenario, saved as raw stacks (``--out``, default
   ``.cache/bench/``). The tables give each area's and function's share of self time as the median
   over the recordings, with the range: py-spy samples wall time of runnable threads, and on a
   shared 2-core machine a thread preempted in one place for a few ms skews a single recording.
   A C call such as a socket send counts in the Python function that made it. Without py-spy,
   the server runs under cProfile instead (main thread only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import re
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import harness
from fanout import measure
from harness import ClientPool, Publisher, Workdir, log

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

# Areas of code, by the file a sampled function lives in (first match wins).
AREAS = (
    ("send/write (asyncio transports: the send system calls)", ("/asyncio/selector_events.py",)),
    ("asyncio event loop", ("/asyncio/",)),
    ("websockets (frames, protocol)", ("/websockets/",)),
    ("hub: fan-out and flush", ("/instrumented_server/hub.py",)),
    ("protocol: parse and encode", ("/instrumented_server/protocol.py",)),
    ("server glue, broker, other server code", ("/instrumented_server/",)),
    ("OTLP export (encoding, HTTP)", ("/opentelemetry/exporter/", "/opentelemetry/proto/", "/google/protobuf/",
                                     "/urllib3/", "/requests/", "/http/client.py", "/ssl.py", "/socket.py")),
    ("exporter hooks", (f"{harness.REPO}/exporter/",)),
    ("prometheus_client", ("/prometheus_client/",)),
    ("OpenTelemetry SDK (spans, context)", ("/opentelemetry/",)),
    ("redis client", ("/redis/",)),
    ("json", ("/json/",)),
    ("threading, queues", ("/threading.py", "/queue.py")),
)
# Leaf frames that wait rather than run: py-spy does not always see these threads as idle.
IDLE = (("select", "/selectors.py"), ("wait", "/threading.py"), ("_wait_for_tstate_lock", "/threading.py"))


def thread_times(pid: int) -> dict[str, tuple[float, int]]:
    """CPU seconds and voluntary context switches of each thread of ``pid``, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            switches = next(int(line.split()[1]) for line in (task / "status").read_text().splitlines()
                            if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration, ValueError):
            continue  # the thread ended meanwhile
        threads[task.name] = ((int(fields[11]) + int(fields[12])) / ticks, switches)
    return threads


def per_thread(pid: int, before: dict, after: dict, us_per_publish: float) -> tuple[float, float, float, float]:
    """(event loop thread µs, other threads µs, loop switches, other switches) per publish.

    The snapshots also span the scenario's warm-up, so publishes are counted from the CPU
    they took (``us_per_publish``, measured over the scenario's own window)."""
    main = [0.0, 0.0]
    other = [0.0, 0.0]
    for tid, (cpu, switches) in after.items():
        cpu0, switches0 = before.get(tid, (0.0, 0))
        bucket = main if tid == str(pid) else other
        bucket[0] += cpu - cpu0
        bucket[1] += switches - switches0
    publishes = max(1e6 * (main[0] + other[0]) / max(us_per_publish, 1e-9), 1e-9)
    return 1e6 * main[0] / publishes, 1e6 * other[0] / publishes, main[1] / publishes, other[1] / publishes


def area(file: str) -> str:
    for name, prefixes in AREAS:
        if any(p in file for p in prefixes):
            return name
    return "other"


def idle(func: str, file: str) -> bool:
    name = func.rpartition(".")[2]
    return any(name == f and file.endswith(suffix) for f, suffix in IDLE)


def short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", str(harness.REPO) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


@dataclass
class Summary:
    samples: int  # samples of running code (waiting leaves left out)
    idle: int  # samples dropped as waiting
    by_area: Counter
    by_function: Counter


def summarise_raw(path: Path) -> Summary:
    """py-spy's raw format: one line per distinct stack, 'frame;frame;... count', root first."""
    by_area: Counter = Counter()
    by_function: Counter = Counter()
    samples = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = FRAME.match(stack.split(";")[-1])
        func, file = (leaf["func"], leaf["file"]) if leaf else (stack.split(";")[-1], "?")
        if idle(func, file):
            waiting += n
            continue
        samples += n
        by_area[area(file)] += n
        by_function[f"{func} ({short(file)})"] += n
    return Summary(samples, waiting, by_area, by_function)


def summarise_cprofile(path: Path) -> Summary:
    stats = pstats.Stats(str(path))
    by_area: Counter = Counter()
    by_function: Counter = Counter()
    waiting = 0
    for (file, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        micro = int(tottime * 1e6)
        if "select.epoll" in func:  # the event loop waiting for I/O
            waiting += micro
            continue
        by_area[area(file)] += micro
        by_function[f"{func} ({short(file)})"] += micro
    return Summary(sum(by_function.values()), waiting, by_area, by_function)


async def record_rounds(pid: int, rounds: int, seconds: float, stem: Path) -> list[Path]:
    """``rounds`` py-spy recordings back to back; the raw stack files."""
    paths = []
    for i in range(rounds):
        raw = stem.with_name(f"{stem.name}-{i + 1}.raw")
        spy = await asyncio.create_subprocess_exec(
            harness.which("py-spy") or "py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", "250", "--format", "raw", "--full-filenames", "--output", str(raw),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await spy.communicate()
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
        paths.append(raw)
    return paths


async def drive(work: Workdir, target: harness.Target, scenarios, seconds: float, rounds: int, out: Path,
                use_py_spy: bool, workers: int, sizes: dict[str, int], client: str = "auto"
                ) -> dict[str, tuple[list[Summary], Any]]:
    """Each scenario driven for ``seconds`` (recorded by py-spy when ``use_py_spy``): its
    summaries, one per recording, and the fan-out figures measured meanwhile."""
    results: dict[str, tuple[list[Summary], Any]] = {}
    async with ClientPool(work, workers, client) as pool:
        opened = await pool.open(target, sizes)
        if opened["failed"]:
            raise RuntimeError(f"subscribers refused: {opened['failed']}")
        publisher = await Publisher().connect(target)
        for name, channel, size, burst in scenarios:
            recording = None
            if use_py_spy:
                recording = asyncio.ensure_future(
                    record_rounds(target.process.pid, rounds, seconds / rounds, out / f"profile-{target.key}-{name}"))
                await asyncio.sleep(0.3)  # attached before the traffic starts
            # Traffic for as long as the recordings last (each py-spy attach takes a moment).
            before = thread_times(target.process.pid)
            cell = await measure(target, pool, publisher, channel, size, burst,
                                 seconds + 0.6 * rounds if use_py_spy else seconds)
            after = thread_times(target.process.pid)
            cell.threads = per_thread(target.process.pid, before, after, cell.server_us * cell.size)
            log(f"[{target.key}] {name}: {cell.server_us:.2f} µs server CPU per delivery, {cell.rate:.0f} deliveries/s")
            summaries = [summarise_raw(raw) for raw in await recording] if recording is not None else []
            results[name] = (summaries, cell)
        await publisher.close()
    return results


def median_shares(summaries: list[Summary], attribute: str) -> list[tuple[str, float, float, float]]:
    """(name, median %, min %, max %) over the rounds, largest median first."""
    names = set()
    for summary in summaries:
        names |= set(getattr(summary, attribute))
    rows = []
    for name in names:
        shares = sorted(100 * getattr(s, attribute)[name] / max(1, s.samples) for s in summaries)
        rows.append((name, statistics.median(shares), shares[0], shares[-1]))
    return sorted(rows, key=lambda row: -row[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short scenarios, 20 subscribers (CI smoke run)")
    parser.add_argument("--target", default="c", choices="bcd", help="which instrumented server to profile (default c)")
    parser.add_argument("--seconds", type=float, help="profile length per scenario (default 6; quick 1)")
    parser.add_argument("--rounds", type=int, help="py-spy recordings per scenario, medians reported (default 3)")
    parser.add_argument("--profiler", choices=("py-spy", "cprofile"), help="default: py-spy if installed")
    parser.add_argument("--out", type=Path, default=harness.REPO / ".cache" / "bench", help="where profiles are saved")
    parser.add_argument("--top", type=int, default=12, help="functions listed per scenario")
    harness.add_client_arguments(parser)
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 6.0)
    rounds = args.rounds or (1 if args.quick else 3)
    ab_seconds = 0.5 if args.quick else 3.0
    big = 20 if args.quick else 1000
    profiler = args.profiler or ("py-spy" if harness.which("py-spy") else "cprofile")
    args.out.mkdir(parents=True, exist_ok=True)
    started = harness.machine()
    scenarios = [(f"burst-{big}", f"fan-{big}", big, 10), ("single-1", "fan-1", 1, 1)]
    sizes = {f"fan-{big}": big, "fan-1": 1}

    # 1. What telemetry costs, from the OS's CPU accounting, without a profiler attached.
    variants = [("b", "b: --no-telemetry", []), ("c", "c: full, sampling 1.0", []),
                ("c", "c: sampling 0.01", ["--trace-sample-ratio", "0.01"])]
    per_publish: dict[tuple[str, str], float] = {}
    threads: dict[tuple[str, str], tuple[float, float, float, float]] = {}
    for key, label, extra in variants:
        with Workdir() as work:
            target = harness.TARGETS[key](work, extra=extra)
            log(f"[{label}] pid {target.process.pid}")
            cells = asyncio.run(drive(work, target, scenarios, ab_seconds, 1, args.out, False, args.workers, sizes,
                                      args.client))
        for name, (_, cell) in cells.items():
            per_publish[(label, name)] = cell.server_us * cell.size
            threads[(label, name)] = cell.threads

    # 2. Where the time goes: the profile.
    prof_path = args.out / f"profile-{args.target}.cprofile"
    with Workdir() as work:
        python = [sys.executable, "-m", "cProfile", "-o", str(prof_path)] if profiler == "cprofile" else []
        target = harness.TARGETS[args.target](work, python=python)
        log(f"[{args.target}] {target.label}: pid {target.process.pid}; profiler {profiler}")
        profiled = asyncio.run(drive(work, target, scenarios, seconds, rounds, args.out, profiler == "py-spy",
                                     args.workers, sizes, args.client))
        work.stop(target.process)  # cProfile writes its file when the server exits
    results: dict[str, tuple[list[Summary], Any]] = dict(profiled)
    if profiler == "cprofile":
        results = {"all scenarios (cProfile, main thread)": ([summarise_cprofile(prof_path)], None)}

    for name, (summaries, cell) in results.items():
        samples = sum(s.samples for s in summaries)
        waiting = sum(s.idle for s in summaries)
        title = (f"Profile of ({args.target}) {name}: {samples} samples running ({waiting} waiting, left out)"
                 + (f", median of {len(summaries)} recordings" if len(summaries) > 1 else ""))
        if cell is not None:
            title += f"; {cell.server_us:.2f} µs server CPU per delivery"
        harness.print_table(title + " — share by area (self time)", ["area", "median %", "min %", "max %"],
                            median_shares(summaries, "by_area"))
        harness.print_table(f"Top {args.top} functions, {name} (self time)",
                            ["function (file)", "median %", "min %", "max %"],
                            [(f[:100], *rest) for f, *rest in median_shares(summaries, "by_function")[:args.top]])
    print()
    print(f"profiles saved in {args.out} ({profiler}; py-spy raw stacks load into speedscope or flamegraph.pl)")

    rows = []
    for name, *_ in scenarios:
        values = [per_publish.get((label, name)) for _, label, _ in variants]
        base = values[0]
        rows.append((name, *values, *[(v - base) if v is not None and base is not None else None for v in values[1:]]))
    harness.print_table(
        "Server CPU per publish, µs (fan-out included), without a profiler: what telemetry adds",
        ["scenario", *[label for _, label, _ in variants], "telemetry (full)", "telemetry (0.01)"], rows)
    harness.print_table(
        "Per thread, per publish: CPU µs and voluntary context switches (event loop thread; the others: export threads)",
        ["scenario", "variant", "loop µs", "others µs", "loop switches", "others switches"],
        [(name, label, *threads[(label, name)]) for name, *_ in scenarios for _, label, _ in variants
         if (label, name) in threads])
    harness.print_machine(started, harness.command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
