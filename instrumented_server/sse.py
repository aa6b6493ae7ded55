"""Server-Sent Events, sans I/O: the stream request, the event encoding and ``Last-Event-ID``.

An SSE stream is ``GET /sse?channel=A&channel=B`` (each channel URL-encoded: ``#`` and ``$``
must be escaped). Every event is the same JSON envelope as over WebSocket, in one ``data:``
line (compact JSON never holds a raw newline), with no ``event:`` field, so an ``EventSource``
gets everything in ``onmessage`` and dispatches on the envelope's ``type``.

Events that set a position (a channel's subscribe ``ack``, and every ``message`` with a
non-zero offset) carry an ``id:``: the stream's positions, one per channel in the order the
URL names them, joined by ``,``; each is ``<offset>:<epoch>``, or ``-`` for a channel whose
subscription has not gone live yet. A single-channel stream's id is just ``<offset>:<epoch>``.
A reconnect sends it back as ``Last-Event-ID`` (EventSource does so by itself), with the same
URL, and resumes each channel from its position exactly as WebSocket's
``subscribe{recover: {offset, epoch}}`` does: the missed publications once and in order, or a
``resync`` event when history no longer reaches back (the "gap too old" case).

Nothing here does I/O; ``instrumented_server.sse_transport`` moves these bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from instrumented_server.protocol import MAX_OFFSET, Recover, _dumps, valid_channel

SSE_PATH = "/sse"
RETRY_MILLISECONDS = 2000  # the reconnection delay EventSource is told to use
HEARTBEAT = b": ping\n\n"  # a comment: keeps proxies from timing the stream out, finds dead peers
# Query parameters that would carry a token: never read (URLs end up in logs and history).
TOKEN_PARAMETERS = frozenset({"token", "access_token", "jwt", "auth", "authorization", "bearer"})
LAST_EVENT_ID_MAX_LENGTH = 16384
_POSITION_RE = re.compile(r"^(\d{1,19}):([A-Za-z0-9_\-]{0,64})$")


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What a stream asks for: channels in URL order, and where to resume each (None: from now)."""

    channels: tuple[str, ...]
    positions: tuple[Recover | None, ...]
    url_token: bool  # the URL held a token parameter (ignored; said so when auth fails)


class StreamRequestError(ValueError):
    """A stream request the server answers with 400: the message says what is wrong."""


def parse_stream_request(query: str, last_event_id: str | None, max_channels: int) -> StreamRequest:
    """The channels and resume positions of ``GET /sse?<query>`` with its ``Last-Event-ID``."""
    channels: list[str] = []
    url_token = False
    query_last_id: str | None = None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=max_channels + 16)
    except ValueError as exc:
        raise StreamRequestError(f"malformed query string: {exc}") from None
    for key, value in pairs:
        if key == "channel":
            if not valid_channel(value):
                raise StreamRequestError(f"channel {value[:80]!r} is not a channel name ([ns:]name, URL-encoded)")
            if value in channels:
                raise StreamRequestError(f"channel {value!r} is named twice")
            channels.append(value)
        elif key.lower() in TOKEN_PARAMETERS:
            url_token = True  # never read
        elif key == "last_event_id":
            query_last_id = value
    if not channels:
        raise StreamRequestError("name at least one channel: /sse?channel=NAME[&channel=NAME...]")
    if len(channels) > max_channels:
        raise StreamRequestError(f"at most {max_channels} channels per stream")
    raw = last_event_id if last_event_id is not None else query_last_id
    positions = parse_last_event_id(raw, len(channels)) if raw else (None,) * len(channels)
    return StreamRequest(tuple(channels), positions, url_token)


def url_has_token(query: str) -> bool:
    """True when the query string has a token-like parameter (which is never read)."""
    try:
        return any(key.lower() in TOKEN_PARAMETERS for key, _ in parse_qsl(query, keep_blank_values=True))
    except ValueError:
        return False


def parse_last_event_id(text: str, channels: int) -> tuple[Recover | None, ...]:
    """Positions from a ``Last-Event-ID`` made by ``format_position`` for ``channels`` channels."""
    if len(text) > LAST_EVENT_ID_MAX_LENGTH:
        raise StreamRequestError("Last-Event-ID is too long")
    parts = text.strip().split(",")
    if len(parts) != channels:
        raise StreamRequestError(
            f"Last-Event-ID has {len(parts)} position(s) for {channels} channel(s): reconnect with the URL "
            "the id came from (same channels, same order)")
    positions: list[Recover | None] = []
    for part in parts:
        if part == "-":
            positions.append(None)
            continue
        match = _POSITION_RE.match(part)
        if match is None or int(match.group(1)) > MAX_OFFSET:
            raise StreamRequestError(f"Last-Event-ID position {part[:80]!r} is not <offset>:<epoch> or -")
        positions.append(Recover(int(match.group(1)), match.group(2)))
    return tuple(positions)


def format_position(offset: int, epoch: str) -> bytes:
    return b"%d:%s" % (offset, epoch.encode("ascii", "replace"))


NO_POSITION = b"-"


def data_event(payload: bytes) -> bytes:
    """One event whose data is ``payload`` (compact JSON: no newline inside)."""
    return b"data: " + payload + b"\n\n"


def id_line(positions: list[bytes]) -> bytes:
    return b"id: " + b",".join(positions) + b"\n"


def close_event(code: int, reason: str, message_id: str, timestamp_ms: int) -> bytes:
    """The last event of a stream the server ends: the WebSocket close code and reason it stands for."""
    payload: dict[str, Any] = {"type": "close", "payload": {"code": code, "reason": reason},
                               "metadata": {"message_id": message_id, "timestamp": timestamp_ms}}
    return data_event(_dumps(payload))


def stream_head(extra_headers: dict[str, str]) -> bytes:
    """The response head of an accepted stream: close-delimited (no Content-Length, no chunking)."""
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-store",
        "Connection: close",
        "X-Accel-Buffering: no",  # nginx: do not buffer the stream
        *(f"{key}: {value}" for key, value in extra_headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + b"retry: %d\n\n" % RETRY_MILLISECONDS


class SseDelivery:
    """An event that moves one channel's position: the peer writes the stream's ``id:`` before it.

    The same instance goes to every SSE subscriber of a fan-out (like a shared WebSocket frame);
    only the id line is per stream, because it carries all of that stream's channels.
    """

    __slots__ = ("channel", "offset", "epoch", "body")

    def __init__(self, channel: str, offset: int, epoch: str, body: bytes) -> None:
        self.channel = channel
        self.offset = offset
        self.epoch = epoch
        self.body = body

    def __len__(self) -> int:
        return len(self.body)
