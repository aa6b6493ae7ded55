"""exporter.otlp_wire writes the request the SDK's encoder would: compared message to message."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace import set_span_in_context

from exporter import otlp_wire
from exporter.instrument import instrument


def parsed(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def assert_same_request(spans) -> None:
    expected = sdk_encode_spans(spans)
    got = parsed(otlp_wire.encode_spans(spans))
    assert got == expected, f"\ngot:\n{got}\nexpected:\n{expected}"


def sdk_spans(provider: TracerProvider, memory: InMemorySpanExporter, scope: str = "scope"):
    tracer = provider.get_tracer(scope, "1.2.3")
    remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=TraceState([("vendor", "v1")]))
    with tracer.start_as_current_span("plain", kind=SpanKind.SERVER,
                                      attributes={"s": "é text", "b": True, "f": False, "i": 0, "n": -5,
                                                  "big": 2**62, "d": 0.25, "z": 0.0}):
        with tracer.start_as_current_span("child", kind=SpanKind.CONSUMER) as child:
            child.set_status(Status(StatusCode.ERROR, "why"))
    with tracer.start_as_current_span("remote parent", context=set_span_in_context(NonRecordingSpan(remote)),
                                      kind=SpanKind.PRODUCER) as span:
        span.set_status(StatusCode.OK)
    with tracer.start_as_current_span("lists and events", kind=SpanKind.CLIENT,
                                      attributes={"list": ["a", "b"], "ints": [1, 2]}) as span:
        span.add_event("happened", {"k": "v"})
        span.add_link(remote, {"why": "linked"})
    with tracer.start_as_current_span("", kind=SpanKind.INTERNAL):
        pass
    return list(memory.get_finished_spans())


@pytest.fixture
def provider():
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "wire", "deployment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    provider.shutdown()


def test_the_sdk_spans_encode_to_the_sdk_request(provider):
    spans = sdk_spans(*provider)
    assert len(spans) == 5
    # The fast path takes the plain spans; the one with lists, an event and a link goes to the SDK's encoder.
    fast = []
    for span in spans:
        try:
            otlp_wire._plain_span(span)
            fast.append(span.name)
        except otlp_wire._Unplain:
            pass
    assert fast == ["child", "plain", "remote parent", ""]
    assert_same_request(spans)
    for span in spans:  # and one by one, so a span the fast path takes is compared on its own
        assert_same_request([span])


def test_two_scopes_and_two_resources_group_as_the_sdk_groups(provider):
    first = sdk_spans(*provider, scope="one") + sdk_spans(*provider, scope="two")
    memory = InMemorySpanExporter()
    other = TracerProvider(resource=Resource.create({"service.name": "other"}))
    other.add_span_processor(SimpleSpanProcessor(memory))
    second = sdk_spans(other, memory)
    assert_same_request(first + second + first[:2])


def test_the_lean_spans_of_instrument_encode_to_the_sdk_request():
    memory = InMemorySpanExporter()
    telemetry = instrument("wire-test", span_exporter=memory, environ={}, log_stdout=False,
                           logger="tests.exporter.otlp_wire")
    try:
        with telemetry.span("ws.publish", {"messaging.operation": "publish", "messaging.message.body.size": 80},
                            kind="server") as span:
            metadata: dict[str, str] = {}
            telemetry.inject(metadata)
            with telemetry.span("ws.deliver", {"messaging.destination.name": "chat"}, parent=metadata,
                                kind="consumer") as deliver:
                deliver.set_attribute("messaging.batch.message_count", 3)
            span.set_error("refused")
        with pytest.raises(ValueError):
            with telemetry.span("failing"):
                raise ValueError("boom")
        telemetry.force_flush(5)
        spans = memory.get_finished_spans()
        assert [s.name for s in spans] == ["ws.deliver", "ws.publish", "failing"]
        assert_same_request(spans)
    finally:
        telemetry.shutdown(2)
