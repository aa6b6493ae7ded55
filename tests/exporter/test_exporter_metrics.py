"""The Prometheus side: every catalog metric registered as declared, exposition bytes, promtool."""

from __future__ import annotations

import math
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalog
from exporter.metrics import MAX_OPEN_LABEL_VALUES, WeightedObserver
from tests.conftest import require_binary


def instrumented(**kwargs):
    from exporter.instrument import instrument

    return instrument("metrics-test", environ={}, log_stdout=False, logger="tests.exporter.metrics", **kwargs)


def exercise_every_hook(t) -> None:
    t.connection_opened("chat")
    t.connection_rejected("auth_failed")
    t.connection_closed("chat", 1000)
    t.reconnect("replayed")
    t.message_received("publish", 120)
    t.message_handled("publish", 0.003)
    t.messages_sent("message", 3, 100)
    t.fanout(3)
    t.connection_opened("default", transport="sse")
    t.messages_sent("message", 2, 100, transport="sse")
    t.fanout(2, transport="sse")
    t.error("malformed")
    t.rate_limited("ip")
    t.subscriptions_changed("chat", 1)
    t.broker_lag("redis", 0.002)
    t.count_dropped_logs(1)
    t.count_dropped_spans(1)


@pytest.fixture
def telemetry():
    t = instrumented()
    yield t
    t.shutdown(1)


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_catalog_metric_is_registered_as_declared(telemetry):
    exercise_every_hook(telemetry)  # open labels (namespace, code) have series once used
    parsed = families(telemetry.exposition()[0].decode())
    for metric in catalog.CATALOG:
        family = parsed[metric.base_name]
        assert family.type == metric.type, metric.name
        assert family.documentation == metric.help, metric.name
        names = {s.name for s in family.samples}
        if metric.type == "counter":
            assert names == {metric.name}, metric.name
        if metric.type == "histogram":
            assert names == {metric.name + "_bucket", metric.name + "_count", metric.name + "_sum"}
            bounds = sorted({float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")})
            assert bounds == [*map(float, metric.buckets), math.inf], metric.name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(metric.labels), (metric.name, sample.labels)
    # Besides the catalog: prometheus_client's process collector, which instrument() adds to the
    # registry it creates (process_cpu_seconds, process_open_fds, ...).
    assert {m.base_name for m in catalog.CATALOG} == {name for name in parsed if not name.startswith("process_")}


def test_precreated_label_values_exist_at_zero_from_the_start(telemetry):
    parsed = families(telemetry.exposition()[0].decode())
    sent = {(s.labels["type"], s.labels["transport"]): s.value for s in parsed["websocket_messages_sent"].samples}
    assert sent == {(t, transport): 0.0 for t in catalog.SERVER_MESSAGE_TYPES for transport in catalog.TRANSPORTS}
    fanout = {s.labels["transport"]: s.value for s in parsed["websocket_fanout_messages"].samples}
    assert fanout == {"websocket": 0.0, "sse": 0.0}
    received = {s.labels["type"]: s.value for s in parsed["websocket_messages_received"].samples}
    assert received == {t: 0.0 for t in catalog.CLIENT_MESSAGE_TYPES}
    durations = {s.labels["type"] for s in parsed["websocket_message_duration_seconds"].samples}
    assert durations == set(catalog.CLIENT_MESSAGE_TYPES)
    closes = {(s.labels["code"], s.labels["transport"]): s.value for s in parsed["websocket_disconnections"].samples}
    assert closes == {(catalog.NORMAL_CLOSE_CODE, transport): 0.0 for transport in catalog.TRANSPORTS}
    # Broker lag: only the broker that runs has a series, from its first delivery on.
    assert not parsed["websocket_broker_lag_seconds"].samples


def test_declared_values_not_precreated_appear_on_first_use_and_share_the_series(telemetry):
    telemetry.broker_lag("redis", 0.002)
    telemetry.connection_opened("chat")
    telemetry.connection_closed("chat", 1000)  # an int code: the pre-created "1000" series
    telemetry.messages_sent("reconnect", 1, 10)  # declared, not pre-created
    parsed = families(telemetry.exposition()[0].decode())
    brokers = {s.labels["broker"] for s in parsed["websocket_broker_lag_seconds"].samples}
    assert brokers == {"redis"}
    closes = {s.labels["code"]: s.value for s in parsed["websocket_disconnections"].samples
              if s.labels["transport"] == "websocket"}
    assert closes == {"1000": 1.0}
    sent = {s.labels["type"]: s.value for s in parsed["websocket_messages_sent"].samples
            if s.labels["transport"] == "websocket"}
    assert sent["reconnect"] == 1.0 and "reconnect" not in catalog.SERVER_MESSAGE_TYPES


def test_transport_label_keeps_websocket_and_sse_apart(telemetry):
    telemetry.connection_opened("default")
    telemetry.connection_opened("default", transport="sse")
    telemetry.connection_opened("default", transport="sse")
    telemetry.connection_closed("default", 1001, transport="sse")
    telemetry.connection_rejected("auth_missing", transport="sse")
    telemetry.messages_sent("message", 7, 50, transport="sse")
    telemetry.messages_sent("message", 3, 50)
    telemetry.fanout(7, transport="sse")
    telemetry.fanout(3)
    parsed = families(telemetry.exposition()[0].decode())

    def by(family, *labels):
        return {tuple(s.labels[label] for label in labels): s.value for s in parsed[family].samples}

    assert by("websocket_active_connections", "transport") == {("websocket",): 1.0, ("sse",): 1.0}
    disconnections = {key: value for key, value in by("websocket_disconnections", "code", "transport").items() if value}
    assert disconnections == {("1001", "sse"): 1.0}
    connections = by("websocket_connections", "status", "transport")
    assert connections[("accepted", "sse")] == 2 and connections[("accepted", "websocket")] == 1
    assert connections[("auth_missing", "sse")] == 1 and connections[("auth_missing", "websocket")] == 0
    sent = by("websocket_messages_sent", "type", "transport")
    assert sent[("message", "sse")] == 7 and sent[("message", "websocket")] == 3
    assert by("websocket_fanout_messages", "transport") == {("websocket",): 3.0, ("sse",): 7.0}


def test_exposition_bytes_after_a_fanout(telemetry):
    telemetry.messages_sent("message", 1000, 100)
    telemetry.fanout(1000)
    text = telemetry.exposition()[0].decode()
    lines = [line for line in text.splitlines()
             if line.startswith(("websocket_fanout_messages_total", 'websocket_messages_sent_total{transport="websocket",type="message"}'))
             or ('direction="out"' in line)]
    assert lines == [
        'websocket_messages_sent_total{transport="websocket",type="message"} 1000.0',
        'websocket_message_size_bytes_bucket{direction="out",le="64.0"} 0.0',
        'websocket_message_size_bytes_bucket{direction="out",le="256.0"} 1000.0',
        'websocket_message_size_bytes_bucket{direction="out",le="1024.0"} 1000.0',
        'websocket_message_size_bytes_bucket{direction="out",le="4096.0"} 1000.0',
        'websocket_message_size_bytes_bucket{direction="out",le="16384.0"} 1000.0',
        'websocket_message_size_bytes_bucket{direction="out",le="65536.0"} 1000.0',
        'websocket_message_size_bytes_bucket{direction="out",le="262144.0"} 1000.0',
        'websocket_message_size_bytes_bucket{direction="out",le="1.048576e+06"} 1000.0',
        'websocket_message_size_bytes_bucket{direction="out",le="+Inf"} 1000.0',
        'websocket_message_size_bytes_count{direction="out"} 1000.0',
        'websocket_message_size_bytes_sum{direction="out"} 100000.0',
        'websocket_fanout_messages_total{transport="websocket"} 1000.0',
        'websocket_fanout_messages_total{transport="sse"} 0.0',
    ]


def test_two_instances_do_not_share_a_registry():
    a, b = instrumented(), instrumented()
    try:
        a.fanout(5)
        assert b'websocket_fanout_messages_total{transport="websocket"} 0.0' in b.exposition()[0]
        assert b'websocket_fanout_messages_total{transport="websocket"} 5.0' in a.exposition()[0]
        assert a.registry is not b.registry
    finally:
        a.shutdown(1)
        b.shutdown(1)


def test_exposition_is_deterministic_without_created_series(telemetry):
    exercise_every_hook(telemetry)
    first, second = telemetry.exposition()[0], telemetry.exposition()[0]

    # The process collector reads the live process (CPU seconds, memory): only the catalog's
    # series must be the same from one exposition to the next.
    def catalog_lines(exposition: bytes) -> list[bytes]:
        return [line for line in exposition.splitlines() if b"process_" not in line]

    assert catalog_lines(first) == catalog_lines(second)
    assert b"_created" not in first


def test_weighted_observation_equals_repeated_observe():
    """WeightedObserver writes what N calls of Histogram.observe would (it uses client internals)."""
    buckets = catalog.SIZE_BUCKETS
    values = [0, 1, 64, 65, 1024, 1048576, 5_000_000, 300.5]
    expected_registry, actual_registry = CollectorRegistry(), CollectorRegistry()
    expected = Histogram("h", "h", buckets=buckets, registry=expected_registry)
    observe = WeightedObserver(Histogram("h", "h", buckets=buckets, registry=actual_registry))
    for weight, value in enumerate(values, start=1):
        for _ in range(weight):
            expected.observe(value)
        observe(value, weight)
    observe(float("nan"), 3)  # ignored rather than poisoning the sum

    def body(registry):
        return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)

    assert body(actual_registry) == body(expected_registry)


def test_unknown_label_values_stay_bounded(telemetry):
    telemetry.message_received("no-such-type", 10)
    telemetry.error("no-such-reason")
    telemetry.connection_rejected("no-such-status")
    for code in range(3000, 3000 + MAX_OPEN_LABEL_VALUES + 50):
        telemetry.connection_closed("chat", code)
    parsed = families(telemetry.exposition()[0].decode())
    received = {s.labels["type"]: s.value for s in parsed["websocket_messages_received"].samples}
    assert received["other"] == 1 and "no-such-type" not in received
    errors = {s.labels["reason"]: s.value for s in parsed["websocket_errors"].samples}
    assert errors["internal"] == 1 and "no-such-reason" not in errors
    statuses = {s.labels["status"]: s.value for s in parsed["websocket_connections"].samples
                if s.labels["transport"] == "websocket"}
    assert statuses["error"] == 1
    codes = {s.labels["code"]: s.value for s in parsed["websocket_disconnections"].samples
             if s.labels["transport"] == "websocket"}
    # The cap's worth of codes, the pre-created normal close (unused here) and the overflow.
    assert len(codes) == MAX_OPEN_LABEL_VALUES + 2 and codes[catalog.NORMAL_CLOSE_CODE] == 0
    assert codes["other"] == 50
    assert sum(codes.values()) == MAX_OPEN_LABEL_VALUES + 50


def test_hooks_never_raise_into_the_service(telemetry, caplog):
    telemetry.message_received("publish", "not a size")  # a bug in the caller, not a crash
    telemetry.subscriptions_changed("chat", None)
    telemetry.messages_sent("message", -4, 10)  # ignored: counters only go up
    assert b'websocket_messages_sent_total{transport="websocket",type="message"} 0.0' in telemetry.exposition()[0]
    assert any("telemetry hook" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("accept,content_type", [
    (None, "text/plain; version=0.0.4; charset=utf-8"),
    ("text/plain", "text/plain; version=0.0.4; charset=utf-8"),
    ("application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5",
     "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"),
])
def test_content_negotiation(telemetry, accept, content_type):
    body, served = telemetry.exposition(accept)
    assert served == content_type
    assert body.endswith(b"# EOF\n") == served.startswith("application/openmetrics-text")


def test_promtool_check_metrics_is_clean(telemetry):
    promtool = require_binary("promtool")
    exercise_every_hook(telemetry)
    body = telemetry.exposition()[0]
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", (result.stdout, result.stderr)


def test_promtool_complains_about_a_bad_metric():
    """The check above can fail: the same lint rejects a counter without _total."""
    promtool = require_binary("promtool")
    body = b"# HELP websocket_bad_count\n# TYPE websocket_bad_count counter\nwebsocket_bad_count 1\n"
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode != 0 and (result.stdout or result.stderr)


def test_incrementer_equals_the_public_inc():
    """The hot path increments a child's value directly (client internals); same result as inc()."""
    from prometheus_client import Counter, Gauge

    from exporter.metrics import incrementer

    public, fast = CollectorRegistry(), CollectorRegistry()
    for registry, step in ((public, None), (fast, incrementer)):
        counter = Counter("c", "c", ["type"], registry=registry).labels("publish")
        gauge = Gauge("g", "g", ["namespace"], registry=registry).labels("chat")
        if step is None:
            counter.inc(3), gauge.inc(2), gauge.dec(1)
        else:
            step(counter)(3), step(gauge)(2), step(gauge)(-1)

    def body(registry):
        return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)

    assert body(fast) == body(public)
    assert b'c_total{type="publish"} 3.0' in body(fast) and b'g{namespace="chat"} 1.0' in body(fast)
