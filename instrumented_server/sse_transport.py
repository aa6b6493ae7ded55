"""The SSE stream's I/O: the TCP connection once websockets has handed it over, and the hub's peer.

websockets' server has no way to stream an HTTP response: whatever ``process_request`` returns
is written whole, followed by EOF, and the connection is then aborted. So the server's
connection class (``server.HubConnection``) answers ``GET /sse`` itself in its handshake: once
the request passed the same checks as an upgrade, it moves the socket's asyncio transport to an
``SseStream`` (``transport.set_protocol``), before websockets has written anything, and
websockets is left with nothing to write or abort. From there the stream belongs to the hub:
one ``Session`` with an ``SsePeer``, ended by the hub (drain, slow consumer, token expiry) or
by the client closing the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from instrumented_server.protocol import CloseCode, milliseconds
from instrumented_server.sse import NO_POSITION, SseDelivery, close_event, format_position, id_line

MAX_CLIENT_BYTES = 65536  # an SSE client has nothing to send after its request; more is abuse


class SseStream(asyncio.Protocol):
    """The asyncio protocol of a handed-over connection: it only notices the client leaving."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.clean = True  # False when the connection was lost with an error (reset, abort)
        self._received = 0

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_CLIENT_BYTES:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # the client closed its side: that ends the stream (asyncio closes the transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.clean = False
        if not self.closed.done():
            self.closed.set_result(None)


class _Released:
    """What websockets keeps of a connection handed over to SSE: it aborts its transport after a
    handshake that did not upgrade, which must not touch the stream."""

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True


RELEASED = _Released()


class SsePeer:
    """The hub's view of one SSE stream: events in, bytes on the wire, the stream's positions kept."""

    __slots__ = ("transport", "stream", "channels", "positions", "close_timeout", "closing", "new_id", "wall")

    def __init__(self, stream: SseStream, channels: tuple[str, ...], close_timeout: float,
                 new_id: Any, wall: Any) -> None:
        self.transport = stream.transport
        self.stream = stream
        self.channels = {name: index for index, name in enumerate(channels)}
        self.positions: list[bytes] = [NO_POSITION] * len(channels)
        self.close_timeout = close_timeout
        self.closing = False
        self.new_id = new_id
        self.wall = wall

    def write(self, frames: list[Any]) -> int:
        transport = self.transport
        if self.closing or transport.is_closing():
            return 0
        out: list[bytes] = []
        for item in frames:
            if type(item) is SseDelivery:
                index = self.channels.get(item.channel)
                if index is not None:
                    self.positions[index] = format_position(item.offset, item.epoch)
                    out.append(id_line(self.positions))
                out.append(item.body)
            else:
                out.append(item)
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        return transport.get_write_buffer_size()

    def heartbeat(self, comment: bytes) -> int:
        return self.write([comment])

    def close(self, code: int, reason: str) -> None:
        """Tell the client why (an event behind what is buffered), then end the response.

        ``transport.close()`` waits for the buffer to drain, which a client that does not read
        never lets happen: the connection is aborted after ``close_timeout``.
        """
        if self.closing:
            return
        self.closing = True
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(close_event(code, reason, self.new_id(), milliseconds(self.wall())))
        transport.close()
        if self.close_timeout:
            asyncio.get_running_loop().call_later(self.close_timeout, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.stream.closed.done():
            self.transport.abort()


def close_code(stream: SseStream, session_code: int | None) -> int:
    """The close code a stream ended with: the hub's, else 1000 for a client that closed the
    connection, 1006 for one that was lost (reset, or aborted)."""
    if session_code is not None:
        return session_code
    return int(CloseCode.NORMAL if stream.clean else CloseCode.ABNORMAL)
