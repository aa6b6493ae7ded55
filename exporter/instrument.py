"""``instrument()``: one call that gives a service its metrics, spans and logs.

``Telemetry`` implements every hook of ``exporter.hooks.NoopTelemetry``. On the message path
each hook is a dict lookup of a child resolved at start-up plus one or two increments:
counters move by the recipient count once per fan-out, histograms of outgoing sizes take a
weighted observation, nothing is formatted before a scrape or an export. No hook blocks or
raises into the service.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
import types
import weakref
from typing import Any, ContextManager, Mapping, MutableMapping

from prometheus_client import CollectorRegistry, ProcessCollector

from exporter import catalog
from exporter.config import Settings, resolve_settings
from exporter.hooks import NoopTelemetry, Span
from exporter.metrics import Metrics
from exporter.util import RateLimitedLog, run_in_daemon

log = logging.getLogger("exporter")

DEFAULT_LOGGER_NAME = "instrumented_server"
DEFAULT_EXPORT_TIMEOUT_SECONDS = 5.0
DEFAULT_QUEUE_SIZE = 2048
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 5.0


class _NoopScope:
    """A reusable context manager yielding the no-op span (tracing off): no allocation per call."""

    __slots__ = ()
    _span = Span()

    def __enter__(self) -> Span:
        return self._span

    def __exit__(self, *exc_info) -> bool:
        return False


_NOOP_SCOPE = _NoopScope()


class Telemetry:
    """Metrics, spans and logs behind the ``NoopTelemetry`` hooks."""

    enabled = True

    def __init__(self, settings: Settings, *, logger: logging.Logger, metrics: Metrics,
                 tracing=None, log_setup=None) -> None:
        self.settings = settings
        self.logger = logger
        self.metrics = metrics
        self.registry = metrics.registry
        self.tracing = tracing
        self.log_setup = log_setup
        self._hook_failures = RateLimitedLog(log)
        self._shut_down = False

        # Children resolved once, as bound increments; the hooks below only look them up
        # and call them. Counter steps are never negative: the hooks check before calling.
        # Metrics with a transport label are looked up [transport][value]: one more dict lookup.
        self._connections = metrics.per_transport(catalog.CONNECTIONS_TOTAL.name)
        self._active = metrics.per_transport(catalog.ACTIVE_CONNECTIONS.name)
        self._disconnections = metrics.per_transport(catalog.DISCONNECTIONS_TOTAL.name)
        self._reconnects = metrics.incrementers(catalog.RECONNECTS_TOTAL.name)
        self._received = metrics.incrementers(catalog.MESSAGES_RECEIVED_TOTAL.name)
        self._sent = metrics.per_transport(catalog.MESSAGES_SENT_TOTAL.name)
        self._duration = metrics.observers(catalog.MESSAGE_DURATION_SECONDS.name)
        sizes = metrics.observers(catalog.MESSAGE_SIZE_BYTES.name)
        self._size_in = sizes["in"]
        self._size_out = sizes["out"]
        self._errors = metrics.incrementers(catalog.ERRORS_TOTAL.name)
        self._rate_limited = metrics.incrementers(catalog.RATE_LIMITED_TOTAL.name)
        self._subscriptions = metrics.incrementers(catalog.SUBSCRIPTIONS.name)
        self._fanout_inc = metrics.incrementers(catalog.FANOUT_MESSAGES_TOTAL.name)
        self._broker_lag = metrics.observers(catalog.BROKER_LAG_SECONDS.name)
        dropped = metrics.children(catalog.TELEMETRY_DROPPED_TOTAL.name)
        self.count_dropped_spans = dropped["spans"].inc
        self.count_dropped_logs = dropped["logs"].inc

        if tracing is not None:
            from exporter.tracing import SpanHandle, current_trace_ids, inject

            self._span_handle_type = SpanHandle
            self._current_trace_ids = current_trace_ids
            self._inject = inject
        self._exit_hook = _weak_exit_hook(self)
        atexit.register(self._exit_hook)

    def _failed(self, hook: str, exc: BaseException) -> None:
        self._hook_failures.warning("telemetry hook %s failed: %r", hook, exc)

    # connection lifecycle
    def connection_opened(self, namespace: str, transport: str = "websocket") -> None:
        try:
            self._connections[transport]["accepted"](1)
            self._active[transport][namespace](1)
        except Exception as exc:
            self._failed("connection_opened", exc)

    def connection_rejected(self, status: str, transport: str = "websocket") -> None:
        try:
            self._connections[transport][status](1)
        except Exception as exc:
            self._failed("connection_rejected", exc)

    def connection_closed(self, namespace: str, code: int, transport: str = "websocket") -> None:
        try:
            self._active[transport][namespace](-1)
            self._disconnections[transport][code](1)
        except Exception as exc:
            self._failed("connection_closed", exc)

    def reconnect(self, outcome: str) -> None:
        try:
            self._reconnects[outcome](1)
        except Exception as exc:
            self._failed("reconnect", exc)

    # message path
    def message_received(self, type: str, size: int) -> None:  # noqa: A002 - the hook's name
        try:
            self._received[type](1)
            self._size_in(size)
        except Exception as exc:
            self._failed("message_received", exc)

    def message_handled(self, type: str, seconds: float, span: Span | None = None) -> None:  # noqa: A002
        try:
            observe = self._duration[type]
            if self.tracing is not None:
                # An exemplar links the latency bucket to a trace that was kept (sampled).
                if isinstance(span, self._span_handle_type):
                    if span.sampled:
                        observe.observe_with_exemplar(seconds, {"trace_id": span.trace_id})
                        return
                else:
                    trace_id, _, sampled = self._current_trace_ids()
                    if sampled:
                        observe.observe_with_exemplar(seconds, {"trace_id": trace_id})
                        return
            observe(seconds)
        except Exception as exc:
            self._failed("message_handled", exc)

    def messages_sent(self, type: str, recipients: int, size: int, transport: str = "websocket") -> None:  # noqa: A002
        try:
            if recipients > 0:
                self._sent[transport][type](recipients)
                self._size_out(size, recipients)
        except Exception as exc:
            self._failed("messages_sent", exc)

    def fanout(self, recipients: int, transport: str = "websocket") -> None:
        try:
            if recipients > 0:
                self._fanout_inc[transport](recipients)
        except Exception as exc:
            self._failed("fanout", exc)

    # faults and limits
    def error(self, reason: str) -> None:
        try:
            self._errors[reason](1)
        except Exception as exc:
            self._failed("error", exc)

    def rate_limited(self, scope: str) -> None:
        try:
            self._rate_limited[scope](1)
        except Exception as exc:
            self._failed("rate_limited", exc)

    # state
    def subscriptions_changed(self, namespace: str, delta: int) -> None:
        try:
            self._subscriptions[namespace](delta)
        except Exception as exc:
            self._failed("subscriptions_changed", exc)

    def broker_lag(self, broker: str, seconds: float) -> None:
        try:
            self._broker_lag[broker](seconds)
        except Exception as exc:
            self._failed("broker_lag", exc)

    # tracing
    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        parent: Mapping[str, str] | None = None,
        kind: str = "internal",
    ) -> ContextManager[Span]:
        """A span made current for the ``with`` block.

        ``parent`` is a message's metadata: the span continues the trace it carries
        (``traceparent``), or starts a new trace when it carries none. Without ``parent``
        the span is a child of the current span.
        """
        if self.tracing is None:
            return _NOOP_SCOPE
        return self.tracing.span(name, attributes, parent, kind)

    def inject(self, carrier: MutableMapping[str, str]) -> None:
        """Write the current trace context (traceparent, tracestate) into ``carrier``."""
        if self.tracing is not None:
            self._inject(carrier)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The /metrics body and its content type (OpenMetrics when ``accept`` asks, for exemplars)."""
        return self.metrics.exposition(accept)

    def force_flush(self, timeout_seconds: float = 5.0) -> None:
        """Export queued spans and logs now (tests, or before a planned exit)."""
        if self.tracing is not None:
            run_in_daemon(self.tracing.provider.force_flush, "span-flush").wait(timeout_seconds)
        shipper = self.log_setup.shipper if self.log_setup is not None else None
        if shipper is not None and hasattr(shipper, "force_flush"):
            shipper.force_flush(timeout_seconds)

    def shutdown(self, timeout_seconds: float = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS) -> None:
        """Flush and stop exporters; returns within ``timeout_seconds`` even if a backend hangs."""
        if self._shut_down:
            return
        self._shut_down = True
        atexit.unregister(self._exit_hook)
        deadline = time.monotonic() + max(0.0, timeout_seconds)
        # Traces and logs shut down side by side, so a dead backend costs the timeout once.
        traces_done = run_in_daemon(self.tracing.shutdown, "span-shutdown") if self.tracing is not None else None
        complete = True
        if self.log_setup is not None:
            complete = self.log_setup.shutdown(max(0.0, deadline - time.monotonic()))
        if traces_done is not None:
            complete = traces_done.wait(max(0.0, deadline - time.monotonic())) and complete
        if not complete:
            log.warning("telemetry shutdown hit its %.1fs timeout; unsent records dropped", timeout_seconds)


