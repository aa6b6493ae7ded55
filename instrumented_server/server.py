"""The websockets glue: upgrade checks, HTTP endpoints, the per-connection loop, graceful drain.

Everything that decides lives in ``hub`` (commands, delivery), ``auth`` and ``permissions``; this
module moves bytes between them and the ``websockets`` asyncio server:

- ``process_request`` answers ``/metrics``, ``/healthz`` and ``/readyz`` on the WebSocket port,
  refuses upgrades over the per-IP limits with HTTP 429, and checks origin and token. A refused
  origin or token still completes the upgrade, then closes with 4003/4001/4002, because a
  browser cannot read the HTTP status of a failed upgrade but can read a close code.
- ``WebSocketPeer`` writes the hub's pre-framed bytes straight to the transport, one write per
  connection per tick, falling back to per-connection framing when an extension (compression)
  forbids sharing bytes.
- ``GET /sse`` (Server-Sent Events) passes the same checks (limits, origin, token from header
  or cookie), then each channel's subscribe permission; ``HubConnection.handshake`` hands the
  accepted connection over to ``sse_transport`` (websockets cannot stream a response body).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Any, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import OPEN

from exporter.hooks import NoopTelemetry
from instrumented_server.auth import AuthError, Authenticator, Identity, origin_allowed, token_from_headers
from instrumented_server.broker.base import Broker
from instrumented_server.config import ServerConfig
from instrumented_server.hub import Hub, channel_info
from instrumented_server.protocol import CLOSE_REASONS, ERROR_REASON, CloseCode, ErrorCode, frame_payload
from instrumented_server.ratelimit import KeyedBuckets
from instrumented_server.session import SSE
from instrumented_server.sse import (
    HEARTBEAT,
    SSE_PATH,
    StreamRequest,
    StreamRequestError,
    parse_stream_request,
    stream_head,
    url_has_token,
)
from instrumented_server.sse_transport import RELEASED, SsePeer, SseStream, close_code

log = logging.getLogger("instrumented_server.server")

HTTP_PATHS = ("/metrics", "/healthz", "/readyz")
REJECTED_STATUS = {
    CloseCode.AUTH_REQUIRED: "auth_missing",
    CloseCode.AUTH_FAILED: "auth_failed",
    CloseCode.ORIGIN_NOT_ALLOWED: "origin_denied",
}


class HubConnection(ServerConnection):
    """A server connection that carries the outcome of the upgrade checks to the handler, and
    watches what websockets writes on its own (pongs, close frames) as well as what the hub writes."""

    auth: Identity | AuthError | None = None
    # Set by the handler once the session exists: called when the write buffer passes the limit.
    on_overflow: Callable[[], None] | None = None
    max_buffer: int = 0
    # Set by the server: answers GET /sse with a refusal, or None once it took the connection over.
    sse_request: Callable[["HubConnection", Request], Response | None] | None = None

    async def handshake(self, process_request: Any = None, process_response: Any = None,
                        server_header: Any = None) -> None:
        await asyncio.wait([self.request_rcvd, self.connection_lost_waiter], return_when=asyncio.FIRST_COMPLETED)
        request = self.request
        if request is not None and self.sse_request is not None and request.path.partition("?")[0] == SSE_PATH:
            refusal = self.sse_request(self, request)
            if refusal is None:
                # The transport now belongs to the SSE stream; websockets "aborts" what it keeps.
                self.transport = RELEASED  # type: ignore[assignment]
                return
            process_request = lambda connection, request: refusal  # noqa: E731 - websockets writes it and closes
        await super().handshake(process_request, process_response, server_header)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A client that sends pings (or anything websockets answers by itself) and never reads
        # would grow the pong backlog without bound: hold it to the same limit as the fan-out.
        if self.on_overflow is not None and self.transport.get_write_buffer_size() > self.max_buffer:
            self.on_overflow()
            # websockets still answers pings after sending its close frame: stop reading, so the
            # backlog stops growing; the close timeout then drops the connection.
            self.transport.pause_reading()


class WebSocketPeer:
    """The hub's view of one websockets connection: whole frames in, bytes on the wire."""

    __slots__ = ("connection", "transport", "protocol", "shared_frames")

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.transport = connection.transport
        self.protocol = connection.protocol
        # Frames can be shared between connections only when no extension rewrites them.
        self.shared_frames = not connection.protocol.extensions

    def write(self, frames: list[bytes]) -> int:
        if self.protocol.state is not OPEN or self.transport.is_closing():
            return 0
        if self.shared_frames:
            # One write per tick: the kernel call, not the encoding, is what costs per message.
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        else:
            for frame in frames:
                self.protocol.send_text(frame_payload(frame))
            self.connection.send_data()
        return self.transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        """Queue a close frame behind what is buffered; drop the TCP connection if no reply comes.

        Not ``connection.close()``: it waits for the write buffer to drain, which a client that
        does not read (the very one being cut off) never lets happen.
        """
        if self.protocol.state is not OPEN:
            return
        try:
            self.protocol.send_close(code, reason)
            self.connection.send_data()
        except Exception:
            self.transport.abort()
            return
        timeout = self.connection.close_timeout
        if timeout is not None:
            self.connection.loop.call_later(timeout, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()


def _response(status: int, phrase: str, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ])
    for key, value in (extra or {}).items():
        headers[key] = value
    return Response(status, phrase, headers, body)


