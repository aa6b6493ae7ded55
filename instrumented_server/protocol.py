"""The wire protocol, sans I/O: JSON envelopes in, typed commands out; events in, frame bytes out.

Every message is a JSON object ``{"type", "payload", "metadata"}``. Clients send *commands*
(``COMMAND_TYPES``); the server sends *events* (``EVENT_TYPES``). The two sets do not overlap,
so a client can never make the server (or another client) believe an event came from the server.

Parsing never raises: a bad message becomes a ``ProtocolError`` carrying a documented error code
(``ErrorCode``) and the correlation id if one could be read, so the caller can reply with an
``error`` event and carry on. Close codes live here too (``CloseCode``), with the reason each is
used; ``docs/server.md`` has the table.

There is no I/O in this module (no network, no files, no event loop): it is tested by feeding
it values and comparing what comes out.
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

# ---------------------------------------------------------------------------------------------
# Close codes


class CloseCode(enum.IntEnum):
    """Close codes the server sends (RFC 6455 ones where they fit, 4xxx for the application)."""

    NORMAL = 1000  # the client asked to close, or the server closes a finished session
    GOING_AWAY = 1001  # the server is draining (shutdown, deploy): reconnect, to another node if any
    UNSUPPORTED_DATA = 1003  # a binary frame: the protocol is JSON text only
    ABNORMAL = 1006  # never sent: seen when the TCP connection drops without a close frame
    INVALID_DATA = 1007  # a text frame that is not valid UTF-8 (sent by websockets itself)
    POLICY_VIOLATION = 1008  # a client that keeps breaking the protocol
    MESSAGE_TOO_BIG = 1009  # a frame above the transport limit, refused before it is buffered
    INTERNAL_ERROR = 1011  # a bug on the server side; reconnecting is safe
    AUTH_REQUIRED = 4001  # no token in the upgrade request (Authorization header or cookie)
    AUTH_FAILED = 4002  # a token that is malformed, badly signed, expired or for another audience
    ORIGIN_NOT_ALLOWED = 4003  # the Origin header is not in the allow-list
    RATE_LIMITED = 4004  # the client kept sending above its rate limit
    MESSAGE_TOO_LARGE = 4005  # a message above the application's message size limit
    TOKEN_EXPIRED = 4006  # the token expired mid-connection and was not refreshed in time
    SLOW_CONSUMER = 4008  # the client did not read fast enough; its outgoing buffer hit the limit


# Close codes after which a client must not reconnect with the same credentials.
TERMINAL_CLOSE_CODES = frozenset(
    {CloseCode.AUTH_REQUIRED, CloseCode.AUTH_FAILED, CloseCode.ORIGIN_NOT_ALLOWED}
)

CLOSE_REASONS: Mapping[int, str] = {
    CloseCode.NORMAL: "normal closure",
    CloseCode.GOING_AWAY: "server going away: reconnect",
    CloseCode.UNSUPPORTED_DATA: "binary frames are not supported",
    CloseCode.INVALID_DATA: "invalid UTF-8",
    CloseCode.POLICY_VIOLATION: "too many protocol errors",
    CloseCode.MESSAGE_TOO_BIG: "frame too big",
    CloseCode.INTERNAL_ERROR: "internal error: reconnect",
    CloseCode.AUTH_REQUIRED: "authentication required",
    CloseCode.AUTH_FAILED: "authentication failed",
    CloseCode.ORIGIN_NOT_ALLOWED: "origin not allowed",
    CloseCode.RATE_LIMITED: "rate limit exceeded",
    CloseCode.MESSAGE_TOO_LARGE: "message too large",
    CloseCode.TOKEN_EXPIRED: "token expired",
    CloseCode.SLOW_CONSUMER: "slow consumer",
}


# ---------------------------------------------------------------------------------------------
# Error codes (in ``error`` events; the connection stays open)


class ErrorCode(str, enum.Enum):
    MALFORMED = "malformed"  # not JSON, or not an object with a string "type"
    INVALID_FIELD = "invalid_field"  # a field is missing or has the wrong type or range
    UNKNOWN_TYPE = "unknown_type"  # "type" is not a client command
    FORBIDDEN = "forbidden"  # the token does not grant this action on this channel
    UNKNOWN_NAMESPACE = "unknown_namespace"  # the channel's namespace is not configured
    NOT_SUBSCRIBED = "not_subscribed"  # unsubscribe (or a subscriber-only action) without a subscription
    ALREADY_SUBSCRIBED = "already_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    TOKEN_EXPIRED = "token_expired"  # refresh the token with a "connect" command
    INVALID_TOKEN = "invalid_token"  # a "connect" refresh with a bad token or another subject
    RATE_LIMITED = "rate_limited"  # the message was dropped; slow down
    UNAVAILABLE = "unavailable"  # the broker is unreachable: retry later
    INTERNAL = "internal"


# The bounded ``reason`` label of websocket_errors_total for each error code.
ERROR_REASON: Mapping[ErrorCode, str] = {
    ErrorCode.MALFORMED: "malformed",
    ErrorCode.INVALID_FIELD: "malformed",
    ErrorCode.UNKNOWN_TYPE: "unknown_type",
    ErrorCode.FORBIDDEN: "forbidden",
    ErrorCode.UNKNOWN_NAMESPACE: "not_found",
    ErrorCode.NOT_SUBSCRIBED: "not_found",
    ErrorCode.ALREADY_SUBSCRIBED: "malformed",
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: "forbidden",
    ErrorCode.TOKEN_EXPIRED: "forbidden",
    ErrorCode.INVALID_TOKEN: "forbidden",
    ErrorCode.RATE_LIMITED: "rate_limited",
    ErrorCode.UNAVAILABLE: "broker",
    ErrorCode.INTERNAL: "internal",
}

# ---------------------------------------------------------------------------------------------
# Message types

COMMAND_TYPES = ("connect", "subscribe", "unsubscribe", "publish", "presence", "history", "ping")
EVENT_TYPES = ("connected", "ack", "message", "join", "leave", "error", "resync", "unsubscribed")

# The bounded ``type`` label (exporter.catalog.MESSAGE_TYPES) of each event the server sends.
EVENT_LABEL: Mapping[str, str] = {
    "connected": "connect",
    "ack": "ack",
    "message": "message",
    "join": "join",
    "leave": "leave",
    "error": "error",
    "resync": "other",
    "unsubscribed": "unsubscribe",
}

# Channel names: an optional namespace and a name, "ns:name". A leading "$" on the name (or on
# the whole channel) marks a private channel; "#user1,user2" limits it to those users.
CHANNEL_MAX_LENGTH = 255
_CHANNEL_RE = re.compile(r"^\$?(?:[A-Za-z0-9_.\-]+:)?\$?[A-Za-z0-9_.\-@=/]+(?:#[A-Za-z0-9_.\-@,]+)?$")
ID_MAX_LENGTH = 64
TOKEN_MAX_LENGTH = 8192
HISTORY_MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1


# ---------------------------------------------------------------------------------------------
# Parsed commands


@dataclass(frozen=True, slots=True)
class Recover:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Command:
    """A validated client command. ``message_id`` is echoed as ``correlation_id`` in the reply."""

    type: str
    message_id: str | None
    channel: str | None = None
    recover: Recover | None = None
    data: bytes | None = None  # publish: the payload re-encoded as compact JSON, UTF-8
    token: str | None = None  # connect (token refresh)
    since_offset: int | None = None  # history
    epoch: str | None = None  # history
    limit: int | None = None  # history
    traceparent: Mapping[str, str] = field(default_factory=dict)  # W3C context sent by the client, if any


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A message the server refuses: reply with an ``error`` event, keep the connection."""

    code: ErrorCode
    message: str
    correlation_id: str | None = None
    type: str = "other"  # the command type if it was readable (for telemetry labels)


