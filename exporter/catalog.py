"""The metric catalog: the one place where metric names, types, labels, buckets and help live.

The exporter registers exactly these metrics, and the generator's dashboards and alerts
read the same names from here, so a renamed metric cannot leave a panel on "No data"
or an alert that never fires.

This module is pure data (no I/O, no third-party imports) so that the generator can
import it without pulling in the telemetry SDKs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]

# Seconds. Tuned for a real-time service: most messages are handled in well under 10 ms,
# the upper buckets catch stalls that users notice.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
# Bytes: from a small control frame to the default 1 MiB message limit.
SIZE_BUCKETS: tuple[float, ...] = (
    64, 256, 1024, 4096, 16384, 65536, 262144, 1048576,
)
# Seconds between a publish on one process and its arrival from the broker on another.
BROKER_LAG_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)


@dataclass(frozen=True)
class Metric:
    """One metric as exposed on /metrics.

    ``name`` is the exposition name: counters carry their ``_total`` suffix here, because
    that is what PromQL in dashboards and alerts must use. ``label_values`` documents the
    bounded set of values each label may take (never a user id or channel name).
    """

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    label_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Values whose series exist at zero from the first scrape; None: every label_values entry.
    # Only values that occur on a healthy service belong here: a pre-created series that never
    # moves is a flat 0 (or a NaN quantile) on every dashboard.
    precreate: dict[str, tuple[str, ...]] | None = None

    def precreated(self, label: str) -> tuple[str, ...]:
        if self.precreate is None:
            return self.label_values.get(label, ())
        return self.precreate.get(label, ())

    @property
    def base_name(self) -> str:
        """The name prometheus_client expects (it appends ``_total`` to counters itself)."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


CONNECTION_STATUSES = ("accepted", "auth_missing", "auth_failed", "origin_denied", "rate_limited", "error")
ERROR_REASONS = (
    "malformed", "invalid_utf8", "unknown_type", "too_large", "forbidden", "not_found",
    "rate_limited", "slow_consumer", "broker", "internal",
)
# Which transport a client uses: the server's WebSocket protocol or its Server-Sent Events stream.
TRANSPORTS = ("websocket", "sse")
MESSAGE_TYPES = (
    "connect", "subscribe", "unsubscribe", "publish", "presence", "history", "ping",
    "message", "join", "leave", "ack", "error", "reconnect", "other",
)
# What a client sends (instrumented_server.protocol.COMMAND_TYPES; "other" counts what did not
# parse) and what a server sends (protocol.EVENT_LABEL's values): the series pre-created per direction.
CLIENT_MESSAGE_TYPES = ("connect", "subscribe", "unsubscribe", "publish", "presence", "history", "ping", "other")
SERVER_MESSAGE_TYPES = ("connect", "ack", "message", "join", "leave", "error", "unsubscribe", "other")
# The close code of a normal closure: what a healthy service's disconnections carry.
NORMAL_CLOSE_CODE = "1000"