def _text(status: int, phrase: str, text: str, extra: dict[str, str] | None = None) -> Response:
    return _response(status, phrase, text.encode(), "text/plain; charset=utf-8", extra)


class PubSubServer:
    """The server: ``await start()``, then ``await shutdown()`` (drains with 1001)."""

    def __init__(self, config: ServerConfig, broker: Broker, telemetry: Any = None) -> None:
        self.config = config
        self.telemetry = telemetry if telemetry is not None else NoopTelemetry()
        self.authenticator = Authenticator(config.jwt_secret, audience=config.jwt_audience, issuer=config.jwt_issuer)
        self.hub = Hub(broker, config, authenticator=self.authenticator, telemetry=self.telemetry)
        # Per IP: a bucket of connection attempts, and (as its holders) the open connections.
        self._per_ip = KeyedBuckets(config.ip_connect_rate)
        self._streams: set[asyncio.Task[None]] = set()  # open SSE streams
        self._server: Server | None = None
        self.started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.hub.start()
        config = self.config
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            process_request=self._process_request,
            create_connection=self._new_connection,
            compression=config.compression,
            max_size=config.max_frame_size,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            open_timeout=config.open_timeout,
            close_timeout=config.close_timeout,
            server_header=None,
        )
        self.started = True
        log.info("listening on %s:%d (broker %s)", config.host, self.port, self.hub.broker.name)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def ready(self) -> bool:
        return self.started and not self.hub.draining

    async def shutdown(self) -> None:
        """Graceful drain: /readyz turns 503, clients get 1001 'reconnect', then the broker closes."""
        if self._server is None:
            return
        self.hub.draining = True
        if self.config.drain_delay:
            await asyncio.sleep(self.config.drain_delay)  # let load balancers see /readyz fail
        self.hub.drain()
        self._server.close(close_connections=True, code=CloseCode.GOING_AWAY, reason=CLOSE_REASONS[CloseCode.GOING_AWAY])
        try:
            await asyncio.wait_for(self._server.wait_closed(), self.config.drain_timeout + self.config.close_timeout)
        except asyncio.TimeoutError:
            log.warning("connections still open after the drain timeout; stopping anyway")
        if self._streams:  # SSE streams were told to reconnect by hub.drain(); wait for them to end
            _, pending = await asyncio.wait(set(self._streams), timeout=self.config.close_timeout + 1.0)
            for task in pending:
                task.cancel()
        await self.hub.stop()
        self._server = None

    async def __aenter__(self) -> "PubSubServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    # ------------------------------------------------------------------ upgrade

    def _new_connection(self, *args: Any, **kwargs: Any) -> HubConnection:
        connection = HubConnection(*args, **kwargs)
        connection.sse_request = self._sse_request
        return connection

    def _process_request(self, connection: HubConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path in HTTP_PATHS:
            return self._http(path, request)
        if self.hub.draining:
            return _text(503, "Service Unavailable", "draining: connect to another instance\n", {"Retry-After": "1"})
        ip = _ip(connection)
        if not self._per_ip.take(ip, time.monotonic()) or (
                self.config.max_connections_per_ip and self._per_ip.holders(ip) >= self.config.max_connections_per_ip):
            self.telemetry.rate_limited("ip")
            self.telemetry.connection_rejected("rate_limited")
            return _text(429, "Too Many Requests", "too many connections from this address\n", {"Retry-After": "1"})
        if not origin_allowed(request.headers.get("Origin"), self.config.allowed_origins):
            connection.auth = AuthError(CloseCode.ORIGIN_NOT_ALLOWED, CLOSE_REASONS[CloseCode.ORIGIN_NOT_ALLOWED])
            return None
        try:
            connection.auth = self.authenticator.verify(token_from_headers(request.headers, self.config.auth_cookie))
        except AuthError as exc:
            connection.auth = exc
        return None

    def _http(self, path: str, request: Request) -> Response:
        if path == "/metrics":
            try:
                body, content_type = self.telemetry.exposition(request.headers.get("Accept"))
            except Exception:
                log.exception("metrics exposition failed")
                return _text(500, "Internal Server Error", "metrics exposition failed\n")
            return _response(200, "OK", body, content_type)
        if path == "/healthz":
            return _text(200, "OK", "ok\n")
        if self.ready:
            broker = "ok" if self.hub.broker.healthy else "degraded (local delivery only)"
            return _text(200, "OK", f"ready; broker {self.hub.broker.name}: {broker}\n")
        return _text(503, "Service Unavailable", "draining\n" if self.hub.draining else "starting\n")

    # ------------------------------------------------------------------ connection

    async def _handle(self, connection: HubConnection) -> None:
        outcome = connection.auth
        if not isinstance(outcome, Identity):
            error = outcome if isinstance(outcome, AuthError) else AuthError(CloseCode.AUTH_REQUIRED, "authentication required")
            # Counted as a refused upgrade (websocket_connections_total{status}), never as an open connection.
            self.telemetry.connection_rejected(REJECTED_STATUS.get(error.code, "error"))
            await connection.close(error.code, error.reason[:120])
            return
        ip = _ip(connection)
        self._per_ip.acquire(ip)
        hub = self.hub
        session = hub.open_session(WebSocketPeer(connection), outcome, ip)
        connection.max_buffer = self.config.max_outgoing_buffer
        connection.on_overflow = lambda: hub.cut_off_slow(session)
        try:
            async for message in connection:
                await hub.handle(session, message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection handler failed")
            self.telemetry.error("internal")
            hub.close(session, CloseCode.INTERNAL_ERROR)
        finally:
            self._per_ip.release(ip)
            code = session.close_code or _close_code(connection, self.telemetry)
            await hub.close_session(session, code)


    # ------------------------------------------------------------------ SSE

    def _sse_request(self, connection: HubConnection, request: Request) -> Response | None:
        """The checks of an upgrade, in the same order, answered with HTTP statuses (a stream can
        read them, unlike a WebSocket); None once the connection was taken over as a stream."""
        telemetry = self.telemetry
        if self.hub.draining:
            return _text(503, "Service Unavailable", "draining: connect to another instance\n", {"Retry-After": "1"})
        ip = _ip(connection)
        if not self._per_ip.take(ip, time.monotonic()) or (
                self.config.max_connections_per_ip and self._per_ip.holders(ip) >= self.config.max_connections_per_ip):
            telemetry.rate_limited("ip")
            telemetry.connection_rejected("rate_limited", SSE)
            return _text(429, "Too Many Requests", "too many connections from this address\n", {"Retry-After": "1"})
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, self.config.allowed_origins):
            telemetry.connection_rejected("origin_denied", SSE)
            return _text(403, "Forbidden", "origin not allowed\n")
        query = request.path.partition("?")[2]
        try:
            identity = self.authenticator.verify(token_from_headers(request.headers, self.config.auth_cookie))
        except AuthError as exc:
            telemetry.connection_rejected(REJECTED_STATUS.get(exc.code, "error"), SSE)
            hint = " (a token in the URL is never read)" if url_has_token(query) else ""
            return _text(401, "Unauthorized", f"{exc.reason}{hint}\n", {"WWW-Authenticate": "Bearer"})
        try:
            stream_request = parse_stream_request(query, request.headers.get("Last-Event-ID"),
                                                  self.config.max_subscriptions)
        except StreamRequestError as exc:
            telemetry.connection_rejected("error", SSE)
            return _text(400, "Bad Request", f"{exc}\n")
        for name in stream_request.channels:
            denied = self.hub.permissions.check("subscribe", channel_info(name), identity.user, identity.grants, False)
            if denied is not None:
                telemetry.error(ERROR_REASON[denied])
                telemetry.connection_rejected("error", SSE)
                what = (f"unknown namespace in {name!r}" if denied is ErrorCode.UNKNOWN_NAMESPACE
                        else f"subscribe is not allowed on {name}")
                return _text(403, "Forbidden", f"{denied.value}: {what}\n")

        transport = connection.transport
        stream = SseStream(transport)
        transport.set_protocol(stream)
        cors = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                "Vary": "Origin"} if origin is not None else {}
        transport.write(stream_head(cors))
        self._per_ip.acquire(ip)
        task = asyncio.ensure_future(self._serve_stream(stream, stream_request, identity, ip))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)
        return None

    async def _serve_stream(self, stream: SseStream, request: StreamRequest, identity: Identity, ip: str) -> None:
        hub = self.hub
        peer = SsePeer(stream, request.channels, self.config.close_timeout, hub.new_id, hub.wall)
        session = hub.open_session(peer, identity, ip, SSE)
        try:
            for channel, position in zip(request.channels, request.positions):
                if not session.open:
                    break
                if not await hub.subscribe(session, channel, position) and session.open:
                    # The broker failed (the stream got an `unavailable` error event): end it, so the
                    # client reconnects with its Last-Event-ID instead of missing a channel.
                    hub.close(session, CloseCode.INTERNAL_ERROR, "broker unavailable: reconnect")
            interval = self.config.ping_interval
            while not stream.closed.done():
                if interval is None:
                    await stream.closed
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(stream.closed), interval)
                except asyncio.TimeoutError:
                    if session.open and peer.heartbeat(HEARTBEAT) > self.config.max_outgoing_buffer:
                        hub.cut_off_slow(session)
        except asyncio.CancelledError:
            stream.transport.abort()
            raise
        except Exception:
            log.exception("SSE stream failed")
            self.telemetry.error("internal")
            hub.close(session, CloseCode.INTERNAL_ERROR)
        finally:
            self._per_ip.release(ip)
            await hub.close_session(session, close_code(stream, session.close_code))


def _ip(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "unknown"


def _close_code(connection: ServerConnection, telemetry: Any) -> int:
    """The code that ended a connection the hub did not close itself."""
    protocol = connection.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    if sent is not None and (received is None or not protocol.close_rcvd_then_sent):
        # websockets closed it: a frame over max_size (1009), invalid UTF-8 (1007), a dead peer.
        if sent.code == CloseCode.MESSAGE_TOO_BIG:
            telemetry.error("too_large")
        elif sent.code == CloseCode.INVALID_DATA:
            telemetry.error("invalid_utf8")
        return int(sent.code)
    if received is not None:
        return int(received.code)
    return int(CloseCode.ABNORMAL)