ParseResult = Union[Command, ProtocolError]


def _field_error(message: str, mid: str | None, type_: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, message, mid, type_)


def valid_channel(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= CHANNEL_MAX_LENGTH and bool(_CHANNEL_RE.match(name))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_command(text: str | bytes) -> ParseResult:
    """Parse one client message (a text frame's content) into a ``Command`` or a ``ProtocolError``."""
    try:
        envelope = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return ProtocolError(ErrorCode.MALFORMED, "message is not valid JSON")
    if not isinstance(envelope, dict):
        return ProtocolError(ErrorCode.MALFORMED, "message must be a JSON object")

    metadata = envelope.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return ProtocolError(ErrorCode.MALFORMED, "metadata must be an object")
    mid = metadata.get("message_id")
    if mid is not None and not (isinstance(mid, str) and 0 < len(mid) <= ID_MAX_LENGTH):
        return ProtocolError(ErrorCode.MALFORMED, f"metadata.message_id must be a string of 1..{ID_MAX_LENGTH} characters")

    type_ = envelope.get("type")
    if not isinstance(type_, str):
        return ProtocolError(ErrorCode.MALFORMED, "type must be a string", mid)
    if type_ not in COMMAND_TYPES:
        return ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown command type {type_[:32]!r}; expected one of {', '.join(COMMAND_TYPES)}", mid)

    payload = envelope.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        return _field_error("payload must be an object", mid, type_)

    trace: dict[str, str] = {}
    for key in ("traceparent", "tracestate"):
        value = metadata.get(key)
        if isinstance(value, str) and len(value) <= 512:
            trace[key] = value

    if type_ == "ping":
        return Command(type_, mid, traceparent=trace)

    if type_ == "connect":
        token = payload.get("token")
        if not (isinstance(token, str) and 0 < len(token) <= TOKEN_MAX_LENGTH):
            return _field_error("connect needs payload.token, a non-empty string", mid, type_)
        return Command(type_, mid, token=token, traceparent=trace)

    channel = payload.get("channel")
    if not valid_channel(channel):
        return _field_error(
            f"payload.channel must be a channel name ([ns:]name, at most {CHANNEL_MAX_LENGTH} characters of letters, digits, _.-@=/)",
            mid, type_,
        )

    if type_ == "subscribe":
        recover = payload.get("recover")
        if recover is None:
            return Command(type_, mid, channel=channel, traceparent=trace)
        if not isinstance(recover, dict):
            return _field_error("payload.recover must be an object {offset, epoch}", mid, type_)
        offset, epoch = recover.get("offset"), recover.get("epoch")
        if not (_is_int(offset) and 0 <= offset <= MAX_OFFSET):
            return _field_error("payload.recover.offset must be a non-negative integer", mid, type_)
        if not (isinstance(epoch, str) and len(epoch) <= ID_MAX_LENGTH):
            return _field_error("payload.recover.epoch must be a string", mid, type_)
        return Command(type_, mid, channel=channel, recover=Recover(offset, epoch), traceparent=trace)

    if type_ == "publish":
        if "data" not in payload:
            return _field_error("publish needs payload.data (any JSON value)", mid, type_)
        data = payload["data"]
        # Reject NaN/Infinity: they are not JSON and would break strict clients downstream.
        try:
            encoded = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:
            return _field_error("payload.data must not contain NaN or Infinity", mid, type_)
        return Command(type_, mid, channel=channel, data=encoded.encode("utf-8"), traceparent=trace)

    if type_ == "history":
        since, epoch, limit = payload.get("since_offset", 0), payload.get("epoch"), payload.get("limit", 100)
        if not (_is_int(since) and 0 <= since <= MAX_OFFSET):
            return _field_error("payload.since_offset must be a non-negative integer", mid, type_)
        if epoch is not None and not (isinstance(epoch, str) and len(epoch) <= ID_MAX_LENGTH):
            return _field_error("payload.epoch must be a string", mid, type_)
        if not (_is_int(limit) and 0 <= limit <= HISTORY_MAX_LIMIT):
            return _field_error(f"payload.limit must be an integer in 0..{HISTORY_MAX_LIMIT}", mid, type_)
        return Command(type_, mid, channel=channel, since_offset=since, epoch=epoch, limit=limit, traceparent=trace)

    # unsubscribe, presence
    return Command(type_, mid, channel=channel, traceparent=trace)


# ---------------------------------------------------------------------------------------------
# Encoding server events


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def encode_event(type_: str, payload: Mapping[str, Any], *, message_id: str, timestamp_ms: int,
                 correlation_id: str | None = None, extra_metadata: Mapping[str, str] | None = None) -> bytes:
    """One server event as UTF-8 JSON bytes."""
    metadata: dict[str, Any] = {"message_id": message_id, "timestamp": timestamp_ms}
    if correlation_id is not None:
        metadata["correlation_id"] = correlation_id
    if extra_metadata:
        metadata.update(extra_metadata)
    return _dumps({"type": type_, "payload": payload, "metadata": metadata})


def encode_error(code: ErrorCode, message: str, *, message_id: str, timestamp_ms: int,
                 correlation_id: str | None = None) -> bytes:
    return encode_event("error", {"code": code.value, "message": message},
                        message_id=message_id, timestamp_ms=timestamp_ms, correlation_id=correlation_id)


# Metadata keys of a publication that subscribers see (others, if any, stay inside the server).
MESSAGE_METADATA_KEYS = ("message_id", "traceparent", "tracestate", "publisher")


def encode_message(channel: str, offset: int, epoch: str, data: bytes, metadata: Mapping[str, str],
                   timestamp_ms: int) -> bytes:
    """A ``message`` event for one publication, built around the already-encoded ``data``.

    ``data`` was validated and encoded once at publish time; splicing it in avoids parsing and
    re-encoding a payload that may be large, once per fan-out.
    """
    meta: dict[str, Any] = {k: metadata[k] for k in MESSAGE_METADATA_KEYS if k in metadata}
    meta["timestamp"] = timestamp_ms
    return b"".join((
        b'{"type":"message","payload":{"channel":', _dumps(channel),
        b',"offset":', str(int(offset)).encode(),
        b',"epoch":', _dumps(epoch),
        b',"data":', data,
        b'},"metadata":', _dumps(meta), b"}",
    ))


def encode_command(type_: str, payload: Mapping[str, Any], message_id: str | None = None,
                   metadata: Mapping[str, Any] | None = None) -> str:
    """A client command as JSON text (used by the client and the load generator)."""
    meta: dict[str, Any] = dict(metadata or {})
    if message_id is not None:
        meta["message_id"] = message_id
    return json.dumps({"type": type_, "payload": payload, "metadata": meta}, separators=(",", ":"), ensure_ascii=False)


def parse_event(text: str | bytes) -> dict[str, Any]:
    """Decode a server event (client side). Raises ``ValueError`` on anything that is not one."""
    event = json.loads(text)
    if not (isinstance(event, dict) and event.get("type") in EVENT_TYPES and isinstance(event.get("payload"), dict)):
        raise ValueError(f"not a server event: {str(text)[:80]!r}")
    event.setdefault("metadata", {})
    return event


# ---------------------------------------------------------------------------------------------
# WebSocket framing for the fan-out path


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented, uncompressed server-to-client text frame (RFC 6455 5.2).

    The same bytes go to every subscriber of a fan-out, so each publication is framed once.
    """
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x81, length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x81, 126, length)
    else:
        head = struct.pack("!BBQ", 0x81, 127, length)
    return head + payload


def frame_payload(frame: bytes) -> memoryview:
    """The payload of a frame made by ``text_frame`` (for connections that need per-connection encoding)."""
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return memoryview(frame)[start:]


def milliseconds(seconds: float) -> int:
    return int(math.floor(seconds * 1000))
