"""Structured logs and their shipping; a backend that is down or hung never blocks or raises."""

from __future__ import annotations

import io
import json
import logging
import statistics
import time

import pytest

from exporter.instrument import instrument
from exporter.logging import JsonFormatter
from tests.conftest import free_port
from tests.exporter.backends import HttpSink, SilentServer

# A log call on the event loop must cost microseconds; this bound leaves room for a noisy
# 2-core machine while still failing on any network wait (the backends below take seconds).
MAX_EMIT_SECONDS = 0.05
MEDIAN_EMIT_SECONDS = 0.005


def dropped(t, signal: str) -> float:
    for line in t.exposition()[0].decode().splitlines():
        if line.startswith(f'websocket_telemetry_dropped_total{{signal="{signal}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no drop counter")


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def timed_emits(logger: logging.Logger, count: int) -> list[float]:
    durations = []
    for i in range(count):
        start = time.perf_counter()
        logger.info("record %d", i)
        durations.append(time.perf_counter() - start)
    return durations


def assert_never_blocked(durations: list[float]) -> None:
    assert max(durations) < MAX_EMIT_SECONDS, max(durations)
    assert statistics.median(durations) < MEDIAN_EMIT_SECONDS, statistics.median(durations)


def timed_shutdown(t, timeout: float) -> float:
    start = time.monotonic()
    t.shutdown(timeout)
    return time.monotonic() - start


def make(name: str, **kwargs):
    kwargs.setdefault("log_stdout", False)
    kwargs.setdefault("environ", {})
    return instrument(name, logger=f"tests.exporter.logging.{name}", **kwargs)


def test_json_formatter_fields_and_extras():
    stream = io.StringIO()
    logger = logging.getLogger("tests.exporter.logging.json")
    t = make("json", log_stdout=True)
    t.log_setup.handlers[0].setStream(stream)
    try:
        logger.info("joined %s", "news", extra={"channel_count": 2})
        try:
            raise KeyError("missing")
        except KeyError:
            logger.exception("lookup failed")
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
        assert list(first)[:8] == ["time", "level", "logger", "message", "service_name", "trace_id", "span_id",
                                   "channel_count"]
        assert first["message"] == "joined news" and first["level"] == "INFO"
        assert first["service_name"] == "json" and first["trace_id"] is None and first["channel_count"] == 2
        assert first["time"].endswith("Z")
        assert second["level"] == "ERROR" and "KeyError: 'missing'" in second["exception"]
    finally:
        t.shutdown(1)


def test_shutdown_removes_the_handlers_it_added():
    logger = logging.getLogger("tests.exporter.logging.handlers")
    before = list(logger.handlers)
    t = make("handlers", log_stdout=True)
    assert len(logger.handlers) == len(before) + 1
    t.shutdown(1)
    assert logger.handlers == before


def test_loki_receives_json_lines_with_trace_ids():
    sink = HttpSink(status=204)  # Loki answers a push with 204
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    t = make("loki-ok", loki_url=sink.url, span_exporter=InMemorySpanExporter())
    try:
        with t.span("publish") as span:
            t.logger.warning("slow consumer")
        assert sink.wait_for(lambda posts: posts)
        path, headers, body = sink.posts[0]
        assert path == "/loki/api/v1/push"
        (stream,) = json.loads(body)["streams"]
        assert stream["stream"] == {"service_name": "loki-ok", "severity": "warning", "logger": t.logger.name}
        line = json.loads(stream["values"][0][1])
        assert (line["message"], line["trace_id"]) == ("slow consumer", span.trace_id)
        assert dropped(t, "logs") == 0
    finally:
        t.shutdown(2)
        sink.close()


def test_loki_down_never_blocks_and_counts_drops():
    t = make("loki-down", loki_url=f"http://127.0.0.1:{free_port()}", export_timeout=0.5)
    try:
        assert_never_blocked(timed_emits(t.logger, 30))
        assert wait_until(lambda: dropped(t, "logs") >= 30), dropped(t, "logs")
    finally:
        assert timed_shutdown(t, 2.0) < 2.5


def test_loki_hung_never_blocks_counts_drops_and_shutdown_keeps_its_timeout():
    hung = SilentServer()
    t = make("loki-hung", loki_url=hung.url, export_timeout=2.0, queue_size=5)
    try:
        assert_never_blocked(timed_emits(t.logger, 50))
        # One record is stuck in the listener's POST, five wait in the queue, the rest are dropped.
        assert 44 <= dropped(t, "logs") <= 45
        assert timed_shutdown(t, 1.0) < 1.5
        assert dropped(t, "logs") >= 49  # what was still queued at the deadline is counted too
    finally:
        t.shutdown(0)
        hung.close()


def test_otlp_logs_to_a_closed_port_never_block_and_count_drops():
    t = make("otlp-down", otlp_endpoint=f"http://127.0.0.1:{free_port()}", export_timeout=0.5, export_interval=0.05)
    try:
        assert_never_blocked(timed_emits(t.logger, 30))
        assert wait_until(lambda: dropped(t, "logs") >= 30), dropped(t, "logs")
    finally:
        assert timed_shutdown(t, 2.0) < 2.5


def test_otlp_logs_and_spans_to_a_hung_collector():
    hung = SilentServer()
    t = make("otlp-hung", otlp_endpoint=hung.url, export_timeout=2.0, export_interval=0.05, queue_size=4)
    try:
        durations = timed_emits(t.logger, 50)
        for _ in range(50):
            start = time.perf_counter()
            with t.span("publish"):
                pass
            durations.append(time.perf_counter() - start)
        assert_never_blocked(durations)
        assert dropped(t, "logs") >= 40 and dropped(t, "spans") >= 40
        assert timed_shutdown(t, 1.0) < 1.5
    finally:
        t.shutdown(0)
        hung.close()


@pytest.mark.parametrize("logs", ["otlp", "loki"])
def test_own_failure_logs_are_not_shipped(logs):
    """The shippers' own warnings (urllib3, opentelemetry, exporter) stay local: no feedback loop."""
    sink = HttpSink(status=204)
    root = logging.getLogger()
    t = instrument("own-logs", logger=root, log_stdout=False, environ={}, logs=logs, export_interval=0.05,
                   **({"otlp_endpoint": sink.url} if logs == "otlp" else {"loki_url": sink.url}))
    try:
        logging.getLogger("opentelemetry.exporter.otlp").warning("export failed")
        logging.getLogger("urllib3.connectionpool").warning("retrying")
        logging.getLogger("tests.exporter.logging.app").warning("application record")
        t.force_flush(5)
        assert sink.wait_for(lambda posts: posts)
        time.sleep(0.2)
        bodies = b"".join(body for _, _, body in sink.posts)
        assert b"application record" in bodies
        assert b"export failed" not in bodies and b"retrying" not in bodies
    finally:
        t.shutdown(2)
        sink.close()


def test_json_formatter_without_a_span_reads_nothing_from_tracing():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain", None, None)
    out = json.loads(JsonFormatter("svc").format(record))
    assert out["trace_id"] is None and out["span_id"] is None and out["message"] == "plain"
