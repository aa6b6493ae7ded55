"""Instrument your own ``websockets`` server in one call.

    from websockets.asyncio.server import serve
    import exporter

    async def echo(connection):
        async for message in connection:
            await connection.send(message)

    handler = exporter.instrument_server(echo, service_name="echo")
    async with serve(handler, "0.0.0.0", 8765, process_request=handler.process_request) as server:
        await server.serve_forever()

The wrapped handler counts connections (opened, and closed by close code), messages received
and sent with their sizes, handler errors, and runs each connection inside a ``server`` span.
``handler.process_request`` answers ``GET /metrics`` on the same port (OpenMetrics when the
scraper asks, so exemplars reach Prometheus); it can wrap a ``process_request`` of yours.
Use ``broadcast`` instead of ``websockets.broadcast`` to count a fan-out once.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Iterable

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import broadcast as ws_broadcast
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from exporter.hooks import NoopTelemetry

MESSAGE_TYPE = "message"  # a generic server has no message types of its own


def _size(message: Any) -> int:
    if isinstance(message, str):
        return len(message) if message.isascii() else len(message.encode())
    try:
        return len(message)
    except TypeError:  # an iterable of fragments: size unknown without consuming it
        return 0


class InstrumentedConnection:
    """The connection your handler sees: counts what goes through, delegates everything else."""

    __slots__ = ("connection", "_telemetry")

    def __init__(self, connection: ServerConnection, telemetry) -> None:
        self.connection = connection
        self._telemetry = telemetry

    async def recv(self, *args, **kwargs):
        message = await self.connection.recv(*args, **kwargs)
        self._telemetry.message_received(MESSAGE_TYPE, _size(message))
        return message

    async def send(self, message, *args, **kwargs) -> None:
        await self.connection.send(message, *args, **kwargs)
        self._telemetry.messages_sent(MESSAGE_TYPE, 1, _size(message))

    async def __aiter__(self):
        # websockets' own iteration, so a normal close ends the loop exactly as it would unwrapped
        async for message in self.connection:
            self._telemetry.message_received(MESSAGE_TYPE, _size(message))
            yield message

    def __getattr__(self, name: str):
        return getattr(self.connection, name)


class InstrumentedHandler:
    """A ``serve`` handler wrapped with telemetry; see the module docstring."""

    def __init__(
        self,
        handler: Callable[[Any], Awaitable[None]],
        telemetry,
        *,
        namespace: str = "default",
        metrics_path: str = "/metrics",
        process_request: Callable | None = None,
    ) -> None:
        self.handler = handler
        self.telemetry = telemetry
        self.namespace = namespace
        self.metrics_path = metrics_path
        self._user_process_request = process_request
        self._attributes = {"websocket.namespace": namespace}
        self._closing: set[asyncio.Task] = set()

    async def __call__(self, connection: ServerConnection) -> None:
        telemetry = self.telemetry
        telemetry.connection_opened(self.namespace)
        closed: ConnectionClosed | None = None
        try:
            with telemetry.span("websocket.connection", self._attributes, kind="server"):
                try:
                    await self.handler(InstrumentedConnection(connection, telemetry))
                except ConnectionClosed as exc:  # the peer left: normal, not a handler error
                    closed = exc
                except Exception:
                    telemetry.error("internal")
                    raise
        finally:
            if connection.close_code is not None:
                telemetry.connection_closed(self.namespace, connection.close_code)
            else:
                # websockets closes the connection after the handler returns; count the code
                # it ends with, without holding up the handler.
                task = asyncio.get_running_loop().create_task(self._count_close(connection))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        if closed is not None:
            raise closed

    async def _count_close(self, connection: ServerConnection) -> None:
        await connection.wait_closed()
        self.telemetry.connection_closed(self.namespace, connection.close_code or 1006)

    async def process_request(self, connection: ServerConnection, request):
        """Serve ``GET <metrics_path>``; hand anything else to your ``process_request``."""
        if request.path.split("?", 1)[0] == self.metrics_path:
            body, content_type = self.telemetry.exposition(request.headers.get("Accept"))
            response = connection.respond(200, "")
            response.body = body
            # Headers is a multi-dict: replace the plain-text values respond() wrote.
            del response.headers["Content-Type"], response.headers["Content-Length"]
            response.headers["Content-Type"] = content_type
            response.headers["Content-Length"] = str(len(body))
            return response
        if self._user_process_request is None:
            return None
        result = self._user_process_request(connection, request)
        return await result if asyncio.iscoroutine(result) else result


def instrument_server(
    handler: Callable[[Any], Awaitable[None]],
    telemetry=None,
    *,
    namespace: str = "default",
    metrics_path: str = "/metrics",
    process_request: Callable | None = None,
    **instrument_kwargs,
) -> InstrumentedHandler:
    """Wrap a ``websockets.asyncio.server.serve`` handler; builds ``instrument(**instrument_kwargs)``
    when no ``telemetry`` is given."""
    if telemetry is None:
        from exporter.instrument import instrument

        telemetry = instrument(**instrument_kwargs)
    elif instrument_kwargs:
        raise ValueError(f"pass either telemetry or instrument() arguments, not both: {sorted(instrument_kwargs)}")
    return InstrumentedHandler(
        handler, telemetry, namespace=namespace, metrics_path=metrics_path, process_request=process_request,
    )


def broadcast(connections: Iterable[Any], message: str | bytes, telemetry=None, *, type: str = MESSAGE_TYPE) -> int:  # noqa: A002
    """``websockets.broadcast`` counted once per fan-out; returns the number of open recipients."""
    targets = [getattr(c, "connection", c) for c in connections]
    recipients = sum(1 for c in targets if c.protocol.state is State.OPEN)
    ws_broadcast(targets, message)
    if telemetry is not None and not isinstance(telemetry, NoopTelemetry):
        telemetry.fanout(recipients)
        telemetry.messages_sent(type, recipients, _size(message))
    return recipients
