"""exporter.tracing.LeanSpan records what the SDK's span records: limits, statuses, odd values, sampling."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from exporter.instrument import instrument
from exporter.tracing import LeanSpan


def make(**kwargs):
    memory = InMemorySpanExporter()
    telemetry = instrument("lean-test", span_exporter=memory, environ=kwargs.pop("environ", {}), log_stdout=False,
                           logger="tests.exporter.lean_span", **kwargs)
    return telemetry, memory


def finished(telemetry, memory):
    telemetry.force_flush(5)
    return list(memory.get_finished_spans())


def exercise(span: trace.Span) -> None:
    """The same calls on a LeanSpan and on the SDK's span."""
    for i in range(130):
        span.set_attribute(f"key{i}", i)
    span.set_attribute("list", ["a", "b"])
    span.set_attribute("bad", {"a": 1})  # not an attribute value: dropped with a warning
    span.set_attributes({"ratio": 0.5, "flag": False})
    span.update_name("renamed")
    span.set_status(StatusCode.OK)
    span.set_status(StatusCode.ERROR, "ignored: OK is final")
    span.add_event("happened", {"k": "v"})


def test_a_lean_span_exports_what_the_sdk_span_exports():
    telemetry, memory = make()
    try:
        with telemetry.span("original") as handle:
            assert isinstance(handle.otel_span, LeanSpan)
            exercise(handle.otel_span)
        (lean,) = finished(telemetry, memory)
    finally:
        telemetry.shutdown(2)

    sdk_memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(sdk_memory))
    with provider.get_tracer("sdk").start_as_current_span("original") as span:
        exercise(span)
    (sdk,) = sdk_memory.get_finished_spans()

    assert lean.name == sdk.name == "renamed"
    assert dict(lean.attributes) == dict(sdk.attributes)
    assert lean.dropped_attributes == sdk.dropped_attributes > 0
    assert (lean.status.status_code, lean.status.description) == (sdk.status.status_code, sdk.status.description)
    assert [(e.name, dict(e.attributes)) for e in lean.events] == [(e.name, dict(e.attributes)) for e in sdk.events]
    assert lean.end_time >= lean.start_time > 0


def test_an_ended_span_takes_nothing_more_and_ends_once():
    telemetry, memory = make()
    try:
        with telemetry.span("once") as handle:
            span = handle.otel_span
        span.set_attribute("late", 1)
        span.end()
        spans = finished(telemetry, memory)
    finally:
        telemetry.shutdown(2)
    assert [s.name for s in spans] == ["once"]
    assert "late" not in spans[0].attributes
    assert not span.is_recording()


def test_a_sampler_that_drops_gives_a_non_recording_span_with_a_trace_id():
    telemetry, memory = make(sampler="always_off")
    try:
        with telemetry.span("dropped") as handle:
            assert not handle.otel_span.is_recording()
            assert handle.trace_id is not None and not handle.sampled
            carrier: dict[str, str] = {}
            telemetry.inject(carrier)
        assert int(carrier["traceparent"].rsplit("-", 1)[1], 16) & 1 == 0  # not sampled (random-trace-id set, as the SDK sets it)
        assert finished(telemetry, memory) == []
    finally:
        telemetry.shutdown(2)
