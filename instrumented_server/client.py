"""A Python client: reconnects with backoff, resubscribes, and resumes each channel from its position.

Usage::

    async with Client("ws://127.0.0.1:8765/", token=lambda: mint_token()) as client:
        await client.subscribe("chat:lobby")
        await client.publish("chat:lobby", {"text": "hi"})
        async for event in client:          # message, join, leave, resync, unsubscribed
            ...

What it guarantees, with the server's history: every publication of a subscribed channel is handed
to the application once, in offset order, across reconnects; when the server says the gap is too
old, a ``resync`` event is handed over instead (reload the state from its source, then carry on).

Given several URLs (instances of one service), each reconnect tries the next one.

Close codes decide what happens next (``protocol.CloseCode``): 4001/4002/4003 stop the client
(``AuthenticationFailed``: retrying the same credentials cannot help); 4006 reconnects at once
with a fresh token; 1001 (server draining) reconnects after a short jittered pause; anything
else reconnects with exponential backoff and full jitter, capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, Union

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from instrumented_server.broker.base import LOCAL_ONLY_OFFSET
from instrumented_server.protocol import TERMINAL_CLOSE_CODES, CloseCode, encode_command, parse_event

log = logging.getLogger("instrumented_server.client")

TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]]]


class ClientError(Exception):
    """The server refused a command (an ``error`` reply): ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotConnected(ClientError):
    def __init__(self, message: str = "not connected") -> None:
        super().__init__("not_connected", message)


class AuthenticationFailed(ClientError):
    """The server closed with 4001, 4002 or 4003: the client stops instead of retrying."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(f"close_{close_code}", reason or "authentication failed")
        self.close_code = close_code


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: a random delay in [0, min(cap, initial * factor**attempt)]."""

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 15.0

    def delay(self, attempt: int, rng: random.Random | Any = random) -> float:
        ceiling = min(self.cap, self.initial * (self.factor ** min(attempt, 64)))
        return rng.uniform(0, ceiling)


@dataclass
class ChannelPosition:
    """Where the client stands in one channel: the last offset handed over, in which epoch."""

    channel: str
    offset: int | None = None
    epoch: str | None = None
    recovering: bool = False  # a resubscription is under way: live messages are dropped until its ack


@dataclass
class ClientStats:
    connects: int = 0
    reconnects: int = 0
    delivered: int = 0
    duplicates_dropped: int = 0
    gaps_recovered: int = 0
    resyncs: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)


