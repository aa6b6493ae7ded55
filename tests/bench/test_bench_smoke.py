"""Every benchmark script runs at its --quick size and prints its table (no timing is asserted).

The scripts start real servers (the bare baseline, instrumented_server, Centrifugo, otelcol,
redis-server) on free ports on 127.0.0.1, and stop them by pid when they finish. The Centrifugo
column (e) has tests of its own, skipped without the binary (scripts/install-tools.sh builds it),
so the other columns are still checked where it is not installed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, timeout: float = 240) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / name), "--quick", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # Every script ends with the machine it ran on and the command that produced the table.
    assert re.search(r"^machine: \d+ cores", proc.stdout, re.M), proc.stdout
    assert f"command: python bench/{name} --quick" in proc.stdout
    return proc.stdout


def table_rows(output: str, title_start: str) -> list[list[str]]:
    """The data rows of the markdown table under the line starting with ``title_start``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    rows = []
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def number(cell: str) -> float:
    return float(cell.rstrip("x%").lstrip(">= "))


def test_baseline_server_speaks_the_protocol_subset(tmp_path):
    """The same client drives the baseline and instrumented_server: connected, subscribe, publish, message."""
    import asyncio

    sys.path.insert(0, str(BENCH))
    import wsclient

    log = open(tmp_path / "baseline.log", "wb")
    proc = subprocess.Popen([sys.executable, str(BENCH / "baseline_server.py"), "--port", "0"], stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 15
        match = None
        while match is None and time.monotonic() < deadline:
            match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", (tmp_path / "baseline.log").read_text())
            time.sleep(0.05)
        assert match, (tmp_path / "baseline.log").read_text()
        port = int(match.group(1))

        async def exchange():
            histogram = wsclient.Histogram()
            counted = []
            commander = wsclient.Commander()
            subscriber = await wsclient.connect("127.0.0.1", port, on_deliveries=counted.append, histogram=histogram,
                                                on_control=commander.on_control)
            ack = await commander.request(subscriber, "subscribe", {"channel": "smoke"})
            publisher_commands = wsclient.Commander()
            publisher = await wsclient.connect("127.0.0.1", port, on_control=publisher_commands.on_control)
            publisher.send_raw(wsclient.publish_frame("smoke", 0, "x" * 10, "m1"))
            for _ in range(200):
                if counted:
                    break
                await asyncio.sleep(0.01)
            await subscriber.aclose()
            await publisher.aclose()
            return ack, counted, histogram

        ack, counted, histogram = asyncio.run(exchange())
        assert ack["type"] == "ack" and ack["payload"]["channel"] == "smoke"
        assert sum(counted) == 1
        assert histogram.total == 1 and 0 <= histogram.max < 5
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        log.close()


# Columns of the fan-out summary table.
FANOUT_US = {key: 2 + i for i, key in enumerate("abcde")}  # a µs .. e µs
FANOUT_RATIOS = {name: 7 + i for i, name in enumerate(["b/a", "c/a", "d/a", "a/e", "b/e", "c/e", "d/e"])}


def test_fanout_quick():
    require_binary("otelcol")
    require_binary("redis-server")
    out = run_script("fanout.py", "--targets", "abcd")
    rows = table_rows(out, "Server CPU per delivered message")
    assert [r[0] for r in rows] == ["1", "1", "20", "20"]
    for row in rows:
        assert all(number(row[FANOUT_US[k]]) > 0 for k in "abcd"), row  # a, b, c, d each measured
        assert all(row[FANOUT_RATIOS[r]].endswith("x") for r in ("b/a", "c/a", "d/a")), row
        assert row[FANOUT_US["e"]] == "-" and row[FANOUT_RATIOS["c/e"]] == "-", row  # (e) not asked for
    per_cell = table_rows(out, "Per server and channel size")
    assert len(per_cell) == 16
    assert all(row[-1] == "0" for row in per_cell), "every publication reached every subscriber"


def test_latency_quick():
    require_binary("otelcol")
    out = run_script("latency.py", "--targets", "ac")
    fixed = table_rows(out, "Fixed rate:")
    assert [r[0] for r in fixed] == ["a bare", "c otelcol"]
    for row in fixed:
        p50, p95, p99, maximum = (number(c) for c in row[1:5])
        assert 0 < p50 <= p95 <= p99 <= maximum
        assert row[9].endswith("x") and row[10] == "-"  # p99 vs a; no (e) in this run
    assert table_rows(out, "Capacity:")


def test_connections_quick():
    require_binary("otelcol")
    out = run_script("connections.py", "--targets", "ac")
    held = table_rows(out, "Connections held with heartbeats")
    assert [r[0] for r in held] == ["a bare", "c otelcol"]
    for row in held:
        assert row[1] == "100" and number(row[2]) > 0


# ------------------------------------------------------------------------------------- Centrifugo (e)


def start_centrifugo(work):
    sys.path.insert(0, str(BENCH))
    import harness

    return harness.start_centrifugo(work, ping_interval=2.0)


def test_clients_speak_centrifugo_json_protocol():
    """connect with the JWT, subscribe, client publish answered by id, pushes counted, {} pings answered."""
    import asyncio

    require_binary("centrifugo")
    sys.path.insert(0, str(BENCH))
    import harness
    import wsclient

    async def exchange(target):
        histogram, counted = wsclient.Histogram(), []
        commander = wsclient.CentrifugoCommander()
        subscriber = await wsclient.connect("127.0.0.1", target.port, target.path, on_deliveries=counted.append,
                                            histogram=histogram, on_control=commander.on_control, centrifugo=True)
        connected = await commander.request(subscriber, "connect", {"token": target.token})
        await commander.request(subscriber, "subscribe", {"channel": "smoke"})
        publisher = await harness.Publisher(pad=10, connections=2).connect(target)
        publisher.burst("smoke", 5)  # replies come back batched, one a line: every one counted
        await publisher.wait_acks(timeout=15)
        for _ in range(1500):
            if sum(counted) >= 5:
                break
            await asyncio.sleep(0.01)
        # Pings every 2 s, 1.6 s to answer each: a connection that did not answer is closed by then.
        await asyncio.sleep(4.5)
        still_open = subscriber.is_open and all(c.is_open for c in publisher.connections)

        stranger = wsclient.CentrifugoCommander()
        forged = await wsclient.connect("127.0.0.1", target.port, target.path, on_control=stranger.on_control,
                                        centrifugo=True)
        with pytest.raises(RuntimeError, match="connect refused"):
            await stranger.request(forged, "connect", {"token": target.token[:-4] + "AAAA"}, timeout=15)
        await publisher.close()
        await subscriber.aclose()
        return connected, counted, histogram, publisher, still_open

    with harness.Workdir() as work:
        target = start_centrifugo(work)
        connected, counted, histogram, publisher, still_open = asyncio.run(exchange(target))
    assert connected["connect"]["pong"] is True and connected["connect"]["ping"] == 2
    assert sum(counted) == 5 and histogram.total == 5 and 0 <= histogram.max < 5
    assert publisher.acks == 5 and publisher.errors == {}
    assert still_open, "a {} ping went unanswered"


def test_centrifugo_config_with_an_unknown_key_is_refused(monkeypatch):
    require_binary("centrifugo")
    sys.path.insert(0, str(BENCH))
    import harness

    config = harness.centrifugo_config

    def misspelt(*args):
        document = config(*args)
        document["usage_stats"] = {"disable": True}  # the real key is "disabled"
        return document

    monkeypatch.setattr(harness, "centrifugo_config", misspelt)
    with harness.Workdir() as work, pytest.raises(RuntimeError, match=r"usage_stats\.disable\b"):
        harness.start_centrifugo(work)


def test_fanout_quick_centrifugo():
    require_binary("centrifugo")
    out = run_script("fanout.py", "--targets", "ae")
    rows = table_rows(out, "Server CPU per delivered message")
    assert [r[0] for r in rows] == ["1", "1", "20", "20"]
    for row in rows:
        assert number(row[FANOUT_US["e"]]) > 0 and number(row[FANOUT_US["a"]]) > 0, row
        assert row[FANOUT_RATIOS["a/e"]].endswith("x"), row
    per_cell = table_rows(out, "Per server and channel size")
    assert [r[0] for r in per_cell] == ["a bare"] * 4 + ["e centrifugo"] * 4
    assert all(row[-1] == "0" for row in per_cell), "every publication reached every subscriber"


def test_latency_quick_centrifugo():
    require_binary("centrifugo")
    out = run_script("latency.py", "--targets", "ae")
    fixed = table_rows(out, "Fixed rate:")
    assert [r[0] for r in fixed] == ["a bare", "e centrifugo"]
    for row in fixed:
        p50, p95, p99, maximum = (number(c) for c in row[1:5])
        assert 0 < p50 <= p95 <= p99 <= maximum
        assert row[5] == "0", "every publication reached every subscriber"
        assert row[9].endswith("x") and row[10].endswith("x")  # p99 vs a, p99 vs e
    assert re.search(r"^capacity ratio a/e \(kept up\): ", out, re.M)


def test_connections_quick_centrifugo():
    require_binary("centrifugo")
    out = run_script("connections.py", "--targets", "e")  # (a)'s row is checked above; this keeps it short
    held = table_rows(out, "Connections held with heartbeats")
    assert [r[0] for r in held] == ["e centrifugo"]
    row = held[0]
    assert row[1] == "100" and number(row[2]) > 0 and row[3] == "-" and row[4] == "1.00x", row
    assert row[-1] == "none", "every connection opened"


def test_profile_publish_quick(tmp_path):
    require_binary("otelcol")
    out = run_script("profile_publish.py", "--out", str(tmp_path))
    assert "share by area" in out
    costs = table_rows(out, "Server CPU per publish")
    assert [r[0] for r in costs] == ["burst-20", "single-1"]
    assert any(tmp_path.iterdir()), "the profile was saved"


def test_generator_quick():
    out = run_script("generator.py")
    rows = table_rows(out, "Generator,")
    assert [r[0] for r in rows] == ["python -c 'import stack' (floor)", "obsgen render (default spec)",
                                    "obsgen render (100 services, 50 SLOs)",
                                    "obsgen render --check (100 services, 50 SLOs)"]
    assert int(rows[2][1]) > int(rows[1][1]) > 0  # the bigger spec renders more files
    assert re.search(r"^target: render of the 100-service spec under 1 s wall: (met|not met)", out, re.M)
    assert re.search(r"^target: render of the default spec under 0.5 s wall: (met|not met)", out, re.M)
    assert re.search(r"^bytecode cache: on ", out, re.M)
