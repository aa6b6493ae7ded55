"""Latency and capacity: publish→deliver latency at 1,000 subscribers, bare baseline against instrumented.

    python bench/latency.py            # full run (about 2 minutes)
    python bench/latency.py --quick    # 50 subscribers, short steps, for CI

For (a) the bare baseline and (c) instrumented_server exporting spans and logs to a running
otelcol: first a fixed offered rate (100 publishes/s into one channel of 1,000 subscribers), then
a rising rate (x1.41 per step) until p99 passes 25 ms or deliveries go missing. The publisher
sends on a schedule (open loop: it does not wait for acks), with its send time (`time.time()`) as
the first key of each payload; the subscribers, in separate client processes, read it back on
arrival. Every --latency-every-th subscriber reads timestamps (the others only count), which keeps
the client side cheap enough not to be the limit; the report gives the client processes' CPU.
The capacity is the highest step whose p99 stayed within 25 ms with every delivery made.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import harness
from harness import ClientPool, CpuWindow, Publisher, Workdir, log

P99_LIMIT_MS = 25.0


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
        return self.p99 is not None and self.p99 <= P99_LIMIT_MS and self.missing == 0


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
        async with ClientPool(work, args.workers) as pool:
            opened = await pool.open(target, {"latency": args.subscribers}, latency_every=args.latency_every)
            if opened["failed"]:
                raise RuntimeError(f"[{key}] subscribers refused: {opened['failed']}")
            publisher = await Publisher().connect(target)
            await offer(publisher, "latency", 20, 0.3)  # warm-up
            await harness.wait_delivered(pool, publisher.sent * args.subscribers, 10)
            fixed = await step(target, pool, publisher, args.subscribers, args.rate, args.fixed_seconds, args.settle)
            log(f"[{key}] fixed {args.rate:g}/s: p50 {fixed.p50:.2f} p99 {fixed.p99:.2f} ms, missing {fixed.missing}")
            await harness.wait_delivered(pool, publisher.sent * args.subscribers, args.settle)
            rising = []
            rate = args.start_rate
            while rate <= args.max_rate:
                result = await step(target, pool, publisher, args.subscribers, rate, args.step_seconds, args.settle)
                rising.append(result)
                log(f"[{key}] {rate:7.1f}/s: p99 {result.p99 or 0:8.2f} ms, missing {result.missing}, "
                    f"server {result.server_percent:3.0f}%, busiest client {result.client_max:3.0f}%")
                if not result.ok:
                    break
                rate *= 2 ** 0.5
            await publisher.close()
    return fixed, rising


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 subscribers, short steps (CI smoke run)")
    parser.add_argument("--targets", default="ac", help="which servers (default a and c)")
    parser.add_argument("--subscribers", type=int, help="subscribers of the one channel (default 1000; quick 50)")
    parser.add_argument("--rate", type=float, default=100.0, help="fixed offered publishes per second")
    parser.add_argument("--start-rate", type=float, default=25.0, help="first rate of the rising series")
    parser.add_argument("--max-rate", type=float, help="stop rising here (default 3200; quick 100)")
    parser.add_argument("--latency-every", type=int, default=4, help="every N-th subscriber reads timestamps")
    parser.add_argument("--workers", type=int, default=2, help="client processes for the subscribers")
    args = parser.parse_args(argv)
    args.subscribers = args.subscribers or (50 if args.quick else 1000)
    args.max_rate = args.max_rate or (100.0 if args.quick else 3200.0)
    args.fixed_seconds = 0.5 if args.quick else 5.0
    args.step_seconds = 0.4 if args.quick else 2.0
    args.settle = 3.0 if args.quick else 10.0
    started = harness.machine()

    results: dict[str, tuple[Step, list[Step]]] = {}
    skipped: dict[str, str] = {}
    for key in args.targets:
        try:
            results[key] = asyncio.run(bench_target(key, args))
        except RuntimeError as exc:
            skipped[key] = str(exc).splitlines()[0]
            log(f"[{key}] skipped: {exc}")

    labels = {"a": "a bare", "b": "b no-telemetry", "c": "c otelcol", "d": "d otelcol+redis"}
    harness.print_table(
        f"Rising rate, {args.subscribers} subscribers (ms; stops after the first step with p99 > {P99_LIMIT_MS:g} ms "
        "or a missing delivery)",
        ["server", "publishes/s", "deliveries/s", "p50", "p95", "p99", "max", "missing", "server %",
         "busiest client %"],
        [(labels[s.key], s.rate, s.achieved, s.p50, s.p95, s.p99, s.max, s.missing, s.server_percent, s.client_max)
         for key in results for s in results[key][1]])

    harness.print_table(
        f"Fixed rate: {args.rate:g} publishes/s into one channel of {args.subscribers} subscribers (ms)",
        ["server", "p50", "p95", "p99", "max", "missing", "samples", "server %", "busiest client %"],
        [(labels[k], f.p50, f.p95, f.p99, f.max, f.missing, f.samples, f.server_percent, f.client_max)
         for k, (f, _) in results.items()])

    capacity: dict[str, float | None] = {}
    rows = []
    for key, (_, rising) in results.items():
        passed = [s for s in rising if s.ok]
        best = passed[-1] if passed else None
        capacity[key] = best.rate if best else None
        topped = bool(rising) and rising[-1].ok  # never failed: the capacity is at least this
        bound = best is not None and best.client_max > harness.CLIENT_BOUND
        rows.append((labels[key], (">= " if topped else "") + (f"{best.rate:.0f}" if best else "< start"),
                     best.p99 if best else None, best.client_max if best else None, "yes" if bound else "no"))
    harness.print_table(f"Capacity: highest publish rate with p99 <= {P99_LIMIT_MS:g} ms and nothing missing",
                        ["server", "publishes/s", "p99 ms", "busiest client %", "client-bound"], rows)
    a, c = capacity.get("a"), capacity.get("c")
    if a and c:
        print(f"capacity ratio c/a: {c / a:.1f}x")
    for key, reason in skipped.items():
        print(f"({key}) not measured: {reason}")
    print(f"latency read by every {args.latency_every}th subscriber; {args.workers} receiving client processes "
          f"+ the publishing driver; client-bound = a client process above {harness.CLIENT_BOUND:.0f}% of a core")
    harness.print_machine(started, harness.command_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
