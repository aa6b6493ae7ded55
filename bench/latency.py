"""Latency and capacity: publish→deliver latency at 1,000 subscribers, bare baseline and Centrifugo against instrumented.

    python bench/latency.py            # full run (2 to 4 minutes)
    python bench/latency.py --quick    # 50 subscribers, short steps, for CI

For (a) the bare baseline, (c) instrumented_server exporting spans and logs to a running
otelcol and (e) Centrifugo (client-side publish): first a fixed offered rate (100 publishes/s into one channel of 1,000 subscribers), then
a rising rate (x1.41 per step, each starting with no backlog) until the server no longer keeps
up. The publisher sends on a schedule (open loop: it does not wait for acks), with its send time
(`time.time()`) as the first key of each payload; the subscribers, in separate client processes
(bench/goclient in Go when Go is installed, else bench/wsclient.py), read it back on arrival.
Every --latency-every-th subscriber reads timestamps (the others only count); the report gives
the client processes' CPU. Capacity: the highest step with p99 <= 25 ms and every delivery made,
and the highest step the server kept up with at all (p99 <= 1 s, nothing missing).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import harness
from harness import ClientPool, CpuWindow, Publisher, Workdir, log

P99_LIMIT_MS = 25.0
SUSTAINED_P99_MS = 1000.0  # keeping up at all: every delivery made, p99 within a second
DRAIN_SECONDS = 60.0  # the longest wait for a backlog to clear before the next step


@dataclass
class Step:
    key: str
    rate: float  # offered publishes per second
    achieved: float  # deliveries per second
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    missing: int
    server_percent: float
    client_max: float
    samples: int

    @property
    def ok(self) -> bool:
        """Within the latency target: p99 <= 25 ms and nothing missing."""
        return self.p99 is not None and self.p99 <= P99_LIMIT_MS and self.missing == 0

    @property
    def sustained(self) -> bool:
        """Keeping up: every delivery made within the settle time, p99 within a second."""
        return self.p99 is not None and self.p99 <= SUSTAINED_P99_MS and self.missing == 0


async def offer(publisher: Publisher, channel: str, rate: float, duration: float) -> None:
    """Send at ``rate`` for ``duration`` on a fixed schedule; whatever is due goes out in one write."""
    start = time.monotonic()
    first = publisher.sent
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= duration:
            return
        due = int(elapsed * rate) + 1 - (publisher.sent - first)
        if due > 0:
            publisher.burst(channel, due)
        next_at = start + (publisher.sent - first) / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def step(target: harness.Target, pool: ClientPool, publisher: Publisher, subscribers: int, rate: float,
               duration: float, settle: float) -> Step:
    await pool.reset()
    window = CpuWindow({"server": target.process, **target.helpers}, pool).start()
    before, sent = pool.delivered(), publisher.sent
    await offer(publisher, "latency", rate, duration)
    expected = before + (publisher.sent - sent) * subscribers
    reached = await harness.wait_delivered(pool, expected, settle)
    window.stop()
    stats = await pool.stats()
    histogram = stats["histogram"]

    def ms(q: float) -> float | None:
        value = histogram.quantile(q)
        return None if value is None else value * 1000

    return Step(target.key, rate, (reached - before) / window.wall, ms(0.5), ms(0.95), ms(0.99), ms(1.0),
                expected - reached, window.percent(window.cpu["server"]), window.client_max_percent, histogram.total)


async def bench_target(key: str, args: argparse.Namespace) -> tuple[Step, list[Step]]:
    with Workdir() as work:
        target = harness.TARGETS[key](work)
        log(f"[{key}] {target.label}: pid {target.process.pid}, port {target.port}")
        async with ClientPool(work, args.workers, args.client) as pool:
            args.client_used = pool.kind
            opened = await pool.open(target, {"latency": args.subscribers}, latency_every=args.latency_every)
            if opened["failed"]:
                raise RuntimeError(f"[{key}] subscribers refused: {opened['failed']}")
            publisher = await Publisher().connect(target)

            async def drain() -> bool:
                """Wait for every publication so far to reach every subscriber (steps start from no backlog)."""
                total = publisher.sent * args.subscribers
                return await harness.wait_delivered(pool, total, DRAIN_SECONDS) >= total

            await offer(publisher, "latency", 20, 0.3)  # warm-up
            await drain()
            fixed = await step(target, pool, publisher, args.subscribers, args.rate, args.fixed_seconds, args.settle)
            log(f"[{key}] fixed {args.rate:g}/s: p50 {fixed.p50 or 0:.2f} p99 {fixed.p99 or 0:.2f} ms, "
                f"missing {fixed.missing}, server {fixed.server_percent:3.0f}%")
            rising: list[Step] = []
            rate = args.start_rate
            # Up until p99 passes 25 ms, then on until the server stops keeping up at all.
            while rate <= args.max_rate and await drain():
                result = await step(target, pool, publisher, args.subscribers, rate, args.step_seconds, args.settle)
                rising.append(result)
                log(f"[{key}] {rate:7.1f}/s: p99 {result.p99 or 0:8.2f} ms, missing {result.missing}, "
                    f"server {result.server_percent:3.0f}%, busiest client {result.client_max:3.0f}%")
                if not result.sustained:
                    break
                rate *= 2 ** 0.5
            await drain()
            await publisher.close()
    return fixed, rising


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 subscribers, short steps (CI smoke run)")
    parser.add_argument("--targets", default="ace", help="which servers (default a, c and e)")
    parser.add_argument("--subscribers", type=int, help="subscribers of the one channel (default 1000; quick 50)")
    parser.add_argument("--rate", type=float, default=100.0, help="fixed offered publishes per second")
    parser.add_argument("--start-rate", type=float, help="first rate of the rising series (default 2.5; quick 10)")
    parser.add_argument("--max-rate", type=float, help="stop rising here (default 3200; quick 100)")
    parser.add_argument("--latency-every", type=int, default=4, help="every N-th subscriber reads timestamps")
    harness.add_client_arguments(parser, default="auto")
    args = parser.parse_args(argv)
    args.subscribers = args.subscribers or (50 if args.quick else 1000)
    args.max_rate = args.max_rate or (100.0 if args.quick else 3200.0)
    args.start_rate = args.start_rate or (10.0 if args.quick else 2.5)
    args.fixed_seconds = 0.5 if args.quick else 5.0
    args.step_seconds = 0.4 if args.quick else 2.0
    args.settle = 3.0 if args.quick else 5.0
    started = harness.machine()

    results: dict[str, tuple[Step, list[Step]]] = {}
    skipped: dict[str, str] = {}
    for key in args.targets:
        try:
            results[key] = asyncio.run(bench_target(key, args))
        except RuntimeError as exc:
            skipped[key] = str(exc).splitlines()[0]
            log(f"[{key}] skipped: {exc}")

    labels = harness.LABELS
    harness.print_table(
        f"Rising rate x1.41 per step, {args.subscribers} subscribers (ms; up to the first step that does not keep up)",
        ["server", "publishes/s", "deliveries/s", "p50", "p95", "p99", "max", "missing", "server %",
         "busiest client %"],
        [(labels[s.key], s.rate, s.achieved, s.p50, s.p95, s.p99, s.max, s.missing, s.server_percent, s.client_max)
         for key in results for s in results[key][1]])

    def p99_ratio(key: str, base_key: str) -> str | None:
        fixed, base = results[key][0], results.get(base_key, (None,))[0]
        return f"{fixed.p99 / base.p99:.2f}x" if base and base.p99 and fixed.p99 is not None else None

    harness.print_table(
        f"Fixed rate: {args.rate:g} publishes/s into one channel of {args.subscribers} subscribers (ms; "
        "p99 ratios against (a) bare and (e) Centrifugo)",
        ["server", "p50", "p95", "p99", "max", "missing", "samples", "server %", "busiest client %", "p99 vs a",
         "p99 vs e"],
        [(labels[k], f.p50, f.p95, f.p99, f.max, f.missing, f.samples, f.server_percent, f.client_max,
          p99_ratio(k, "a"), p99_ratio(k, "e")) for k, (f, _) in results.items()])

    capacity: dict[str, tuple[Step | None, Step | None, bool, bool]] = {}
    rows = []
    for key, (_, rising) in results.items():
        within = [s for s in rising if s.ok]
        kept_up = [s for s in rising if s.sustained]
        # "at least": the series never failed that criterion before it ended.
        capacity[key] = (within[-1] if within else None, kept_up[-1] if kept_up else None,
                         bool(rising) and all(s.ok for s in rising), bool(rising) and rising[-1].sustained)
        best, top, best_open, top_open = capacity[key]
        rows.append((labels[key], _rate(best, best_open, args.start_rate), best.p99 if best else None,
                     _rate(top, top_open, args.start_rate), top.p99 if top else None,
                     max((s.client_max for s in rising), default=None),
                     "yes" if any(s.client_max > harness.CLIENT_BOUND for s in rising) else "no"))
    harness.print_table(
        f"Capacity: highest publish rate into {args.subscribers} subscribers with p99 <= {P99_LIMIT_MS:g} ms, and the "
        f"highest it kept up with (p99 <= {SUSTAINED_P99_MS / 1000:g} s, nothing missing)",
        ["server", "p99<=25ms: publishes/s", "p99 ms", "kept up: publishes/s", "p99 ms", "busiest client %",
         "client-bound"], rows)
    for key, base_key in (("c", "a"), ("c", "e"), ("a", "e")):
        if key not in capacity or base_key not in capacity:
            continue
        for index, what in ((0, f"p99 <= {P99_LIMIT_MS:g} ms"), (1, "kept up")):
            mine, base = capacity[key][index], capacity[base_key][index]
            at_least = capacity[key][index + 2] or capacity[base_key][index + 2]  # a series that never failed
            if mine and base:
                print(f"capacity ratio {key}/{base_key} ({what}): {mine.rate / base.rate:.1f}x"
                      + (" (a series ended before failing: a bound, not a ratio)" if at_least else ""))
            else:
                print(f"capacity ratio {key}/{base_key} ({what}): not measured ({base_key}: "
                      f"{_rate(base, False, args.start_rate)}, {key}: {_rate(mine, False, args.start_rate)})")
    for key, reason in skipped.items():
        print(f"({key}) not measured: {reason}")
    print(f"latency read by every {args.latency_every}th subscriber; {args.workers} receiving client processes "
          f"({getattr(args, 'client_used', '?')} client) "
          f"+ the publishing driver; client-bound = a client process above {harness.CLIENT_BOUND:.0f}% of a core")
    harness.print_machine(started, harness.command_line())
    return 0


def _rate(step: Step | None, at_least: bool, start: float) -> str:
    if step is None:
        return f"< {start:g}"
    return (">= " if at_least else "") + f"{step.rate:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
