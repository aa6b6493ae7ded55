"""Spans, W3C propagation through message metadata, exemplars, and export over real OTLP."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from exporter.hooks import NoopTelemetry
from exporter.instrument import instrument
from exporter.logging import JsonFormatter, TraceContextFilter
from tests.exporter.backends import GrpcTraceSink, HttpSink

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def make(name="tracing-test", **kwargs):
    kwargs.setdefault("log_stdout", False)
    kwargs.setdefault("environ", {})
    kwargs.setdefault("logger", f"tests.exporter.tracing.{name}")
    return instrument(name, **kwargs)


@pytest.fixture
def traced():
    spans = InMemorySpanExporter()
    t = make(span_exporter=spans)
    yield t, spans
    t.shutdown(2)


def finished(t, spans):
    t.force_flush(5)
    return {s.name: s for s in spans.get_finished_spans()}


def test_span_records_attributes_kind_and_errors(traced):
    t, spans = traced
    with t.span("publish", {"message.type": "publish"}, kind="server") as span:
        span.set_attribute("message.size", 120)
    with pytest.raises(RuntimeError):
        with t.span("failing"):
            raise RuntimeError("boom")
    with t.span("refused") as span:
        span.set_error("forbidden")
    with t.span("caught") as span:
        span.record_exception(ValueError("bad frame"))
    got = finished(t, spans)
    assert got["publish"].kind is SpanKind.SERVER
    assert dict(got["publish"].attributes) == {"message.type": "publish", "message.size": 120}
    assert got["publish"].resource.attributes["service.name"] == "tracing-test"
    assert got["publish"].status.status_code is StatusCode.UNSET
    assert got["failing"].status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in got["failing"].events] == ["RuntimeError"]
    assert (got["refused"].status.status_code, got["refused"].status.description) == (StatusCode.ERROR, "forbidden")
    assert got["caught"].status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.message"] for e in got["caught"].events] == ["bad frame"]


def test_trace_context_travels_in_message_metadata(traced):
    """A publish on one instance and its delivery on another share one trace."""
    t, spans = traced
    other_spans = InMemorySpanExporter()
    other = make("tracing-other", span_exporter=other_spans)
    try:
        metadata: dict[str, str] = {"message_id": "m1"}
        with t.span("publish", kind="producer") as publish:
            t.inject(metadata)
        assert metadata["traceparent"].split("-")[1] == publish.trace_id
        with other.span("deliver", parent=metadata, kind="consumer") as deliver:
            pass
        delivered = finished(other, other_spans)["deliver"]
        published = finished(t, spans)["publish"]
        assert deliver.trace_id == publish.trace_id
        assert delivered.parent.span_id == published.context.span_id
    finally:
        other.shutdown(2)


def test_parent_without_context_starts_a_new_trace_and_none_nests(traced):
    t, spans = traced
    with t.span("connection") as connection:
        with t.span("message", parent={}) as fresh:
            pass
        with t.span("nested") as nested:
            pass
    got = finished(t, spans)
    assert fresh.trace_id != connection.trace_id and got["message"].parent is None
    assert nested.trace_id == connection.trace_id
    assert got["nested"].parent.span_id == got["connection"].context.span_id


def test_inject_outside_a_span_writes_nothing(traced):
    t, _ = traced
    carrier: dict[str, str] = {}
    t.inject(carrier)
    assert carrier == {}


def duration_exemplars(t) -> list[str]:
    body = t.exposition(OPENMETRICS)[0].decode()
    return [line for line in body.splitlines()
            if line.startswith("websocket_message_duration_seconds_bucket") and "# {" in line]


def test_exemplar_carries_the_current_trace_id(traced):
    t, _ = traced
    with t.span("publish") as span:
        t.message_handled("publish", 0.003)  # the current span
    with t.span("subscribe") as other:
        pass
    t.message_handled("subscribe", 0.2, other)  # a span handed over explicitly
    # bucket{le, type} count # {trace_id="..."} value timestamp
    got = {}
    for line in duration_exemplars(t):
        series, exemplar = line.split(" # ")
        labels, value, timestamp = exemplar.split(" ")
        got[series] = (labels, value)
    assert got == {
        'websocket_message_duration_seconds_bucket{le="0.005",type="publish"} 1.0': (f'{{trace_id="{span.trace_id}"}}', "0.003"),
        'websocket_message_duration_seconds_bucket{le="0.25",type="subscribe"} 1.0': (f'{{trace_id="{other.trace_id}"}}', "0.2"),
    }
    assert b"trace_id" not in t.exposition()[0]  # the classic text format has no exemplars


def test_no_exemplar_for_an_unsampled_trace():
    t = make(span_exporter=InMemorySpanExporter(), sampler="always_off")
    try:
        with t.span("publish") as span:
            t.message_handled("publish", 0.003)
        t.message_handled("publish", 0.003, span)
        assert duration_exemplars(t) == []
        assert b'websocket_message_duration_seconds_count{type="publish"} 2.0' in t.exposition()[0]
    finally:
        t.shutdown(2)


def test_sampler_ratio_keeps_about_that_share():
    spans = InMemorySpanExporter()
    t = make(span_exporter=spans, sampler_ratio=0.25)
    try:
        for _ in range(400):
            with t.span("publish"):
                pass
        t.force_flush(5)
        kept = len(spans.get_finished_spans())
        assert 50 <= kept <= 150, kept
    finally:
        t.shutdown(2)


def test_a_span_and_a_log_record_carry_the_same_trace_id():
    spans, logs, stdout = InMemorySpanExporter(), InMemoryLogRecordExporter(), io.StringIO()
    logger = logging.getLogger("tests.exporter.tracing.same-trace")
    t = make(span_exporter=spans, log_exporter=logs, logs="otlp", logger=logger)
    console = logging.StreamHandler(stdout)  # what log_stdout=True prints, captured
    console.setFormatter(JsonFormatter("tracing-test"))
    console.addFilter(TraceContextFilter())
    logger.addHandler(console)
    try:
        with t.span("publish") as span:
            logger.info("published to %s", "news", extra={"recipients": 3})
        t.force_flush(5)
        span_data = spans.get_finished_spans()[0]
        record = logs.get_finished_logs()[0].log_record
        line = json.loads(stdout.getvalue())
        assert format(span_data.context.trace_id, "032x") == span.trace_id
        assert record.trace_id == span_data.context.trace_id
        assert record.span_id == span_data.context.span_id
        assert record.body == "published to news"
        assert record.attributes["recipients"] == 3
        assert (line["trace_id"], line["span_id"]) == (span.trace_id, format(span_data.context.span_id, "016x"))
        assert line["service_name"] == "tracing-test" and line["recipients"] == 3
    finally:
        logger.removeHandler(console)
        t.shutdown(2)


def test_export_over_otlp_http_to_a_real_endpoint():
    sink = HttpSink()
    logger = logging.getLogger("tests.exporter.tracing.otlp-http")
    t = make("otlp-http-test", otlp_endpoint=sink.url, logger=logger, export_interval=0.05)
    try:
        with t.span("publish", {"message.type": "publish"}) as span:
            logger.warning("slow consumer cut off")
        assert sink.wait_for(lambda posts: {p for p, _, _ in posts} >= {"/v1/traces", "/v1/logs"})
        (resource, exported), = sink.spans()
        assert exported.name == "publish" and exported.trace_id.hex() == span.trace_id
        assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "otlp-http-test"
        (_, record), = sink.log_records()
        assert record.trace_id.hex() == span.trace_id and record.body.string_value == "slow consumer cut off"
        assert record.severity_text == "WARN"
        assert all(h.get("content-type") == "application/x-protobuf" for _, h, _ in sink.posts)
    finally:
        t.shutdown(2)
        sink.close()


def test_export_over_otlp_grpc_when_selected_by_environment():
    sink = GrpcTraceSink()
    t = make("otlp-grpc-test", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                                        "OTEL_LOGS_EXPORTER": "none"}, export_interval=0.05)
    try:
        with t.span("publish") as span:
            pass
        assert sink.arrived.wait(10)
        exported = sink.requests[0].resource_spans[0].scope_spans[0].spans[0]
        assert exported.trace_id.hex() == span.trace_id
    finally:
        t.shutdown(2)
        sink.close()


class BlockingExporter(InMemorySpanExporter):
    """Holds every export until released: a backend that is slow to answer."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def export(self, spans):
        self.release.wait(10)
        return super().export(spans)


