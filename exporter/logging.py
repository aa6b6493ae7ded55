"""Structured logs: JSON lines carrying ``trace_id``/``span_id``, shipped to OTLP or Loki.

Every record gets the ids of the span current when it was logged (stamped by a handler
filter in the logging thread, because shipping happens on another thread where that span is
not current). Shipping never blocks the caller and never raises into it:

- ``otlp``: the OpenTelemetry logs SDK (``LoggerProvider`` + ``BatchLogRecordProcessor`` +
  OTLP exporter); the trace ids travel as the OTLP record's own trace context.
- ``loki``: python-logging-loki behind a ``QueueHandler`` with a bounded queue and a
  ``QueueListener`` thread; its HTTP calls get a timeout (the library sets none).

Records lost on the way (queue full, backend down) are reported through ``on_drop``, which
the exporter wires to ``websocket_telemetry_dropped_total{signal="logs"}``.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener
from typing import Any, Callable, Sequence

import logging_loki
import requests
from opentelemetry import context as otel_context
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource

from exporter.tracing import DropCounter, current_trace_ids
from exporter.util import RateLimitedLog, call_with_timeout

internal_log = logging.getLogger("exporter.logging")

DEFAULT_QUEUE_SIZE = 2048
DEFAULT_HTTP_TIMEOUT_SECONDS = 5.0
# Records from these loggers are printed but never shipped: the shippers log their own
# failures through them, and shipping those would feed a loop while a backend is down.
NOT_SHIPPED = ("exporter", "opentelemetry", "urllib3", "requests", "logging_loki", "grpc")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "trace_id", "span_id", "taskName",
}


class TraceContextFilter(logging.Filter):
    """Stamps ``trace_id`` and ``span_id`` (hex, or None) of the current span on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            record.trace_id, record.span_id, _ = current_trace_ids()
        return True


