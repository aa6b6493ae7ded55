"""Helpers for the server tests: an in-memory peer, a recording telemetry, a raw WebSocket test client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, AsyncIterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from exporter.hooks import NoopTelemetry
from instrumented_server.auth import Authenticator
from instrumented_server.broker.memory import MemoryBroker
from instrumented_server.config import ServerConfig
from instrumented_server.permissions import load_namespaces
from instrumented_server.protocol import encode_command, frame_payload
from instrumented_server.server import PubSubServer

SECRET = "test-secret-" + "x" * 32
# How long a test waits for something that should happen. Waits end as soon as it happens, so a
# generous deadline costs nothing on an idle machine and keeps a loaded one (load average 10 on 2
# cores has been seen) from failing a test that was only slow. Negative waits ("nothing more
# arrives within ...") are short and explicit where they are used.
DEADLINE = 30.0
AUTH = Authenticator(SECRET)

NAMESPACES = load_namespaces({
    "": {},
    "chat": {"publish": "subscribers", "presence": "all", "join_leave": True},
    "news": {"publish": "claims"},
    "secure": {"private": True},
})


def make_config(**overrides: Any) -> ServerConfig:
    values: dict[str, Any] = dict(port=0, jwt_secret=SECRET, namespaces=NAMESPACES, ping_interval=None,
                                  close_timeout=5.0, drain_timeout=10.0)
    values.update(overrides)
    return ServerConfig(**values)


def token(user: str = "alice", ttl: float = 3600, **claims: Any) -> str:
    return AUTH.mint(user, ttl=ttl, **claims)


class FakePeer:
    """A peer that keeps what it was given: ``writes`` (one list of frames per flush) and events."""

    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[list[bytes]] = []
        self.closed: tuple[int, str] | None = None
        self.buffered = buffered

    def write(self, frames: list[bytes]) -> int:
        self.writes.append(list(frames))
        return self.buffered

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def frames(self) -> list[bytes]:
        return [frame for write in self.writes for frame in write]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(bytes(frame_payload(frame))) for frame in self.frames]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def offsets(self, channel: str) -> list[int]:
        return [e["payload"]["offset"] for e in self.of_type("message") if e["payload"]["channel"] == channel]


RECORDED_HOOKS = (
    "connection_opened", "connection_rejected", "connection_closed", "reconnect", "message_received",
    "message_handled", "messages_sent", "fanout", "error", "rate_limited", "subscriptions_changed", "broker_lag",
)


class RecordingTelemetry(NoopTelemetry):
    """Telemetry switched off, but every hook call is kept as (hook, args) in ``calls``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def named(self, hook: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == hook]


def _recorder(hook: str):
    def record(self: RecordingTelemetry, *args: Any) -> None:
        self.calls.append((hook, args))

    record.__name__ = hook
    return record


for _hook in RECORDED_HOOKS:
    assert hasattr(NoopTelemetry, _hook), _hook  # the recorder follows the real seam
    setattr(RecordingTelemetry, _hook, _recorder(_hook))


async def settle(rounds: int = 5) -> None:
    """Let scheduled callbacks (the per-tick flush) and background tasks run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def eventually(predicate, timeout: float = DEADLINE, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig | None = None, broker=None, telemetry=None) -> AsyncIterator[PubSubServer]:
    config = config or make_config()
    server = PubSubServer(config, broker or MemoryBroker(history_size=config.history_size,
                                                         history_ttl=config.history_ttl), telemetry)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


class Client:
    """A raw protocol client for tests: send commands, read events, see the close code."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self._ids = 0
        self.events: list[dict[str, Any]] = []  # everything read from the wire, in order
        self._unread: list[dict[str, Any]] = []  # read while waiting for a reply, not yet returned

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, server: PubSubServer | int, tok: str | None = None, *, headers: dict[str, str] | None = None,
                      expect_connected: bool = True, **kwargs: Any) -> AsyncIterator["Client"]:
        port = server if isinstance(server, int) else server.port
        all_headers = dict(headers or {})
        if tok is not None:
            all_headers["Authorization"] = f"Bearer {tok}"
        async with connect(f"ws://127.0.0.1:{port}/", additional_headers=all_headers, open_timeout=DEADLINE,
                           close_timeout=2, **kwargs) as connection:
            client = cls(connection)
            if expect_connected:
                event = await client.next()
                assert event["type"] == "connected", event
                client.client_id = event["payload"]["client"]
            yield client

    async def send(self, type_: str, payload: dict[str, Any] | None = None) -> str:
        self._ids += 1
        message_id = f"m{self._ids}"
        await self.connection.send(encode_command(type_, payload or {}, message_id))
        return message_id

    async def next(self, timeout: float = DEADLINE) -> dict[str, Any]:
        if self._unread:
            return self._unread.pop(0)
        text = await asyncio.wait_for(self.connection.recv(), timeout)
        event = json.loads(text)
        self.events.append(event)
        return event

    async def request(self, type_: str, payload: dict[str, Any] | None = None,
                      timeout: float = DEADLINE) -> dict[str, Any]:
        """Send a command and return its reply (ack or error); other events stay for ``next``."""
        message_id = await self.send(type_, payload)
        deadline = time.monotonic() + timeout
        others: list[dict[str, Any]] = []
        while True:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            if event["metadata"].get("correlation_id") == message_id:
                self._unread[:0] = others
                return event
            others.append(event)

    async def messages(self, count: int, timeout: float = DEADLINE) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            if event["type"] == "message":
                got.append(event)
        return got

    async def until(self, predicate, timeout: float = DEADLINE, then: float = 0.3) -> list[dict[str, Any]]:
        """Events read until one matches ``predicate`` (within ``timeout``), plus whatever else
        arrives within ``then`` seconds after it (so that an extra event would show)."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not (got and predicate(got[-1])):
            got.append(await self.next(max(0.01, deadline - time.monotonic())))
        return got + await self.quiet(then)

    async def quiet(self, seconds: float = 0.2) -> list[dict[str, Any]]:
        """Whatever arrives within ``seconds`` (to check that nothing more does)."""
        got: list[dict[str, Any]] = []
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                got.append(await self.next(seconds))
        return got

    async def closed(self, timeout: float = DEADLINE) -> int | None:
        """Read until the server closes; return the close code the client received."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    self.events.append(json.loads(await self.connection.recv()))
        return self.connection.close_code