class Client:
    def __init__(self, url: str | Sequence[str], token: TokenSource, *, origin: str | None = None, backoff: Backoff = Backoff(),
                 request_timeout: float = 10.0, refresh_margin: float = 0.2, max_events: int = 0,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 connect_kwargs: dict[str, Any] | None = None, rng: random.Random | None = None) -> None:
        # Several URLs (instances of one service): each reconnect tries the next one, so a client
        # of a dead or draining instance moves on and resumes from its offsets over there.
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("at least one URL is needed")
        self._url_index = 0
        self._token = token
        self.origin = origin
        self.backoff = backoff
        self.request_timeout = request_timeout
        self.refresh_margin = refresh_margin  # refresh when this share of the token's life is left
        self.connect_kwargs = dict(connect_kwargs or {})
        self.rng = rng or random.Random()
        self.positions: dict[str, ChannelPosition] = {}
        self.stats = ClientStats()
        self.client_id: str | None = None
        # Events go to ``on_event`` (called in the reader: cheap, must not block) or to the queue.
        self.on_event = on_event
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_events)
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], Callable[[dict[str, Any]], None] | None]] = {}
        self._connection: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._fatal: Exception | None = None
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float | None = None) -> None:
        """Connect (and keep reconnecting in the background); returns once connected."""
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        await self.wait_connected(timeout if timeout is not None else self.request_timeout)

    async def wait_connected(self, timeout: float) -> None:
        if self._connected.is_set():
            return  # the common case, on every request: no task, no wait
        waiter = asyncio.ensure_future(self._connected.wait())
        stopper = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        if self._fatal is not None:
            raise self._fatal
        if not self._connected.is_set():
            raise NotConnected(f"not connected within {timeout:g}s")

    async def close(self) -> None:
        self._closing = True
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
        if self._connection is not None:
            await self._connection.close(CloseCode.NORMAL)
        if self._runner is not None:
            self._runner.cancel()  # it may be sleeping before a reconnect
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> "Client":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return self.urls[self._url_index]

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ------------------------------------------------------------------ commands

    async def subscribe(self, channel: str, *, offset: int | None = None, epoch: str | None = None) -> dict[str, Any]:
        """Subscribe (resuming after ``offset`` in ``epoch`` if given); kept across reconnects."""
        position = self.positions.get(channel) or ChannelPosition(channel, offset, epoch)
        self.positions[channel] = position
        try:
            return await self._subscribe(position)
        except ClientError as exc:
            if exc.code != "already_subscribed":
                self.positions.pop(channel, None)
            raise

    async def unsubscribe(self, channel: str) -> dict[str, Any]:
        self.positions.pop(channel, None)
        return await self.request("unsubscribe", {"channel": channel})

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        """Publish; the reply carries the stored publication's offset and epoch."""
        return await self.request("publish", {"channel": channel, "data": data})

    async def presence(self, channel: str) -> dict[str, Any]:
        return (await self.request("presence", {"channel": channel}))["clients"]

    async def history(self, channel: str, since_offset: int = 0, limit: int = 100, epoch: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"channel": channel, "since_offset": since_offset, "limit": limit}
        if epoch is not None:
            payload["epoch"] = epoch
        return await self.request("history", payload)

    async def ping(self) -> None:
        await self.request("ping", {})

    async def request(self, type_: str, payload: dict[str, Any],
                      on_reply: Callable[[dict[str, Any]], None] | None = None, *,
                      wait_connected: bool = True) -> dict[str, Any]:
        """Send a command and return its ack payload; an error reply raises ``ClientError``.

        ``on_reply`` runs in the reader as soon as the reply is read, before any later event.
        """
        if wait_connected:
            await self.wait_connected(self.request_timeout)
        connection = self._connection
        if connection is None:
            raise NotConnected()
        message_id = f"c{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = (future, on_reply)
        try:
            await connection.send(encode_command(type_, payload, message_id))
            event = await asyncio.wait_for(future, self.request_timeout)
        except ConnectionClosed:
            raise NotConnected("connection lost before the reply") from None
        except asyncio.TimeoutError:
            raise NotConnected(f"no reply to {type_} within {self.request_timeout:g}s") from None
        finally:
            self._pending.pop(message_id, None)
        if event["type"] == "error":
            raise ClientError(event["payload"].get("code", "unknown"), event["payload"].get("message", ""))
        return event["payload"]

    # ------------------------------------------------------------------ events for the application

    async def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while not (self._stopped.is_set() and self.events.empty()):
            getter = asyncio.ensure_future(self.events.get())
            stopper = asyncio.ensure_future(self._stopped.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        if self._fatal is not None:
            raise self._fatal

    # ------------------------------------------------------------------ connection loop

    async def _current_token(self) -> str:
        token = self._token() if callable(self._token) else self._token
        if inspect.isawaitable(token):
            token = await token
        return str(token)

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closing:
                code, reason, was_connected = await self._connect_once()
                if self._closing:
                    break
                if code is not None:
                    self.stats.close_codes[code] = self.stats.close_codes.get(code, 0) + 1
                if code in TERMINAL_CLOSE_CODES:
                    self._fatal = AuthenticationFailed(code, reason)  # type: ignore[arg-type]
                    log.error("server refused the credentials (%s %s): not reconnecting", code, reason)
                    break
                if was_connected:
                    attempt = 0
                if code == CloseCode.TOKEN_EXPIRED:
                    delay = 0.0  # a fresh token from the source is all it takes
                elif code == CloseCode.GOING_AWAY:
                    delay = self.backoff.delay(0, self.rng)  # the server drains: spread the herd
                else:
                    delay = self.backoff.delay(attempt, self.rng)
                    if code == CloseCode.RATE_LIMITED:
                        delay = max(delay, self.backoff.initial * 10)
                attempt += 1
                self._url_index = (self._url_index + 1) % len(self.urls)
                log.info("disconnected (%s %s); reconnecting to %s in %.2fs", code, reason, self.url, delay)
                await asyncio.sleep(delay)
        finally:
            self._stopped.set()
            self._fail_pending(self._fatal or NotConnected("client stopped"))

    async def _connect_once(self) -> tuple[int | None, str, bool]:
        """One connection's life: (close code or None if it never opened, reason, whether it got connected)."""
        try:
            token = await self._current_token()
        except Exception as exc:
            log.warning("the token source failed: %s", exc)
            return None, "token source failed", False
        headers = {"Authorization": f"Bearer {token}"}
        kwargs: dict[str, Any] = {"open_timeout": self.request_timeout, "close_timeout": 2.0, **self.connect_kwargs}
        if self.origin is not None:
            kwargs["origin"] = self.origin
        was_connected = False
        try:
            async with connect(self.url, additional_headers=headers, **kwargs) as connection:
                self._connection = connection
                first_event: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                reader = asyncio.ensure_future(self._read(connection, first_event))
                try:
                    await self._on_open(first_event)
                    was_connected = True
                except (ConnectionClosed, NotConnected, asyncio.TimeoutError):
                    pass
                with contextlib.suppress(ConnectionClosed):
                    await reader
                code = connection.close_code
                reason = connection.close_reason or ""
        except InvalidStatus as exc:
            return None, f"HTTP {exc.response.status_code}", False
        except (OSError, InvalidHandshake, asyncio.TimeoutError, ConnectionClosed) as exc:
            return None, str(exc) or type(exc).__name__, was_connected
        finally:
            self._connection = None
            self._connected.clear()
            if self._refresh_timer is not None:
                self._refresh_timer.cancel()
            self._fail_pending(NotConnected("connection lost"))
        return (int(code) if code is not None else int(CloseCode.ABNORMAL)), reason, was_connected

    async def _on_open(self, first_event: asyncio.Future[dict[str, Any]]) -> None:
        first = await asyncio.wait_for(asyncio.shield(first_event), self.request_timeout)
        self.client_id = first["payload"].get("client")
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self._schedule_refresh(first["payload"].get("expires_at"))
        # Resubscribe everything, each from its last position, before the application may send.
        positions = list(self.positions.values())
        resubscriptions = [asyncio.ensure_future(self._subscribe(p, wait_connected=False)) for p in positions]
        self._connected.set()
        for position, outcome in zip(positions, await asyncio.gather(*resubscriptions, return_exceptions=True)):
            if isinstance(outcome, ClientError) and not isinstance(outcome, NotConnected):
                log.warning("resubscription to %s refused: %s", position.channel, outcome)
                self.positions.pop(position.channel, None)
                self._hand_over({"type": "unsubscribed", "payload": {"channel": position.channel, "reason": outcome.code},
                                 "metadata": {}})

    async def _subscribe(self, position: ChannelPosition, wait_connected: bool = True) -> dict[str, Any]:
        payload: dict[str, Any] = {"channel": position.channel}
        if position.offset is not None and position.epoch is not None:
            payload["recover"] = {"offset": position.offset, "epoch": position.epoch}
        position.recovering = True

        def on_ack(event: dict[str, Any]) -> None:
            # Runs in the reader, before the replay that follows the ack is read.
            position.recovering = False
            if event["type"] != "ack":
                return
            reply = event["payload"]
            position.epoch = reply.get("epoch")
            if not reply.get("recovered"):
                position.offset = reply.get("offset")

        return await self.request("subscribe", payload, on_ack, wait_connected=wait_connected)

    async def _read(self, connection: ClientConnection, first_event: asyncio.Future[dict[str, Any]]) -> None:
        try:
            await self._read_events(connection, first_event)
        finally:
            if not first_event.done():  # closed before "connected" (an auth refusal): stop waiting
                first_event.set_exception(NotConnected("closed during the handshake"))

    async def _read_events(self, connection: ClientConnection, first_event: asyncio.Future[dict[str, Any]]) -> None:
        async for text in connection:
            try:
                event = parse_event(text)
            except ValueError:
                log.warning("ignoring a frame that is not a server event")
                continue
            if not first_event.done():
                first_event.set_result(event)  # "connected"
                continue
            correlation = event["metadata"].get("correlation_id")
            if correlation is not None:
                pending = self._pending.get(correlation)
                if pending is not None:
                    future, on_reply = pending
                    if on_reply is not None:
                        on_reply(event)
                    if not future.done():
                        future.set_result(event)
                continue
            self._on_event(event)

    def _on_event(self, event: dict[str, Any]) -> None:
        type_ = event["type"]
        payload = event["payload"]
        if type_ == "message":
            position = self.positions.get(payload.get("channel"))
            if position is not None and not self._in_order(position, payload):
                return
            self.stats.delivered += 1
        elif type_ == "resync":
            position = self.positions.get(payload.get("channel"))
            if position is not None:
                position.offset, position.epoch = payload.get("offset"), payload.get("epoch")
            self.stats.resyncs += 1
        elif type_ == "unsubscribed":
            self.positions.pop(payload.get("channel"), None)
        elif type_ == "error":
            if payload.get("code") == "token_expired" and callable(self._token):
                self._background(self._refresh())
            return
        self._hand_over(event)

    def _in_order(self, position: ChannelPosition, payload: dict[str, Any]) -> bool:
        """Advance the position; False for a duplicate, or a message after a gap (then recover)."""
        offset, epoch = payload.get("offset"), payload.get("epoch")
        if offset == LOCAL_ONLY_OFFSET:
            return True  # delivered during a broker outage, in no history: no position to move
        if position.recovering:
            return False  # the resubscription's replay will bring it, in order
        if position.epoch == epoch and position.offset is not None:
            if offset <= position.offset:
                self.stats.duplicates_dropped += 1
                return False
            if offset > position.offset + 1:
                self.stats.gaps_recovered += 1
                self._background(self._recover(position))
                return False
        position.offset, position.epoch = offset, epoch
        return True

    async def _recover(self, position: ChannelPosition) -> None:
        """Fill a gap: resubscribe from the last offset handed over."""
        position.recovering = True
        with contextlib.suppress(ClientError):
            await self.request("unsubscribe", {"channel": position.channel})
        if self.positions.get(position.channel) is position:
            with contextlib.suppress(ClientError):
                await self._subscribe(position)

    def _hand_over(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event failed for a %s event", event["type"])
            return
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("event queue full: dropping a %s event", event["type"])

    # ------------------------------------------------------------------ token refresh

    def _schedule_refresh(self, expires_at: Any) -> None:
        if not callable(self._token) or not isinstance(expires_at, (int, float)):
            return
        life = expires_at - time.time()
        delay = max(0.0, life * (1 - self.refresh_margin)) if life > 0 else 0.0
        self._refresh_timer = asyncio.get_running_loop().call_later(delay, lambda: self._background(self._refresh()))

    async def _refresh(self) -> None:
        try:
            token = await self._current_token()
            reply = await self.request("connect", {"token": token})
        except ClientError as exc:
            log.warning("token refresh failed: %s", exc)
            return
        except Exception as exc:
            log.warning("the token source failed: %s", exc)
            return
        self._schedule_refresh(reply.get("expires_at"))

    # ------------------------------------------------------------------ helpers

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail_pending(self, exc: Exception) -> None:
        for future, _ in list(self._pending.values()):
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()
