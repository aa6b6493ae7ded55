"""A bounded soak: one server process under steady load with connection churn, its RSS sampled.

Load (stated, and printed with the results): 200 subscriber connections over 10 channels, 100
publishes a second (100-byte payloads, so about 2,000 deliveries a second), plus churn every
second: abrupt disconnects that reconnect and resume from their offset, refused tokens, malformed
messages, forbidden subscriptions, oversized messages. It runs for OBSGEN_SOAK_SECONDS (60 by
default) through `python -m instrumented_server.loadgen`, in its own process.

It fails when the load generator reports a message missing, repeated or out of order, when the
server's books do not balance at the end (connections, subscriptions), or on a clear leak: RSS
growth, extrapolated to an hour, above LEAK_MIB_PER_HOUR (see there for why that number).
A second, quicker test runs the same kinds of churn in-process under tracemalloc, where a leak
of a few hundred bytes per connection or per publish already shows.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from tests.hardening.hardening_support import MIB, REPO, RssSampler, ServerProcess

SOAK_SECONDS = float(os.environ.get("OBSGEN_SOAK_SECONDS", "60"))
SUBSCRIBERS, CHANNELS, RATE, MESSAGE_SIZE = 200, 10, 100, 100
CHURN = ("disconnect=2", "bad-token=1", "malformed=1", "forbidden=1", "oversized=0.5")
WARM_UP = 0.3  # share of the run left out: connections opening, caches and allocator arenas filling

# Why 200 MiB/h. Measured on this 2-core machine with this load: RSS rises about 11 MiB over the
# first ~200 s and then stays flat (48.8 -> 59.6 MiB at 200 s, unchanged to 300 s); the same load
# without churn is flat from 10 s on (+0.5 MiB/h). The rise is the allocator (pymalloc arenas, malloc
# heap) settling under connection churn and 64 KiB messages: live Python memory does not grow (the
# tracemalloc test below), and a 60 s window extrapolates the rise to 100-125 MiB/h. So the limit
# sits at twice that. Leaks it catches at this load: a copy of each delivery frame (~1.7 GiB/h), a
# 10 KiB session kept per churned connection (~200 MiB/h), a history entry per publish
# without trimming (~350 MiB/h). Smaller leaks are the tracemalloc test's to catch.
LEAK_MIB_PER_HOUR = 200.0


def growth_per_hour(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, in MiB per hour."""
    times = [t for t, _ in samples]
    values = [rss / MIB for _, rss in samples]
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values)) / sum((t - mean_t) ** 2 for t in times)
    return slope * 3600


@pytest.mark.slow
def test_soak_holds_its_load_and_memory(tmp_path):
    server = ServerProcess(tmp_path, "--message-rate", "0", "--max-connections-per-ip", "0").start()
    try:
        started = time.monotonic()
        with RssSampler(server.proc.pid, interval=0.5) as rss:
            result = subprocess.run(
                [sys.executable, "-m", "instrumented_server.loadgen", "--url", server.url,
                 "--jwt-secret-file", str(server.secret_file), "--subscribers", str(SUBSCRIBERS),
                 "--channels", str(CHANNELS), "--rate", str(RATE), "--message-size", str(MESSAGE_SIZE),
                 "--duration", str(SOAK_SECONDS), "--settle", "2", "--json",
                 *(arg for fault in CHURN for arg in ("--fault", fault))],
                cwd=REPO, capture_output=True, text=True, timeout=SOAK_SECONDS + 120)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout)
        time.sleep(1.0)
        metrics = server.metrics()
    finally:
        server.stop()

    window = [(t, value) for t, value in rss.samples if t >= started + WARM_UP * (SOAK_SECONDS + 5)]
    per_hour = growth_per_hour(window)
    first, last = rss.samples[0][1] / MIB, rss.samples[-1][1] / MIB
    print(f"\nsoak: {SUBSCRIBERS} subscribers, {CHANNELS} channels, {RATE} publishes/s of {MESSAGE_SIZE} B for "
          f"{SOAK_SECONDS:.0f}s, churn {', '.join(CHURN)}")
    print(f"soak: published {report['published']}, delivered {report.get('delivered')}, missing {report['missing']}, "
          f"duplicates {report.get('duplicates')}, out of order {report['out_of_order']}, resyncs "
          f"{report.get('resyncs')}, reconnects {report.get('reconnects')}; latency {report.get('latency_ms')}")
    print(f"soak: server RSS {first:.1f} MiB at start, peak {rss.peak / MIB:.1f}, end {last:.1f}; growth after "
          f"warm-up {per_hour:+.0f} MiB/h extrapolated (limit {LEAK_MIB_PER_HOUR:.0f})")

    assert report["published"] >= 0.9 * RATE * SOAK_SECONDS
    assert report["missing"] == 0 and report["out_of_order"] == 0 and not report.get("duplicates")
    assert report.get("reconnects", 0) > 0  # the churn happened
    assert metrics['websocket_active_connections{namespace="default",transport="websocket"}'] == 0  # every session was closed
    assert sum(v for k, v in metrics.items() if k.startswith("websocket_subscriptions{")) == 0
    assert per_hour < LEAK_MIB_PER_HOUR, f"RSS grows {per_hour:.0f} MiB/h after warm-up"


