"""Connections held: RSS per connection and heartbeat CPU, bare baseline and Centrifugo against instrumented_server.

    python bench/connections.py            # 1,000 → 10,000 connections (about 2 minutes)
    python bench/connections.py --quick    # 50 → 100 connections, for CI

For (a) the bare baseline, (c) instrumented_server exporting to a running otelcol and (e)
Centrifugo (add b or d with --targets), it opens connections in steps, each subscribed to one of 100 channels, spread
over several client processes (bench/wsclient.py). Heartbeats are on (the servers ping every
--ping-interval seconds, Centrifugo with its `{}` application ping; the clients answer). After each step it reads the server's RSS; the
RSS per connection is (RSS now − RSS before the first connection) / connections, and the
marginal figure is the growth since the previous step per added connection. At the top step it
then leaves the connections idle for --idle-seconds and reads the server's CPU: heartbeats are
the only traffic, so that CPU (minus the same server's idle CPU with no connection, measured
before) is the heartbeat cost, given per ping and per 1,000 connections at the default 20 s interval.
The file-descriptor limit is raised to the hard limit for the servers and the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import harness
import wsclient
from harness import ClientPool, CpuWindow, Workdir, log

DEFAULT_PING_INTERVAL = 20.0  # the servers' default, to which the heartbeat cost is scaled
KIB = 1024


@dataclass
class Result:
    key: str
    steps: list[tuple[int, int, float, float | None]] = field(default_factory=list)  # held, rss, per conn, marginal
    open_ms: list[float] = field(default_factory=list)  # server CPU per connection opened (upgrade, token, subscribe)
    idle_floor: float = 0.0  # server CPU % with no connection
    idle_cpu: float = 0.0  # server CPU % with every connection idle
    held: int = 0
    ping_us: float | None = None
    per_1000_default: float | None = None  # % of a core per 1,000 idle connections at 20 s
    client_max: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


async def bench_target(key: str, args: argparse.Namespace) -> Result:
    result = Result(key)
    with Workdir() as work:
        target = harness.TARGETS[key](work, ping_interval=args.ping_interval)
        log(f"[{key}] {target.label}: pid {target.process.pid}, port {target.port}, "
            f"pings every {args.ping_interval:g}s")
        async with ClientPool(work, args.workers, args.client) as pool:
            args.client_used = pool.kind
            # Warm-up: a few connections opened and closed, so lazy imports and first-use caches
            # are in the RSS before the zero point.
            await pool.open(target, {"warm": 10})
            await pool.close_connections()
            await asyncio.sleep(1.0)
            floor = CpuWindow({"server": target.process}).start()
            await asyncio.sleep(args.floor_seconds)
            floor.stop()
            result.idle_floor = floor.percent(floor.cpu["server"])
            rss0 = target.process.rss()
            previous_held, previous_rss = 0, rss0
            for step in args.steps:
                channels: dict[str, int] = {}
                for i in range(previous_held, step):
                    channels[f"idle-{i % 100}"] = channels.get(f"idle-{i % 100}", 0) + 1
                started = time.monotonic()
                opening = CpuWindow({"server": target.process}).start()
                opened = await pool.open(target, channels, concurrency=args.concurrency)
                opening.stop()
                open_seconds = time.monotonic() - started
                for reason, n in opened["failed"].items():
                    result.failures[reason] = result.failures.get(reason, 0) + n
                await asyncio.sleep(1.0)  # let the last handshakes' garbage go
                held = (await pool.stats())["open"]
                rss = target.process.rss()
                marginal = (rss - previous_rss) / (held - previous_held) if held > previous_held else None
                result.steps.append((held, rss, (rss - rss0) / max(1, held), marginal))
                if held > previous_held:
                    result.open_ms.append(1e3 * opening.cpu["server"] / (held - previous_held))
                log(f"[{key}] {held:>6} connections held ({open_seconds:.1f}s to open): "
                    f"RSS {rss / 2**20:.1f} MiB, {(rss - rss0) / max(1, held) / KIB:.1f} KiB/connection"
                    + (f", failed {opened['failed']}" if opened["failed"] else ""))
                previous_held, previous_rss = held, rss
                if held < step:
                    break  # the server (or the machine) refused more: what was held is the result
            result.held = previous_held
            window = CpuWindow({"server": target.process}, pool).start()
            await asyncio.sleep(args.idle_seconds)
            window.stop()
            still = (await pool.stats())["open"]
            result.idle_cpu = window.percent(window.cpu["server"])
            result.client_max = window.client_max_percent
            pings = result.held * args.idle_seconds / args.ping_interval
            heartbeat_cpu = max(0.0, window.cpu["server"] - result.idle_floor / 100 * window.wall)
            if pings:
                result.ping_us = 1e6 * heartbeat_cpu / pings
                result.per_1000_default = 100 * result.ping_us * 1e-6 * 1000 / DEFAULT_PING_INTERVAL
            log(f"[{key}] idle {args.idle_seconds:g}s with {result.held} connections: server CPU "
                f"{result.idle_cpu:.1f}% (floor {result.idle_floor:.1f}%), {still} still open")
            await pool.close_connections()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 and 100 connections (CI smoke run)")
    parser.add_argument("--targets", default="ace", help="which servers (default a, c and e)")
    parser.add_argument("--steps", help="comma-separated connection counts (default 1000,2500,5000,10000)")
    parser.add_argument("--ping-interval", type=float, default=5.0,
                        help="server heartbeat interval while measuring (scaled to 20 s in the report)")
    parser.add_argument("--idle-seconds", type=float, help="idle window for the heartbeat CPU (default 10; quick 2)")
    harness.add_client_arguments(parser, workers=4)
    parser.add_argument("--concurrency", type=int, default=25, help="handshakes in flight per client process")
    args = parser.parse_args(argv)
    limit = wsclient.raise_fd_limit()
    default_steps = "50,100" if args.quick else "1000,2500,5000,10000"
    args.steps = [int(s) for s in (args.steps or default_steps).split(",")]
    args.idle_seconds = args.idle_seconds or (2.0 if args.quick else 10.0)
    args.floor_seconds = 1.0 if args.quick else 4.0
    if max(args.steps) + 100 > limit:
        log(f"warning: the open-file limit is {limit}; the top step needs about {max(args.steps) + 100} per process")
    started = harness.machine()

    results: dict[str, Result] = {}
    skipped: dict[str, str] = {}
    for key in args.targets:
        try:
            results[key] = asyncio.run(bench_target(key, args))
        except RuntimeError as exc:
            skipped[key] = str(exc).splitlines()[0]
            log(f"[{key}] skipped: {exc}")

    labels = harness.LABELS
    harness.print_table(
        "RSS by connections held (KiB per connection: from the zero point / marginal since the previous step)",
        ["server", "connections", "RSS MiB", "KiB/conn", "marginal KiB/conn"],
        [(labels[k], held, rss / 2**20, per / KIB, marginal / KIB if marginal is not None else None)
         for k, r in results.items() for held, rss, per, marginal in r.steps])
    def ratio(r: Result, base: Result | None) -> str | None:
        return f"{r.steps[-1][2] / base.steps[-1][2]:.2f}x" if base and base.steps and r.steps else None

    rows = []
    for key, r in results.items():
        per = r.steps[-1][2] / KIB if r.steps else None
        open_ms = r.open_ms[0] if r.open_ms else None  # the first step: the least heartbeat traffic mixed in
        rows.append((labels[key], r.held, per, ratio(r, results.get("a")), ratio(r, results.get("e")), open_ms,
                     r.idle_floor, r.idle_cpu, r.ping_us, r.per_1000_default,
                     r.client_max, ", ".join(f"{n} {why}" for why, n in r.failures.items()) or "none"))
    harness.print_table(
        f"Connections held with heartbeats (pings every {args.ping_interval:g}s while measuring)",
        ["server", "held", "KiB/conn", "vs a", "vs e", "open CPU ms/conn (1st step)", "idle CPU % (0 conns)",
         f"idle CPU % ({max(args.steps)})", "µs/ping", "% core per 1,000 at 20s", "busiest client %", "failed opens"],
        rows)
    for key, reason in skipped.items():
        print(f"({key}) not measured: {reason}")
    print(f"{args.workers} client processes ({getattr(args, 'client_used', '?')} client); "
          f"open-file limit {limit} per process")
    harness.print_machine(started, harness.command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
