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
from typing import Any, Callable, Mapping, MutableMapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode
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
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=f"{endpoint}/v1/traces", timeout=timeout)


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

    __slots__ = ("_tracer", "_name", "_attributes", "_parent", "_kind", "_handle", "_token")

    def __init__(self, tracer, name, attributes, parent, kind) -> None:
        self._tracer = tracer
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
        otel_span = self._tracer.start_span(
            self._name, context=parent_ctx, kind=KINDS.get(self._kind, SpanKind.INTERNAL),
            attributes=self._attributes,
        )
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

    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        parent: Mapping[str, str] | None = None,
        kind: str = "internal",
    ) -> SpanScope:
        return SpanScope(self.tracer, name, attributes, parent, kind)

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
