"""The seam between a WebSocket service and its telemetry.

A service calls these hooks on its connection and message paths. ``NoopTelemetry`` does
nothing, so a service runs unchanged (and measurably cheaper) with telemetry switched off;
``exporter.instrument()`` returns a real implementation with the same methods.

Hooks on the message path are called once per fan-out with the recipient count, never once
per recipient. None of them may block or raise into the service.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ContextManager, Iterator, Mapping, MutableMapping


class Span:
    """What ``Telemetry.span`` yields: a handle to add facts to the current span."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:  # noqa: D102 - no-op
        pass

    def record_exception(self, exc: BaseException) -> None:  # noqa: D102 - no-op
        pass

    def set_error(self, description: str) -> None:  # noqa: D102 - no-op
        pass

    @property
    def trace_id(self) -> str | None:
        """The hex trace id, or None when tracing is off."""
        return None


_NOOP_SPAN = Span()


class NoopTelemetry:
    """Telemetry switched off: every hook is a cheap no-op."""

    enabled = False

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("instrumented_server")

    # connection lifecycle
    # ``transport``: "websocket" or "sse" (the label of the same name)
    def connection_opened(self, namespace: str, transport: str = "websocket") -> None: ...
    def connection_rejected(self, status: str, transport: str = "websocket") -> None: ...
    def connection_closed(self, namespace: str, code: int, transport: str = "websocket") -> None: ...
    def reconnect(self, outcome: str) -> None: ...

    # message path: each called once per message or once per fan-out
    def message_received(self, type: str, size: int) -> None: ...
    def message_handled(self, type: str, seconds: float, span: Span | None = None) -> None: ...
    def messages_sent(self, type: str, recipients: int, size: int, transport: str = "websocket") -> None: ...
    def fanout(self, recipients: int, transport: str = "websocket") -> None: ...

    # faults and limits
    def error(self, reason: str) -> None: ...
    def rate_limited(self, scope: str) -> None: ...

    # state
    def subscriptions_changed(self, namespace: str, delta: int) -> None: ...
    def broker_lag(self, broker: str, seconds: float) -> None: ...

    # tracing: W3C trace context travels inside message metadata
    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        parent: Mapping[str, str] | None = None,
        kind: str = "internal",
    ) -> ContextManager[Span]:
        return _noop_span()

    def inject(self, carrier: MutableMapping[str, str]) -> None:
        """Write the current trace context (traceparent, tracestate) into ``carrier``."""

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The /metrics body and its content type (OpenMetrics when ``accept`` asks, for exemplars)."""
        return b"", "text/plain; version=0.0.4; charset=utf-8"

    def shutdown(self, timeout_seconds: float = 5.0) -> None:
        """Flush and stop exporters within ``timeout_seconds``."""


@contextlib.contextmanager
def _noop_span() -> Iterator[Span]:
    yield _NOOP_SPAN
