"""Spans with the OpenTelemetry SDK: a TracerProvider per instance, batched OTLP export.

The provider stays on the instance (never installed as the global one), so a second
instance in the same process, or a test, gets its own pipeline. W3C trace context travels
inside message metadata (a plain dict), so a publish and its deliveries share one trace.

Export never blocks the caller: ``BatchSpanProcessor`` keeps a bounded queue and a worker
thread. ``DropCounter`` mirrors that queue's length from outside (ended sampled spans in,
exported batches out) and counts what the SDK drops when the queue is full or an export
fails, without reaching into the SDK's private state.
"""

from __future__ import annotations

import logging
import threading
import traceback
from time import time_ns
from typing import Any, Callable, Mapping, MutableMapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from exporter.hooks import Span
from exporter.util import RateLimitedLog

log = logging.getLogger("exporter.tracing")

PROPAGATOR = TraceContextTextMapPropagator()
KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}
DEFAULT_MAX_QUEUE_SIZE = 2048
DEFAULT_EXPORT_TIMEOUT_SECONDS = 5.0


class DropCounter:
    """Mirrors a bounded batch queue's length and reports every record it loses.

    ``entered()`` is called when the processor queues one record, ``left(n)`` when the
    exporter receives a batch of n. The SDK's queue drops one record per entry once it holds
    ``capacity``, so an entry at capacity is one drop.
    """

    def __init__(self, capacity: int, on_drop: Callable[[int], None]) -> None:
        self.capacity = capacity
        self.on_drop = on_drop
        self.queued = 0
        self._lock = threading.Lock()

    def entered(self) -> None:
        with self._lock:
            full = self.queued >= self.capacity
            if not full:
                self.queued += 1
        if full:
            self.on_drop(1)

    def left(self, count: int) -> None:
        with self._lock:
            self.queued = max(0, self.queued - count)


