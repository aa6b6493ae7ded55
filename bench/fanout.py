"""Fan-out efficiency: server CPU per delivered message, bare baseline and Centrifugo against instrumented_server.

    python bench/fanout.py            # full run: 1, 100 and 1,000 subscribers (about 2 minutes)
    python bench/fanout.py --quick    # small sizes, for CI

For each server: (a) the bare baseline (bench/baseline_server.py, `websockets.broadcast`),
(b) instrumented_server --no-telemetry, (c) instrumented_server exporting spans and logs to a
running otelcol, (d) the same behind the Redis broker, (e) Centrifugo (the peer: all its threads'
CPU, client-side publish; see harness.start_centrifugo). Subscribers sit on channels of 1, 100 and
1,000, spread over client processes (bench/wsclient.py). The publisher sends either bursts
(--burst publishes split over --publishers connections, written back to back, so the server
reads them in one event-loop iteration) or one publish per tick (the next only after the previous
one is acknowledged). It waits for the subscribers to catch up before each send, so no backlog
builds up and every publication is delivered. The figure is the server process's CPU (user+sys,
from the OS) over the window divided by the deliveries the clients counted; the ratios compare
each server with (a) and with (e) in the same run. The Python client is the default here: on loopback the
sender's send() also pays for waking an idle receiver, and a faster client (--client go) sleeps
and is woken more often, which raises every server's figure, the baseline's most.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import time
from dataclasses import dataclass

import harness
from harness import ClientPool, CpuWindow, Publisher, Workdir, log


CLIENT_USED = ["?"]  # the receiving client the pool used: go or python


@dataclass
class Cell:
    key: str
    size: int
    mode: str
    deliveries: int
    rate: float  # deliveries per second
    server_us: float  # server CPU per delivery
    helper_us: float | None  # otelcol (+ redis) CPU per delivery
    client_max: float  # busiest client process, % of a core
    machine: float  # all processes, % of all cores
    missing: int


async def measure(target: harness.Target, pool: ClientPool, publisher: Publisher, channel: str, size: int,
                  burst: int, seconds: float) -> Cell:
    async def run(duration: float) -> int:
        """Publish for ``duration``; return the deliveries still missing at the end."""
        base_sent, base_delivered = publisher.sent, pool.delivered()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            # Hold back until everything but the last burst has arrived: no backlog, no slow-consumer cut-off.
            await harness.wait_delivered(pool, base_delivered + (publisher.sent - base_sent - burst) * size, 30)
            publisher.burst(channel, burst)
            await publisher.wait_acks()
        expected = base_delivered + (publisher.sent - base_sent) * size
        return expected - await harness.wait_delivered(pool, expected, 10)

    await run(min(0.3, seconds / 3))  # warm-up: caches, the first fan-out's allocations
    window = CpuWindow({"server": target.process, **target.helpers}, pool).start()
    before = pool.delivered()
    missing = await run(seconds)
    window.stop()
    deliveries = pool.delivered() - before
    helper_cpu = sum(v for k, v in window.cpu.items() if k != "server")
    return Cell(target.key, size, "burst" if burst > 1 else "single", deliveries, deliveries / window.wall,
                1e6 * window.cpu["server"] / max(1, deliveries),
                1e6 * helper_cpu / max(1, deliveries) if target.helpers else None,
                window.client_max_percent, window.machine_percent, missing)


async def bench_target(key: str, sizes: list[int], modes: list[int], seconds: float, workers: int,
                       client: str, publishers: int, server_args: list[str]) -> list[Cell]:
    cells = []
    with Workdir() as work:
        target = harness.TARGETS[key](work, **({"extra": server_args} if key in "bcd" and server_args else {}))
        log(f"[{key}] {target.label}: pid {target.process.pid}, port {target.port}")
        async with ClientPool(work, workers, client) as pool:
            CLIENT_USED[0] = pool.kind
            channels = {f"fan-{size}": size for size in sizes}
            opened = await pool.open(target, channels)
            if opened["failed"]:
                raise RuntimeError(f"[{key}] subscribers refused: {opened['failed']}")
            publisher = await Publisher(connections=publishers).connect(target)
            for size in sizes:
                for burst in modes:
                    cell = await measure(target, pool, publisher, f"fan-{size}", size, burst, seconds)
                    log(f"[{key}] {size:>5} subscribers, {cell.mode:>6}: {cell.server_us:7.2f} µs/delivery, "
                        f"{cell.rate:9.0f} deliveries/s, busiest client {cell.client_max:3.0f}%")
                    cells.append(cell)
            await publisher.close()
            if publisher.errors:
                log(f"[{key}] publish errors: {publisher.errors}")
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows (CI smoke run)")
    parser.add_argument("--targets", default="abcde", help="which servers: a b c d e (default all)")
    parser.add_argument("--seconds", type=float, help="measuring window per cell (default 2.5; quick 0.3)")
    parser.add_argument("--burst", type=int, default=10, help="publishes per burst (one write, one server tick)")
    parser.add_argument("--publishers", type=int, default=10,
                        help="publishing connections a burst is split over (a Redis round trip per publish "
                             "serialises one connection's burst; several connections publish concurrently)")
    parser.add_argument("--sizes", help="comma-separated channel sizes (default 1,100,1000; quick 1,20)")
    parser.add_argument("--server-args", default="",
                        help="extra instrumented_server flags for b, c and d, e.g. '--write-delay 0.002'")
    harness.add_client_arguments(parser)
    args = parser.parse_args(argv)
    started = harness.machine()
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [1, 20] if args.quick else [1, 100, 1000]
    seconds = args.seconds or (0.3 if args.quick else 2.5)
    modes = [args.burst, 1]

    cells: list[Cell] = []
    skipped: dict[str, str] = {}
    for key in args.targets:
        try:
            cells += asyncio.run(bench_target(key, sizes, modes, seconds, args.workers, args.client,
                                              args.publishers, shlex.split(args.server_args)))
        except RuntimeError as exc:  # a missing binary or a server that would not start: say so, go on
            skipped[key] = str(exc).splitlines()[0]
            log(f"[{key}] skipped: {exc}")

    by = {(c.key, c.size, c.mode): c for c in cells}
    labels = harness.LABELS
    harness.print_table(
        "Per server and channel size (µs are server CPU per delivered message; helper = otelcol, + redis for d)",
        ["server", "subs", "publishes", "deliveries/s", "server µs", "helper µs", "busiest client %",
         "machine %", "missing"],
        [(labels[c.key], c.size, c.mode, c.rate, c.server_us, c.helper_us, c.client_max, c.machine, c.missing)
         for c in cells])
    rows = []
    for size in sizes:
        for mode in ("burst", "single"):
            row: list = [size, f"{mode} ({args.burst}/tick)" if mode == "burst" else "single (1/tick)"]
            row += [by[(k, size, mode)].server_us if (k, size, mode) in by else None for k in "abcde"]
            for base_key, keys in (("a", "bcd"), ("e", "abcd")):  # ratio to bare, then ratio to Centrifugo
                base = by.get((base_key, size, mode))
                for k in keys:
                    cell = by.get((k, size, mode))
                    row.append(f"{cell.server_us / base.server_us:.2f}x" if cell and base else None)
            bound = [c.key for c in cells if c.size == size and c.mode == mode and c.client_max > harness.CLIENT_BOUND]
            row.append(",".join(bound) or "no")
            rows.append(row)
    harness.print_table(
        "Server CPU per delivered message (µs) and ratios against (a) bare and (e) Centrifugo, same run",
        ["subs", "publishes", "a µs", "b µs", "c µs", "d µs", "e µs", "b/a", "c/a", "d/a", "a/e", "b/e", "c/e",
         "d/e", "client-bound"], rows)
    for key, reason in skipped.items():
        print(f"({key}) not measured: {reason}")
    print(f"client processes: {args.workers} receiving workers ({CLIENT_USED[0]} client) + the publishing driver "
          f"({args.publishers} publishing connection{'s' if args.publishers > 1 else ''}); "
          f"client-bound = a client process above {harness.CLIENT_BOUND:.0f}% of a core")
    harness.print_machine(started, harness.command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