async def test_no_python_memory_is_kept_per_connection_or_per_message():
    """RSS cannot see a small leak under allocator noise; tracemalloc can. The same kinds of churn as
    the soak, in-process: live Python memory after 400 more connections and 2,000 more publishes
    must stay within what the bounded tables (history, caches) may still take."""
    import asyncio
    import gc
    import tracemalloc

    from instrumented_server.ratelimit import Rate
    from tests.server.server_support import Client, eventually, make_config, running_server
    from tests.server.server_support import token as server_token

    async def churn(server, rounds: int, publisher: Client) -> None:
        for i in range(rounds):
            async with Client.connect(server, server_token(f"user-{i % 50}")) as client:
                await client.request("subscribe", {"channel": f"room-{i % 5}", "recover": {"offset": 0, "epoch": "x"}})
                await client.request("subscribe", {"channel": "$private"})  # forbidden
                await client.connection.send("{not json")
                await client.next()
                for _ in range(5):
                    await publisher.request("publish", {"channel": f"room-{i % 5}", "data": {"i": i, "pad": "x" * 100}})
                publisher.events.clear()  # the test client keeps what it reads: only the server is measured
                if i % 3 == 0:
                    client.connection.transport.abort()  # an abrupt drop, like the soak's disconnects
                elif i % 3 == 1:
                    await client.connection.send("x" * 70_000)  # oversized: closed with 4005
                    await client.closed()
            if i % 20 == 0:
                async with Client.connect(server, "not-a-token", expect_connected=False) as refused:
                    await refused.closed()

    async def settle(server) -> None:
        """Until what the churn let go is free: every churned connection gone, its handler returned
        (later on a loaded machine), only the publisher's session left, subscribed to nothing; then
        past close_timeout, since each connection the server closed stays referenced by its deferred
        abort (server.py: call_later(close_timeout)) until that fires. Measured earlier, memory
        still held that way counted as growth: +0.3 to +1.5 MiB here, depending on the load."""
        await eventually(lambda: len(server._server.all_connections) == 1 and len(server.hub.sessions) == 1
                         and not server.hub.channels)
        await asyncio.sleep(config.close_timeout + 0.1)  # scheduled after every pending abort: fires after them
        gc.collect()

    config = make_config(message_rate=Rate(0, 0), max_message_size=65536, close_timeout=1.0)
    async with running_server(config) as server:
        async with Client.connect(server, server_token("publisher")) as publisher:
            # Traced from before the warm-up, so that history entries replaced later (bounded: the
            # old ones freed, the new ones kept) weigh the same in both measurements.
            tracemalloc.start()
            try:
                await churn(server, 100, publisher)  # warm-up: history (100 per channel) and caches fill up
                await settle(server)
                before = tracemalloc.get_traced_memory()[0]
                await churn(server, 400, publisher)
                await settle(server)
                after = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            assert len(server.hub.sessions) == 1 and set(server.hub.channels) == set()  # only the publisher left
    growth = after - before
    print(f"\nlive Python memory after 400 churned connections and 2,000 publishes: {growth / 1024:+.0f} KiB")
    # Measured: +25 to +34 KiB once settled (offsets above 256 are int objects, PyJWT's decoder churn). A leak of
    # 1 KiB per connection would be +400 KiB, of 200 B per publish +400 KiB.
    assert growth < 256 * 1024, f"{growth / 1024:.0f} KiB kept"