class CountingSpanExporter(SpanExporter):
    """Wraps the real exporter: counts batches leaving the queue and spans lost to failed exports."""

    def __init__(self, inner: SpanExporter, drops: DropCounter) -> None:
        self.inner = inner
        self.drops = drops
        self._failures = RateLimitedLog(log)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.drops.left(len(spans))
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # an exporter must not kill the worker thread
            self._failures.warning("span export raised %r; spans dropped", exc)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.drops.on_drop(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class DropCountingSpanProcessor(SpanProcessor):
    """``BatchSpanProcessor`` with its queue drops counted (see ``DropCounter``)."""

    def __init__(self, batch: BatchSpanProcessor, drops: DropCounter) -> None:
        self.batch = batch
        self.drops = drops
        self._shut = False

    def on_start(self, span, parent_context=None) -> None:
        self.batch.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        if self._shut:
            self.drops.on_drop(1)
            return
        self.drops.entered()
        self.batch.on_end(span)

    def shutdown(self) -> None:
        self._shut = True
        self.batch.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.batch.force_flush(timeout_millis)


def make_sampler(name: str, ratio: float) -> sampling.Sampler:
    """The SDK sampler for an ``OTEL_TRACES_SAMPLER`` name (validated by ``exporter.config``)."""
    return {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }[name]()


def otlp_span_exporter(endpoint: str, protocol: str, timeout: float) -> SpanExporter:
    """OTLP span exporter for a base endpoint (``http://host:4318`` or ``http://host:4317``)."""
    if protocol == "grpc":
        # Imported only when chosen: grpc is heavy to load.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"), timeout=timeout)
    from exporter.otlp_wire import fast_http_exporter  # the SDK's exporter, a faster encoder (see there)

    return fast_http_exporter(f"{endpoint}/v1/traces", timeout)


_PLAIN = (str, bool, int, float)


class LeanSpan(trace.Span):
    """A recording span with the SDK span's behaviour, made for the message path.

    The SDK's ``Span`` costs about as much again as the rest of a publish: bounded, locked
    attribute and event containers built up front, processors notified at start, a copy made
    at end. This one keeps a plain dict (limits applied once, at end, by the SDK's own bounded
    types, only when exceeded or a value-length limit is set) and hands the exporter the same
    ``ReadableSpan`` the SDK would. One owner thread, as the hub uses it: no lock.
    """

    __slots__ = ("_pipeline", "_name", "_context", "_parent", "_kind", "_attributes", "_events", "_links",
                 "_status", "_start_time", "_end_time")

    def __init__(self, pipeline: "Tracing", name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict) -> None:
        self._pipeline = pipeline
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._events: list | None = None
        self._links: list | None = None
        self._status = Status(StatusCode.UNSET)
        self._start_time = time_ns()
        self._end_time: int | None = None

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            limits = self._pipeline.limits
            event = Event(name, BoundedAttributes(limits.max_event_attributes, attributes,
                                                  max_value_len=limits.max_attribute_length),
                          time_ns() if timestamp is None else timestamp)
            if self._events is None:
                self._events = []
            self._events.append(event)

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if self._end_time is None and context is not None and context.is_valid:
            limits = self._pipeline.limits
            if self._links is None:
                self._links = []
            self._links.append(Link(context, BoundedAttributes(limits.max_link_attributes, attributes,
                                                               max_value_len=limits.max_attribute_length)))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET is ignored.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if not isinstance(status, Status):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        values = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            values.update(attributes)
        self.add_event("exception", values, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = time_ns() if end_time is None else end_time
        self._pipeline.finish(self)

    def readable(self) -> ReadableSpan:
        """The ended span as exporters take it, with the SDK's limits applied (and drops counted)."""
        limits = self._pipeline.limits
        attributes: Any = self._attributes
        if (limits.max_span_attribute_length is not None or len(attributes) > limits.max_span_attributes
                or not all(type(k) is str and k and type(v) in _PLAIN for k, v in attributes.items())):
            attributes = BoundedAttributes(limits.max_span_attributes, attributes, immutable=True,
                                           max_value_len=limits.max_span_attribute_length)
        events: Any = self._events or ()
        if len(events) > limits.max_events:
            events = BoundedList.from_seq(limits.max_events, events)
        links: Any = self._links or ()
        if len(links) > limits.max_links:
            links = BoundedList.from_seq(limits.max_links, links)
        pipeline = self._pipeline
        return ReadableSpan(
            name=self._name, context=self._context, parent=self._parent, resource=pipeline.resource,
            attributes=attributes, events=tuple(events) if isinstance(events, list) else events,
            links=tuple(links) if isinstance(links, list) else links, kind=self._kind, status=self._status,
            start_time=self._start_time, end_time=self._end_time, instrumentation_scope=pipeline.scope,
        )

    def __repr__(self) -> str:
        return f"LeanSpan(name={self._name!r}, context={self._context})"


class SpanHandle(Span):
    """The handle ``Telemetry.span`` yields; wraps one SDK span."""

    __slots__ = ("otel_span", "_trace_id")

    def __init__(self, otel_span) -> None:
        self.otel_span = otel_span
        self._trace_id: str | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        self.otel_span.set_attribute(key, value)

    def record_exception(self, exc: BaseException) -> None:
        self.otel_span.record_exception(exc)
        self.otel_span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    def set_error(self, description: str) -> None:
        self.otel_span.set_status(Status(StatusCode.ERROR, description))

    @property
    def trace_id(self) -> str | None:
        if self._trace_id is None:
            ctx = self.otel_span.get_span_context()
            if not ctx.is_valid:
                return None
            self._trace_id = format(ctx.trace_id, "032x")
        return self._trace_id

    @property
    def sampled(self) -> bool:
        return self.otel_span.get_span_context().trace_flags.sampled


class SpanScope:
    """Context manager for one span made current; cheaper than the SDK's generator-based one."""

    __slots__ = ("_tracing", "_name", "_attributes", "_parent", "_kind", "_handle", "_token")

    def __init__(self, tracing, name, attributes, parent, kind) -> None:
        self._tracing = tracing
        self._name = name
        self._attributes = attributes
        self._parent = parent
        self._kind = kind

    def __enter__(self) -> SpanHandle:
        parent_ctx = None
        if self._parent is not None:
            try:
                parent_ctx = PROPAGATOR.extract(self._parent)
            except Exception:  # metadata from a client is untrusted input: a bad carrier starts a new trace
                parent_ctx = otel_context.Context()
        otel_span = self._tracing.start_span(self._name, parent_ctx, KINDS.get(self._kind, SpanKind.INTERNAL),
                                             self._attributes)
        self._token = otel_context.attach(trace.set_span_in_context(otel_span))
        self._handle = SpanHandle(otel_span)
        return self._handle

    def __exit__(self, exc_type, exc, tb) -> bool:
        otel_span = self._handle.otel_span
        try:
            if exc is not None and not isinstance(exc, GeneratorExit):
                otel_span.record_exception(exc)
                otel_span.set_status(Status(StatusCode.ERROR, f"{exc_type.__name__}: {exc}"))
        finally:
            otel_context.detach(self._token)
            otel_span.end()
        return False


class Tracing:
    """A TracerProvider of our own with one drop-counting batch pipeline."""

    def __init__(
        self,
        service_name: str,
        exporter: SpanExporter,
        sampler: sampling.Sampler,
        on_drop: Callable[[int], None],
        *,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        schedule_delay_millis: float | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        resource = Resource.create({**(resource_attributes or {}), "service.name": service_name})
        self.provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
        self.drops = DropCounter(max_queue_size, on_drop)
        batch = BatchSpanProcessor(
            CountingSpanExporter(exporter, self.drops),
            max_queue_size=max_queue_size,
            max_export_batch_size=min(512, max_queue_size),
            schedule_delay_millis=schedule_delay_millis,
        )
        self.processor = DropCountingSpanProcessor(batch, self.drops)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("exporter")
        # What ``start_span`` needs, read once: the provider's sampler, ids, resource and limits,
        # and the tracer's instrumentation scope (the SDK keeps it on the tracer only).
        self.sampler = self.provider.sampler
        self.id_generator = self.provider.id_generator
        self.resource = self.provider.resource
        self.limits = self.provider._span_limits  # noqa: SLF001 - the SDK's limits from OTEL_* env
        self.scope = self.tracer._instrumentation_scope  # noqa: SLF001

    def start_span(self, name: str, context: otel_context.Context | None, kind: SpanKind,
                   attributes: Mapping[str, Any] | None) -> trace.Span:
        """A started span, decided as the SDK's ``Tracer.start_span`` decides (parent, sampler,
        trace flags); recorded by a ``LeanSpan`` that ends into this pipeline's processor."""
        parent = trace.get_current_span(context).get_span_context()
        if not parent.is_valid:
            parent = None
            trace_id = self.id_generator.generate_trace_id()
            random_trace_id = self.id_generator.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_trace_id = parent.trace_flags.random_trace_id
        result = self.sampler.should_sample(context, trace_id, name, kind, attributes, None)
        flags = TraceFlags.SAMPLED if result.decision.is_sampled() else TraceFlags.DEFAULT
        if random_trace_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(trace_id, self.id_generator.generate_span_id(), is_remote=False,
                                   trace_flags=TraceFlags(flags), trace_state=result.trace_state)
        if not result.decision.is_recording():
            return NonRecordingSpan(span_context)
        # As the SDK: the span records the attributes the sampler returns (the given ones, for its samplers).
        return LeanSpan(self, name, span_context, parent, kind, dict(result.attributes))

    def finish(self, span: LeanSpan) -> None:
        """An ended span into the batch pipeline (the SDK's processors never see it start:
        ours does nothing at start)."""
        try:
            self.processor.on_end(span.readable())
        except Exception as exc:  # telemetry must not raise into the service
            log.warning("span %s not recorded: %r", span._name, exc)  # noqa: SLF001

    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        parent: Mapping[str, str] | None = None,
        kind: str = "internal",
    ) -> SpanScope:
        return SpanScope(self, name, attributes, parent, kind)

    def force_flush(self, timeout_seconds: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_seconds * 1000))

    def shutdown(self) -> None:
        self.provider.shutdown()


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current span's W3C trace context into ``carrier`` (nothing when there is none)."""
    PROPAGATOR.inject(carrier)


def current_trace_ids() -> tuple[str | None, str | None, bool]:
    """(trace_id, span_id, sampled) of the current span, hex, or Nones outside any span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None, False
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"), ctx.trace_flags.sampled