def _weak_exit_hook(telemetry: Telemetry):
    """An atexit hook that does not keep the instance alive."""
    ref = weakref.ref(telemetry)

    def hook() -> None:
        instance = ref()
        if instance is not None:
            instance.shutdown(2.0)

    return hook


def _positive(name: str, value, default):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def instrument(
    service_name: str | None = None,
    *,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    traces: str | None = None,
    sampler: str | None = None,
    sampler_ratio: float | None = None,
    logs: str | None = None,
    loki_url: str | None = None,
    enabled: bool | None = None,
    logger: logging.Logger | str | None = None,
    log_stdout: bool = True,
    log_level: int | str | None = logging.INFO,
    registry: CollectorRegistry | None = None,
    span_exporter=None,
    log_exporter=None,
    export_timeout: float | None = None,
    export_interval: float | None = None,
    queue_size: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Telemetry | NoopTelemetry:
    """Metrics, spans and logs for a service, configured by arguments, then ``OTEL_*``, then defaults.

    - ``service_name``: ``service.name`` of spans and logs (``OTEL_SERVICE_NAME``).
    - ``otlp_endpoint``: collector base URL, e.g. ``http://127.0.0.1:4318``
      (``OTEL_EXPORTER_OTLP_ENDPOINT``); without one nothing leaves the process: metrics only.
    - ``otlp_protocol``: ``http/protobuf`` (default) or ``grpc`` (``OTEL_EXPORTER_OTLP_PROTOCOL``).
    - ``traces``: ``otlp`` or ``none`` (``OTEL_TRACES_EXPORTER``); on when an endpoint is set.
    - ``sampler``/``sampler_ratio``: an ``OTEL_TRACES_SAMPLER`` name and its ratio
      (``OTEL_TRACES_SAMPLER_ARG``); a ratio alone means ``parentbased_traceidratio``.
      Default ``parentbased_always_on``.
    - ``logs``: ``otlp``, ``loki`` or ``none`` (``OTEL_LOGS_EXPORTER``; ``console`` = none);
      default loki when a Loki URL is set, else otlp when an endpoint is set, else none.
    - ``loki_url``: Loki base or push URL (``LOKI_URL``).
    - ``enabled=False`` (or ``OTEL_SDK_DISABLED=true``) returns ``NoopTelemetry``.
    - ``logger``: the logger (or its name) whose records get JSON, trace ids and shipping;
      ``log_stdout`` prints JSON lines to stdout; ``log_level`` is set only on a logger that
      has none. Handlers are removed again by ``shutdown()``.
    - ``registry``: a prometheus_client registry to use instead of a fresh one.
    - ``span_exporter``/``log_exporter``: SDK exporters to use instead of OTLP (tests, consoles).
    - ``export_timeout``/``export_interval`` (seconds), ``queue_size``: the batch pipelines' limits.
    - ``environ``: the environment to read (default ``os.environ``).

    A bad argument raises ``ValueError``; a bad environment value is logged and ignored.
    """
    env = os.environ if environ is None else environ
    settings = resolve_settings(
        env, service_name=service_name, otlp_endpoint=otlp_endpoint, otlp_protocol=otlp_protocol,
        traces=traces, sampler=sampler, sampler_ratio=sampler_ratio, logs=logs, loki_url=loki_url,
        enabled=enabled, has_span_exporter=span_exporter is not None, has_log_exporter=log_exporter is not None,
    )
    timeout = _positive("export_timeout", export_timeout, DEFAULT_EXPORT_TIMEOUT_SECONDS)
    interval = _positive("export_interval", export_interval, None)
    size = int(_positive("queue_size", queue_size, DEFAULT_QUEUE_SIZE))
    if logger is None or isinstance(logger, str):
        logger = logging.getLogger(logger or DEFAULT_LOGGER_NAME)
    elif not isinstance(logger, logging.Logger):
        raise ValueError(f"logger must be a logging.Logger or a logger name, got {logger!r}")
    level = logging.getLevelName(log_level.upper()) if isinstance(log_level, str) else log_level
    if level is not None and not isinstance(level, int):
        raise ValueError(f"log_level must be a logging level, got {log_level!r}")

    if not settings.enabled:
        return NoopTelemetry(logger)

    metrics = Metrics(registry=registry)
    if registry is None:
        # A fresh registry lacks what prometheus_client's default one has: the process's CPU,
        # memory and file descriptors (process_open_fds / process_max_fds), which the process
        # row of the WebSocket dashboard and ProcessNearFileDescriptorLimit read. A registry the
        # caller passes keeps its own collectors (the default one has these already).
        ProcessCollector(registry=metrics.registry)
    dropped = metrics.children(catalog.TELEMETRY_DROPPED_TOTAL.name)
    schedule_delay = interval * 1000 if interval is not None else None

    tracing = None
    if settings.traces_enabled:
        from exporter import tracing as tracing_module

        exporter = span_exporter or tracing_module.otlp_span_exporter(
            settings.otlp_endpoint, settings.otlp_protocol, timeout)
        tracing = tracing_module.Tracing(
            settings.service_name, exporter,
            tracing_module.make_sampler(settings.sampler, settings.sampler_ratio),
            dropped["spans"].inc, max_queue_size=size, schedule_delay_millis=schedule_delay,
        )

    from exporter import logging as logging_module

    shipper = None
    if settings.logs == "otlp":
        exporter = log_exporter or logging_module.otlp_log_exporter(
            settings.otlp_endpoint, settings.otlp_protocol, timeout)
        shipper = logging_module.OtlpLogShipper(
            settings.service_name, exporter, dropped["logs"].inc, queue_size=size, schedule_delay_millis=schedule_delay)
    elif settings.logs == "loki":
        shipper = logging_module.LokiShipper(
            settings.loki_url, settings.service_name, dropped["logs"].inc, queue_size=size, timeout=timeout)
    log_setup = logging_module.LogSetup(logger, settings.service_name, stdout=log_stdout, shipper=shipper, level=level)

    return Telemetry(settings, logger=logger, metrics=metrics, tracing=tracing, log_setup=log_setup)


class _CallableModule(types.ModuleType):
    """Importing ``exporter.instrument`` makes it an attribute of the package, hiding the lazy
    ``exporter.instrument`` function; a callable module keeps ``exporter.instrument(...)`` working."""

    def __call__(self, *args, **kwargs):
        return instrument(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