CONNECTIONS_TOTAL = Metric(
    "websocket_connections_total", "counter",
    "Connection attempts (WebSocket upgrades, SSE stream requests), by outcome and transport.",
    labels=("status", "transport"), label_values={"status": CONNECTION_STATUSES, "transport": TRANSPORTS},
)
ACTIVE_CONNECTIONS = Metric(
    "websocket_active_connections", "gauge",
    "Connections currently open, by transport.",
    labels=("namespace", "transport"), label_values={"transport": TRANSPORTS},
)
DISCONNECTIONS_TOTAL = Metric(
    "websocket_disconnections_total", "counter",
    "Closed connections, by close code (1000 normal, 1001 going away, 1006 abnormal, 4xxx application) and transport.",
    labels=("code", "transport"), label_values={"transport": TRANSPORTS}, precreate={"code": (NORMAL_CLOSE_CODE,)},
)
MESSAGES_RECEIVED_TOTAL = Metric(
    "websocket_messages_received_total", "counter",
    "Messages received from clients, by message type.",
    labels=("type",), label_values={"type": MESSAGE_TYPES}, precreate={"type": CLIENT_MESSAGE_TYPES},
)
MESSAGES_SENT_TOTAL = Metric(
    "websocket_messages_sent_total", "counter",
    "Messages sent to clients, by message type and transport; a fan-out counts once per recipient.",
    labels=("type", "transport"), label_values={"type": MESSAGE_TYPES, "transport": TRANSPORTS},
    precreate={"type": SERVER_MESSAGE_TYPES},
)
MESSAGE_DURATION_SECONDS = Metric(
    "websocket_message_duration_seconds", "histogram",
    "Time from receiving a client message to finishing its handling, including fan-out.",
    labels=("type",), buckets=LATENCY_BUCKETS, label_values={"type": MESSAGE_TYPES},
    precreate={"type": CLIENT_MESSAGE_TYPES},
)
MESSAGE_SIZE_BYTES = Metric(
    "websocket_message_size_bytes", "histogram",
    "Size of WebSocket messages in bytes, by direction.",
    labels=("direction",), buckets=SIZE_BUCKETS, label_values={"direction": ("in", "out")},
)
ERRORS_TOTAL = Metric(
    "websocket_errors_total", "counter",
    "Errors while handling connections and messages, by reason.",
    labels=("reason",), label_values={"reason": ERROR_REASONS},
)
RATE_LIMITED_TOTAL = Metric(
    "websocket_rate_limited_total", "counter",
    "Messages or connections refused by a rate limit, by scope.",
    labels=("scope",), label_values={"scope": ("connection", "ip")},
)
SUBSCRIPTIONS = Metric(
    "websocket_subscriptions", "gauge",
    "Channel subscriptions currently held, by channel namespace.",
    labels=("namespace",),
)
FANOUT_MESSAGES_TOTAL = Metric(
    "websocket_fanout_messages_total", "counter",
    "Deliveries made by channel fan-out (one per recipient of each published message), by transport.",
    labels=("transport",), label_values={"transport": TRANSPORTS},
)
BROKER_LAG_SECONDS = Metric(
    "websocket_broker_lag_seconds", "histogram",
    "Delay between a publish and its arrival through the broker backplane.",
    labels=("broker",), buckets=BROKER_LAG_BUCKETS, label_values={"broker": ("memory", "redis")},
    # Only the broker that runs observes lag: its series appears with its first delivery.
    precreate={"broker": ()},
)
RECONNECTS_TOTAL = Metric(
    "websocket_reconnects_total", "counter",
    "Clients that reconnected with a last offset, by outcome (replayed or told to resync).",
    labels=("outcome",), label_values={"outcome": ("replayed", "resync")},
)
TELEMETRY_DROPPED_TOTAL = Metric(
    "websocket_telemetry_dropped_total", "counter",
    "Telemetry records dropped because a backend was down or slow, by signal.",
    labels=("signal",), label_values={"signal": ("logs", "spans")},
)

CATALOG: tuple[Metric, ...] = (
    CONNECTIONS_TOTAL,
    ACTIVE_CONNECTIONS,
    DISCONNECTIONS_TOTAL,
    MESSAGES_RECEIVED_TOTAL,
    MESSAGES_SENT_TOTAL,
    MESSAGE_DURATION_SECONDS,
    MESSAGE_SIZE_BYTES,
    ERRORS_TOTAL,
    RATE_LIMITED_TOTAL,
    SUBSCRIPTIONS,
    FANOUT_MESSAGES_TOTAL,
    BROKER_LAG_SECONDS,
    RECONNECTS_TOTAL,
    TELEMETRY_DROPPED_TOTAL,
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOG}


def metric(name: str) -> Metric:
    """The catalog entry for ``name``; a KeyError names the known metrics."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the metric catalog; known: {', '.join(sorted(BY_NAME))}") from None

# Socket.IO services only (exporter/socketio.py), so kept out of CATALOG: a `websockets` service never
# ends a connection for these reasons. websocket_disconnections_total{code} still counts every Socket.IO
# disconnection, under the close code each reason corresponds to, which the alert pack reads.
SOCKETIO_DISCONNECT_REASONS = (
    "client_disconnect", "server_disconnect", "ping_timeout", "transport_close", "transport_error", "other",
)
SOCKETIO_DISCONNECTIONS_TOTAL = Metric(
    "socketio_disconnections_total", "counter",
    "Socket.IO namespace disconnections, by Socket.IO namespace and Socket.IO's disconnect reason.",
    labels=("namespace", "reason"), label_values={"reason": SOCKETIO_DISCONNECT_REASONS},
)
SOCKETIO_CATALOG: tuple[Metric, ...] = (SOCKETIO_DISCONNECTIONS_TOTAL,)