def dropped(t, signal: str) -> float:
    for line in t.exposition()[0].decode().splitlines():
        if line.startswith(f'websocket_telemetry_dropped_total{{signal="{signal}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no drop counter")


def test_spans_dropped_by_a_full_queue_are_counted():
    exporter = BlockingExporter()
    t = make(span_exporter=exporter, queue_size=4)
    try:
        for _ in range(50):
            with t.span("publish"):
                pass
        lost = dropped(t, "spans")
        assert 42 <= lost <= 46  # the queue holds 4; the worker may have taken one batch of 4 out
        exporter.release.set()
        t.force_flush(5)
        assert len(exporter.get_finished_spans()) + lost == 50  # every span exported or counted
    finally:
        exporter.release.set()
        t.shutdown(2)


def test_spans_lost_to_failed_exports_are_counted():
    class Failing(InMemorySpanExporter):
        def export(self, spans):
            return SpanExportResult.FAILURE

    t = make(span_exporter=Failing())
    try:
        for _ in range(3):
            with t.span("publish"):
                pass
        t.force_flush(5)
        assert dropped(t, "spans") == 3
    finally:
        t.shutdown(2)


def test_no_endpoint_means_no_tracing_and_no_network():
    t = make()
    try:
        assert t.tracing is None and t.log_setup.shipper is None
        with t.span("publish") as span:
            assert span.trace_id is None
            t.message_handled("publish", 0.01, span)
        carrier: dict[str, str] = {}
        t.inject(carrier)
        assert carrier == {} and duration_exemplars(t) == []
    finally:
        t.shutdown(1)


def test_disabled_returns_noop_telemetry():
    t = make(environ={"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert type(t) is NoopTelemetry and t.enabled is False


@pytest.mark.parametrize("carrier", [
    {"traceparent": "00-not-a-trace-0"},
    {"traceparent": 42},
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
])
def test_a_bad_carrier_from_a_client_starts_a_new_trace(traced, carrier):
    t, spans = traced
    with t.span("publish", parent=carrier) as span:
        assert span.trace_id is not None
    assert finished(t, spans)["publish"].parent is None


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_and_logs_pass_through_a_real_collector(protocol, processes, tmp_path):
    """exporter -> otelcol (OTLP receiver) -> otlp_http exporter -> sink: the path a deployment uses."""
    import yaml

    from tests.conftest import free_port, require_binary, wait_for_port

    otelcol = require_binary("otelcol")
    sink = HttpSink()
    grpc_port, http_port = free_port(), free_port()
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                                             "http": {"endpoint": f"127.0.0.1:{http_port}"}}}},
        "exporters": {"otlp_http": {"endpoint": sink.url, "compression": "none"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp_http"]},
                          "logs": {"receivers": ["otlp"], "exporters": ["otlp_http"]}},
        },
    }
    path = tmp_path / "otelcol.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = processes.start([otelcol, "--config", str(path)])
    wait_for_port(grpc_port, proc=proc)
    wait_for_port(http_port, proc=proc)
    port = grpc_port if protocol == "grpc" else http_port
    logger = logging.getLogger(f"tests.exporter.tracing.collector.{protocol}")
    t = make("collector-test", otlp_endpoint=f"http://127.0.0.1:{port}", otlp_protocol=protocol, logger=logger,
             export_interval=0.05)
    try:
        with t.span("publish") as span:
            logger.info("through the collector")
        assert sink.wait_for(lambda posts: sink.spans() and sink.log_records(), timeout=20)
        (resource, exported), = sink.spans()
        (_, record), = sink.log_records()
        assert exported.trace_id.hex() == record.trace_id.hex() == span.trace_id
        assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "collector-test"
    finally:
        t.shutdown(2)
        sink.close()
