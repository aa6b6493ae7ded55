"""Cost of each telemetry hook, instrumented vs NoopTelemetry, as ratios measured in one run.

    python bench/bench_exporter_hooks.py            # full run (under a minute)
    python bench/bench_exporter_hooks.py --quick    # small sizes, for CI

Each hook is called in a tight loop; the table gives nanoseconds per call for NoopTelemetry
and for ``exporter.instrument()`` (metrics only, then with tracing to an exporter that drops
everything), and the instrumented/noop ratio. The last rows compare counting a 1,000-recipient
fan-out once (the design) with calling the hook once per recipient. Wall-clock figures on a
shared machine are noisy; the ratios, measured side by side, are what to read.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Callable

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from exporter.hooks import NoopTelemetry
from exporter.instrument import instrument


class DiscardingExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


def per_call_ns(fn: Callable[[], None], calls: int, repeats: int = 5) -> float:
    """Best of ``repeats`` loops: the least disturbed measurement of the same code."""
    best = float("inf")
    for _ in range(repeats):
        gc.disable()
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter_ns() - start
        gc.enable()
        best = min(best, elapsed / calls)
    return best


def hook_calls(t) -> dict[str, Callable[[], None]]:
    def span() -> None:
        with t.span("publish", {"messaging.operation": "publish"}) as s:
            s.set_attribute("messaging.batch.message_count", 3)

    return {
        "connection_opened": lambda: t.connection_opened("default"),
        "message_received": lambda: t.message_received("publish", 120),
        "message_handled": lambda: t.message_handled("publish", 0.0007),
        "messages_sent(x1000)": lambda: t.messages_sent("message", 1000, 120),
        "fanout(1000)": lambda: t.fanout(1000),
        "error": lambda: t.error("malformed"),
        "subscriptions_changed": lambda: t.subscriptions_changed("default", 1),
        "broker_lag": lambda: t.broker_lag("memory", 0.0004),
        "span": span,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small loops (CI smoke run)")
    args = parser.parse_args(argv)
    calls = 2_000 if args.quick else 100_000
    span_calls = 500 if args.quick else 20_000

    noop = NoopTelemetry()
    metrics_only = instrument("bench", log_stdout=False, environ={})
    traced = instrument("bench", log_stdout=False, environ={}, span_exporter=DiscardingExporter())
    rows = []
    try:
        for name in hook_calls(noop):
            n = span_calls if name == "span" else calls
            base = per_call_ns(hook_calls(noop)[name], n)
            plain = per_call_ns(hook_calls(metrics_only)[name], n)
            with_traces = per_call_ns(hook_calls(traced)[name], n)
            rows.append((name, base, plain, with_traces))

        # The design: one call per fan-out with the recipient count, against one per recipient.
        per_fanout = per_call_ns(lambda: (metrics_only.fanout(1000), metrics_only.messages_sent("message", 1000, 120)),
                                 calls // 10)

        def per_recipient() -> None:
            for _ in range(1000):
                metrics_only.fanout(1)
                metrics_only.messages_sent("message", 1, 120)

        per_each = per_call_ns(per_recipient, max(20, calls // 1000))
    finally:
        metrics_only.shutdown(2)
        traced.shutdown(2)

    print(f"{'hook':<24}{'noop ns':>10}{'metrics ns':>12}{'ratio':>8}{'+traces ns':>12}{'ratio':>8}")
    for name, base, plain, with_traces in rows:
        print(f"{name:<24}{base:>10.0f}{plain:>12.0f}{plain / base:>8.1f}{with_traces:>12.0f}{with_traces / base:>8.1f}")
    print()
    print(f"1,000-recipient fan-out counted once:        {per_fanout:>10.0f} ns")
    print(f"1,000-recipient fan-out counted per recipient: {per_each:>8.0f} ns  "
          f"({per_each / per_fanout:.0f}x the once-per-fan-out cost)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