class NotOwnLogsFilter(logging.Filter):
    """Keeps the exporter's and the SDKs' own records away from the shipping handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return not any(name == p or name.startswith(p + ".") for p in NOT_SHIPPED)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, service, trace ids, extras."""

    def __init__(self, service_name: str, static_fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = {"service_name": service_name, **(static_fields or {})}

    def format(self, record: logging.LogRecord) -> str:
        trace_id = getattr(record, "trace_id", None)
        span_id = getattr(record, "span_id", None)
        if not hasattr(record, "trace_id"):
            trace_id, span_id, _ = current_trace_ids()
        out = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.fields,
            "trace_id": trace_id,
            "span_id": span_id,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        for key in sorted(set(vars(record)) - _STANDARD_ATTRS):
            out.setdefault(key, getattr(record, key))
        return json.dumps(out, default=str, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Loki: python-logging-loki behind a bounded queue


class BoundedQueueHandler(QueueHandler):
    """A QueueHandler whose queue is bounded: a full queue drops the record and counts it."""

    def __init__(self, q: queue.Queue, on_drop: Callable[[int], None]) -> None:
        super().__init__(q)
        self.on_drop = on_drop

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.on_drop(1)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Resolve what cannot cross threads (args, traceback) but leave the JSON to the
        # listener thread, so the caller pays for a copy, not for serialisation.
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class BoundedQueueListener(QueueListener):
    """A QueueListener whose ``stop`` honours a deadline and counts what it leaves behind."""

    def __init__(self, q: queue.Queue, handler: logging.Handler, on_drop: Callable[[int], None]) -> None:
        super().__init__(q, handler, respect_handler_level=False)
        self.on_drop = on_drop

    def stop(self, timeout: float = DEFAULT_HTTP_TIMEOUT_SECONDS) -> bool:  # type: ignore[override]
        thread = self._thread
        if thread is None:
            return True
        while True:  # make room for the sentinel in a full queue; the evicted record is a drop
            try:
                self.queue.put_nowait(self._sentinel)
                break
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.on_drop(1)
                except queue.Empty:
                    pass
        thread.join(timeout)
        if thread.is_alive():  # stuck on a dead backend: give up on what is still queued
            lost = 0
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is not self._sentinel:
                    lost += 1
            if lost:
                self.on_drop(lost)
            return False
        self._thread = None
        return True


class TimeoutSession(requests.Session):
    """The session python-logging-loki posts with, given the timeout the library never sets."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


class LokiHandler(logging_loki.LokiHandler):
    """python-logging-loki's handler with a timeout, counting a failed push as a dropped record."""

    def __init__(self, *args, on_drop: Callable[[int], None], timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_drop = on_drop
        self._failures = RateLimitedLog(internal_log)
        self.emitter.session_class = functools.partial(TimeoutSession, timeout)

    def handle(self, record: logging.LogRecord) -> bool:
        # Only the listener thread calls this handler, so it needs no lock; and without one,
        # logging.shutdown() at interpreter exit (which takes every handler's lock) never waits
        # behind a push stuck on a hung Loki.
        passed = bool(self.filter(record))
        if passed:
            self.emit(record)
        return passed

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        # Instead of logging's traceback on stderr for every record while Loki is down.
        self.emitter.close()
        self.on_drop(1)
        self._failures.warning("Loki push to %s failed (%r); records dropped", self.emitter.url, sys.exc_info()[1])


class LokiShipper:
    """Ships JSON lines to Loki from a listener thread fed by a bounded queue."""

    def __init__(
        self,
        url: str,
        service_name: str,
        on_drop: Callable[[int], None],
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        timeout: float = DEFAULT_HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.loki = LokiHandler(
            url=url, tags={"service_name": service_name}, version="1", on_drop=on_drop, timeout=timeout,
        )
        self.loki.setFormatter(JsonFormatter(service_name))
        self.handler = BoundedQueueHandler(self.queue, on_drop)
        self.listener = BoundedQueueListener(self.queue, self.loki, on_drop)
        self.listener.start()

    def shutdown(self, timeout: float) -> bool:
        finished = self.listener.stop(timeout)
        if finished:
            self.loki.close()
        return finished


# ---------------------------------------------------------------------------------------------
# OTLP: the OpenTelemetry logs SDK


def _severity(levelno: int) -> SeverityNumber:
    """OpenTelemetry severity for a stdlib level (ranges 4 wide: DEBUG=5, INFO=9, WARN=13, ERROR=17)."""
    if levelno >= logging.CRITICAL:
        return SeverityNumber.FATAL
    for level, base in ((logging.ERROR, 17), (logging.WARNING, 13), (logging.INFO, 9), (logging.DEBUG, 5)):
        if levelno >= level:
            return SeverityNumber(base + min(3, (levelno - level) * 4 // 10))
    return SeverityNumber.TRACE


class OtlpLogHandler(logging.Handler):
    """Turns stdlib records into OTLP log records; the current span gives their trace context.

    (The SDK's own ``LoggingHandler`` is deprecated in favour of a separate instrumentation
    package; this is the small part of it we need.)
    """

    _OTEL_LEVEL_NAMES = {"WARNING": "WARN", "CRITICAL": "FATAL"}

    def __init__(self, logger_provider, on_drop: Callable[[int], None]) -> None:
        super().__init__()
        self.provider = logger_provider
        self.on_drop = on_drop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attributes = {
                "logger.name": record.name,
                "code.file.path": record.pathname,
                "code.function.name": record.funcName,
                "code.line.number": record.lineno,
            }
            for key in set(vars(record)) - _STANDARD_ATTRS:
                value = getattr(record, key)
                attributes[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
            if record.exc_info and record.exc_info[0] is not None:
                attributes["exception.type"] = record.exc_info[0].__name__
                attributes["exception.message"] = str(record.exc_info[1])
                attributes["exception.stacktrace"] = logging.Formatter().formatException(record.exc_info)
            self.provider.get_logger(record.name).emit(LogRecord(
                timestamp=int(record.created * 1e9),
                context=otel_context.get_current(),
                severity_text=self._OTEL_LEVEL_NAMES.get(record.levelname, record.levelname),
                severity_number=_severity(record.levelno),
                body=record.getMessage(),
                attributes=attributes,
            ))
        except Exception:  # never raise into the service
            self.on_drop(1)


class OtlpLogShipper:
    """A LoggerProvider of our own (never the global one) with a drop-counting batch pipeline."""

    def __init__(
        self,
        service_name: str,
        exporter,
        on_drop: Callable[[int], None],
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        schedule_delay_millis: float | None = None,
    ) -> None:
        self.drops = DropCounter(queue_size, on_drop)
        self.provider = LoggerProvider(resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False)
        batch = BatchLogRecordProcessor(
            CountingLogExporter(exporter, self.drops),
            max_queue_size=queue_size,
            max_export_batch_size=min(512, queue_size),
            schedule_delay_millis=schedule_delay_millis,
        )
        self.provider.add_log_record_processor(DropCountingLogProcessor(batch, self.drops))
        self.handler = OtlpLogHandler(self.provider, on_drop)

    def force_flush(self, timeout: float) -> bool:
        return call_with_timeout(self.provider.force_flush, timeout, "log flush")

    def shutdown(self, timeout: float) -> bool:
        return call_with_timeout(self.provider.shutdown, timeout, "log provider")


def otlp_log_exporter(endpoint: str, protocol: str, timeout: float):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"), timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter

    return HttpExporter(endpoint=f"{endpoint}/v1/logs", timeout=timeout)


class CountingLogExporter(LogRecordExporter):
    """Wraps the real exporter: counts batches leaving the queue and records lost to failed exports."""

    def __init__(self, inner: LogRecordExporter, drops: DropCounter) -> None:
        self.inner = inner
        self.drops = drops
        self._failures = RateLimitedLog(internal_log)

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        self.drops.left(len(batch))
        try:
            result = self.inner.export(batch)
        except Exception as exc:  # an exporter must not kill the worker thread
            self._failures.warning("log export raised %r; records dropped", exc)
            result = LogRecordExportResult.FAILURE
        if result is not LogRecordExportResult.SUCCESS:
            self.drops.on_drop(len(batch))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class DropCountingLogProcessor(LogRecordProcessor):
    """``BatchLogRecordProcessor`` with its queue drops counted (see ``DropCounter``)."""

    def __init__(self, batch: BatchLogRecordProcessor, drops: DropCounter) -> None:
        self.batch = batch
        self.drops = drops
        self._shut = False

    def on_emit(self, log_record) -> None:
        if self._shut:
            self.drops.on_drop(1)
            return
        self.drops.entered()
        self.batch.on_emit(log_record)

    def shutdown(self) -> None:
        self._shut = True
        self.batch.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.batch.force_flush(timeout_millis)


# ---------------------------------------------------------------------------------------------


class LogSetup:
    """The handlers ``instrument()`` put on one logger, removed again by ``shutdown``."""

    def __init__(
        self,
        logger: logging.Logger,
        service_name: str,
        *,
        stdout: bool,
        shipper: LokiShipper | OtlpLogShipper | None,
        level: int | None = logging.INFO,
        stream=None,
    ) -> None:
        self.logger = logger
        self.shipper = shipper
        self.handlers: list[logging.Handler] = []
        self._restore_level = None
        if level is not None and logger.level == logging.NOTSET:
            self._restore_level = logger.level
            logger.setLevel(level)
        if stdout:
            console = logging.StreamHandler(stream or sys.stdout)
            console.setFormatter(JsonFormatter(service_name))
            self.handlers.append(console)
        if shipper is not None:
            shipper.handler.addFilter(NotOwnLogsFilter())
            self.handlers.append(shipper.handler)
        stamp = TraceContextFilter()
        for handler in self.handlers:
            handler.addFilter(stamp)
            logger.addHandler(handler)

    def shutdown(self, timeout: float) -> bool:
        for handler in self.handlers:
            self.logger.removeHandler(handler)
        if self._restore_level is not None:
            self.logger.setLevel(self._restore_level)
        return self.shipper.shutdown(timeout) if self.shipper is not None else True
