"""``python -m instrumented_server.socketio_chat``: a small Socket.IO chat, instrumented in one call.

A python-socketio ``AsyncServer`` on aiohttp, with ``GET /metrics`` and ``GET /healthz`` on the
same port, and ``exporter.instrument_socketio`` for metrics, spans and logs (``OTEL_*`` variables
as for every exporter user). ``--redis-url`` (or ``SOCKETIO_REDIS_URL``) puts it behind
python-socketio's ``AsyncRedisManager``, so several processes share rooms.

Namespaces and events (clients pass ``auth={"user": NAME}``, optionally with ``traceparent``):

- ``/``: ``ping`` answers ``"pong"`` (an acknowledgement).
- ``/chat`` (class-based): ``join {room}`` and ``leave {room}`` answer ``{"room", "members"}``
  (members on this process) and tell the room ``presence {user, room, action}``;
  ``say {room, text}`` emits ``chat_message {user, room, text}`` to the room and answers
  ``{"delivered": true}``; a ``say`` without a room or text raises ``ValueError``, which the
  exporter counts as a handler error. Without ``auth.user`` the connection is refused.

An event's data may carry W3C trace context (``{"room": ..., "text": ..., "traceparent": ...}``):
the server's span for it joins the client's trace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any, Sequence

import socketio
from aiohttp import web

import exporter

LOGGER_NAME = "socketio_chat"
DEFAULT_PORT = 8780
MAX_NAME = 64
MAX_TEXT = 4096

log = logging.getLogger(LOGGER_NAME)


def _text(value: Any, limit: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


class ChatNamespace(socketio.AsyncNamespace):
    """``/chat``: rooms joined by name, messages said to a room."""

    async def on_connect(self, sid, environ, auth=None):
        user = _text(auth.get("user"), MAX_NAME) if isinstance(auth, dict) else None
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError("auth.user is required")
        await self.save_session(sid, {"user": user})

    async def on_disconnect(self, sid, reason=None):
        log.info("chat: %s left (%s)", sid, reason)

    async def _room(self, sid, data) -> tuple[str, str]:
        room = _text(data.get("room"), MAX_NAME) if isinstance(data, dict) else None
        if room is None:
            raise ValueError("expected {room: <1-64 characters>}")
        return (await self.get_session(sid))["user"], room

    async def on_join(self, sid, data):
        user, room = await self._room(sid, data)
        await self.enter_room(sid, room)
        await self.emit("presence", {"user": user, "room": room, "action": "join"}, room=room, skip_sid=sid)
        return {"room": room, "members": _members(self.server, self.namespace, room)}

    async def on_leave(self, sid, data):
        user, room = await self._room(sid, data)
        await self.leave_room(sid, room)
        await self.emit("presence", {"user": user, "room": room, "action": "leave"}, room=room)
        return {"room": room, "members": _members(self.server, self.namespace, room)}

    async def on_say(self, sid, data):
        user, room = await self._room(sid, data)
        text = _text(data.get("text"), MAX_TEXT)
        if text is None:
            raise ValueError(f"expected {{text: <1-{MAX_TEXT} characters>}}")
        log.info("chat: %s says %d characters to %s", user, len(text), room)
        await self.emit("chat_message", {"user": user, "room": room, "text": text}, room=room)
        return {"delivered": True}


def _members(server: socketio.AsyncServer, namespace: str, room: str) -> int:
    return sum(1 for _ in server.manager.get_participants(namespace, room))


def build_app(redis_url: str | None = None, server_options: dict[str, Any] | None = None,
              **instrument_kwargs) -> tuple[web.Application, socketio.AsyncServer, Any]:
    """The aiohttp app, its Socket.IO server (``server_options``: more ``AsyncServer`` arguments) and
    the exporter's instrumentation of it (``instrument_kwargs``: ``exporter.instrument`` arguments)."""
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager, cors_allowed_origins="*",
                               **(server_options or {}))

    @sio.event
    async def ping(sid, data=None):
        return "pong"

    sio.register_namespace(ChatNamespace("/chat"))
    app = web.Application()
    sio.attach(app)

    async def healthz(request):
        return web.Response(text="ok\n")

    app.router.add_get("/healthz", healthz)
    instrument_kwargs.setdefault("logger", LOGGER_NAME)
    instrumentation = exporter.instrument_socketio(sio, app=app, **instrument_kwargs)
    return app, sio, instrumentation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m instrumented_server.socketio_chat", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("SOCKETIO_HOST", "127.0.0.1"), help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SOCKETIO_PORT", DEFAULT_PORT)),
                        help=f"Socket.IO, /metrics and /healthz port (default {DEFAULT_PORT})")
    parser.add_argument("--redis-url", default=os.environ.get("SOCKETIO_REDIS_URL") or None,
                        help="share rooms over Redis with python-socketio's AsyncRedisManager (SOCKETIO_REDIS_URL)")
    parser.add_argument("--service-name", default=None, help="service.name (default OTEL_SERVICE_NAME, else socketio-chat)")
    return parser


async def serve(args: argparse.Namespace) -> None:
    service_name = args.service_name or os.environ.get("OTEL_SERVICE_NAME") or "socketio-chat"
    app, sio, instrumentation = build_app(args.redis_url, service_name=service_name)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        print(f"socketio_chat listening on http://{args.host}:{args.port}/socket.io/ "
              f"(metrics on http://{args.host}:{args.port}/metrics)", flush=True)
        await stop.wait()
        log.info("shutting down: disconnecting clients")
        await sio.shutdown()
    finally:
        await runner.cleanup()
        instrumentation.shutdown(5.0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"socketio_chat: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
