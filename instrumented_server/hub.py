"""The hub: sessions, channels, presence, limits, and the fan-out hot path.

Commands from one session are handled one after another (the server awaits ``handle`` for each
message), so replies keep the order of the commands. Publications reach ``on_publication`` from
the broker; it frames each one once and appends the same bytes to every live subscriber's outbox;
``flush`` runs once per event-loop tick and gives each session its frames in one write.

Delivery guarantee (per channel, per session): while a subscription is set up or resumed, live
publications are buffered for that session; the missed ones come from the broker's history, then
the buffer, with anything at or below the last offset sent dropped. So a client that resumes
from (offset, epoch) gets every later publication exactly once, in offset order, or a ``resync``
event when history no longer reaches back that far.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import logging
import secrets
import time
from typing import Any, Awaitable, Callable

from exporter.hooks import NoopTelemetry
from instrumented_server.auth import AuthError, Authenticator, Identity
from instrumented_server.broker.base import LOCAL_ONLY_OFFSET, Broker, BrokerUnavailable, HistoryResult, Publication
from instrumented_server.config import ServerConfig
from instrumented_server.permissions import Channel, Permissions, parse_channel
from instrumented_server.protocol import (
    CLOSE_REASONS,
    ERROR_REASON,
    EVENT_LABEL,
    CloseCode,
    Command,
    ErrorCode,
    ProtocolError,
    Recover,
    encode_error,
    encode_event,
    encode_message,
    milliseconds,
    parse_command,
    text_frame,
)
from instrumented_server.ratelimit import KeyedBuckets, TokenBucket
from instrumented_server.session import SSE, WEBSOCKET, Peer, Session, Subscription
from instrumented_server.sse import SseDelivery, data_event

log = logging.getLogger("instrumented_server.hub")

# Channel names repeat; taking one apart is cheap but not free, so keep the recent ones.
channel_info = functools.lru_cache(maxsize=4096)(parse_channel)

BROKER_LOG_INTERVAL = 5.0  # seconds between two log lines about broker failures

# The connection-level label of websocket_active_connections (connections are not per namespace).
CONNECTION_NAMESPACE = "default"


def namespace_label(namespace: str) -> str:
    return namespace or "default"


class ChannelState:
    """This process's view of one channel: its live subscribers and those still catching up."""

    __slots__ = ("subscribers", "recovering", "_snapshot", "_sse_snapshot", "last_offset", "epoch")

    def __init__(self) -> None:
        self.subscribers: dict[Session, None] = {}  # insertion-ordered set
        self.recovering: dict[Session, list[Publication]] = {}  # live publications held back
        self._snapshot: tuple[Session, ...] | None = None
        self._sse_snapshot: tuple[Session, ...] = ()
        self.last_offset: int | None = None  # last publication fanned out live, to drop redeliveries
        self.epoch: str | None = None

    def snapshot(self) -> tuple[Session, ...]:
        """The WebSocket subscribers as a tuple, rebuilt only when membership changed."""
        if self._snapshot is None:
            self._split()
        return self._snapshot  # type: ignore[return-value]

    def sse_snapshot(self) -> tuple[Session, ...]:
        """The SSE subscribers (encoded differently, so fanned out separately)."""
        if self._snapshot is None:
            self._split()
        return self._sse_snapshot

    def _split(self) -> None:
        sessions = tuple(self.subscribers)
        self._snapshot = tuple(s for s in sessions if s.transport != SSE)
        self._sse_snapshot = tuple(s for s in sessions if s.transport == SSE)

    def add(self, session: Session) -> None:
        self.subscribers[session] = None
        self._snapshot = None

    def discard(self, session: Session) -> bool:
        """Remove ``session`` (live or catching up); True if it was live."""
        self.recovering.pop(session, None)
        if session in self.subscribers:
            del self.subscribers[session]
            self._snapshot = None
            return True
        return False

    @property
    def empty(self) -> bool:
        return not self.subscribers and not self.recovering


class Hub:
    def __init__(self, broker: Broker, config: ServerConfig, *, permissions: Permissions | None = None,
                 authenticator: Authenticator | None = None, telemetry: Any = None,
                 wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.broker = broker
        self.config = config
        self.permissions = permissions or Permissions(config.namespaces)
        self.authenticator = authenticator or Authenticator(
            config.jwt_secret, audience=config.jwt_audience, issuer=config.jwt_issuer)
        self.telemetry = telemetry if telemetry is not None else NoopTelemetry()
        self.wall = wall
        self.monotonic = monotonic
        self.node = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self.sessions: dict[str, Session] = {}
        self.channels: dict[str, ChannelState] = {}
        self.draining = False
        self._ip_messages = KeyedBuckets(config.ip_message_rate)
        self._broker_channels: set[str] = set()
        self._broker_locks: dict[str, list[Any]] = {}  # channel -> [lock, users]
        self._dirty: list[Session] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_broker_log = 0.0
        self._unlogged_broker_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[str, Callable[[Session, Command], Awaitable[None]]] = {
            "connect": self._connect,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "publish": self._publish,
            "presence": self._presence,
            "history": self._history,
            "ping": self._ping,
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.broker.start(self.on_publication)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.close()

    def drain(self) -> None:
        """Stop taking commands and close every session with 1001, telling clients to reconnect."""
        self.draining = True
        for session in list(self.sessions.values()):
            self.close(session, CloseCode.GOING_AWAY)

    def new_id(self) -> str:
        return f"{self.node}-{next(self._ids)}"

    # ------------------------------------------------------------------ sessions

    def open_session(self, peer: Peer, identity: Identity, ip: str, transport: str = WEBSOCKET) -> Session:
        session = Session(self.new_id(), peer, ip, identity, TokenBucket(self.config.message_rate, self.monotonic()),
                          transport)
        self.sessions[session.id] = session
        self._ip_messages.acquire(ip)
        self.telemetry.connection_opened(CONNECTION_NAMESPACE, transport)
        self._event(session, "connected", {
            "client": session.id, "user": identity.user, "expires_at": identity.expires_at,
            "ping_interval": self.config.ping_interval,
        })
        self._schedule_expiry(session)
        return session

    async def close_session(self, session: Session, code: int | None) -> None:
        """The connection is gone: forget the session and everything it held. Idempotent."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.open = False
        if session.close_code is None:
            session.close_code = code
        session.outbox = []
        self._cancel_timers(session)
        self._ip_messages.release(session.ip)
        for name, sub in list(session.subscriptions.items()):
            await self._drop_subscription(session, sub)
        session.subscriptions.clear()
        self.telemetry.connection_closed(CONNECTION_NAMESPACE, int(session.close_code or CloseCode.ABNORMAL),
                                         session.transport)

    def close(self, session: Session, code: int, reason: str | None = None) -> None:
        """Start closing ``session`` with ``code``; what is already queued for it is written first."""
        if not session.open:
            return
        if session.outbox:
            try:
                session.peer.write(session.outbox)
            except Exception:  # the transport is already gone: nothing more to say
                pass
            session.outbox = []
        session.open = False
        session.close_code = code
        self._cancel_timers(session)
        session.peer.close(code, reason or CLOSE_REASONS.get(code, ""))

    # ------------------------------------------------------------------ incoming messages

    async def handle(self, session: Session, message: str | bytes) -> None:
        """One message from the client: limits, parsing, authorization, then the command."""
        if not session.open:
            return
        telemetry = self.telemetry
        if isinstance(message, bytes):
            telemetry.message_received("other", len(message))
            telemetry.error("malformed")
            self.close(session, CloseCode.UNSUPPORTED_DATA)
            return
        size = len(message) if message.isascii() else len(message.encode("utf-8"))
        if size > self.config.max_message_size:
            telemetry.message_received("other", size)
            telemetry.error("too_large")
            self.close(session, CloseCode.MESSAGE_TOO_LARGE)
            return
        now = self.monotonic()
        if not session.bucket.take(now):
            self._rate_limited(session, "connection")
            return
        if not self._ip_messages.take(session.ip, now):
            self._rate_limited(session, "ip")
            return
        session.strikes = 0

        command = parse_command(message)
        if isinstance(command, ProtocolError):
            telemetry.message_received(command.type, size)
            self._error(session, command.code, command.message, command.correlation_id)
            session.protocol_errors += 1
            if self.config.max_protocol_errors and session.protocol_errors >= self.config.max_protocol_errors:
                self.close(session, CloseCode.POLICY_VIOLATION)
            return
        session.protocol_errors = 0
        type_ = command.type
        telemetry.message_received(type_, size)
        started = time.perf_counter()
        if telemetry.enabled:
            with telemetry.span(f"ws.{type_}", {"messaging.operation": type_, "messaging.message.body.size": size,
                                                 "ws.client": session.id},
                                parent=command.traceparent or None, kind="server") as span:
                await self._dispatch(session, command)
                telemetry.message_handled(type_, time.perf_counter() - started, span)
        else:
            await self._dispatch(session, command)
            telemetry.message_handled(type_, time.perf_counter() - started)

    async def _dispatch(self, session: Session, command: Command) -> None:
        if self.draining:
            return
        if command.type not in ("connect", "ping") and (session.suspended or session.identity.expired(self.wall())):
            if not session.suspended:
                self._expire(session)  # the timer has not fired yet; the clock is what counts
            self._error(session, ErrorCode.TOKEN_EXPIRED,
                        "token expired: send a connect command with a new token", command.message_id)
            return
        try:
            await self._handlers[command.type](session, command)
        except Exception:
            log.exception("command %s failed", command.type)
            self._error(session, ErrorCode.INTERNAL, "internal error", command.message_id)

    def _rate_limited(self, session: Session, scope: str) -> None:
        self.telemetry.rate_limited(scope)
        session.strikes += 1
        if session.strikes >= max(1, self.config.rate_limit_strikes):
            self.telemetry.error("rate_limited")
            self.close(session, CloseCode.RATE_LIMITED)
            return
        self._error(session, ErrorCode.RATE_LIMITED, "rate limit exceeded: message dropped", None)

    # ------------------------------------------------------------------ commands

    async def _ping(self, session: Session, command: Command) -> None:
        self._ack(session, command, {})

    async def _connect(self, session: Session, command: Command) -> None:
        """Token refresh: same user, new expiry and grants; suspended subscriptions resume."""
        try:
            identity = self.authenticator.verify(command.token, self.wall())
        except AuthError as exc:
            self._error(session, ErrorCode.INVALID_TOKEN, exc.reason, command.message_id)
            return
        if identity.user != session.user:
            self._error(session, ErrorCode.INVALID_TOKEN, "the new token is for another user", command.message_id)
            return
        session.identity = identity
        was_suspended, session.suspended = session.suspended, False
        self._cancel_timers(session)
        self._schedule_expiry(session)
        self._ack(session, command, {"client": session.id, "user": identity.user, "expires_at": identity.expires_at})
        # New grants may take channels away; suspended subscriptions resume where they stopped.
        for name, sub in list(session.subscriptions.items()):
            if self.permissions.check("subscribe", sub.channel, session.user, identity.grants, True) is not None:
                session.subscriptions.pop(name, None)
                await self._drop_subscription(session, sub)
                self._event(session, "unsubscribed", {"channel": name, "reason": ErrorCode.FORBIDDEN.value})
            elif was_suspended and not sub.live:
                await self._start_subscription(session, sub, sub.resume, None)

    async def subscribe(self, session: Session, channel: str, recover: Recover | None) -> bool:
        """Subscribe without a client command (an SSE stream's channels); True once it is live."""
        await self._subscribe(session, Command("subscribe", None, channel=channel, recover=recover))
        sub = session.subscriptions.get(channel)
        return sub is not None and sub.live

    async def _subscribe(self, session: Session, command: Command) -> None:
        name = command.channel
        assert name is not None
        channel = channel_info(name)
        if not self._allowed(session, "subscribe", channel, command):
            return
        if name in session.subscriptions:
            self._error(session, ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {name}", command.message_id)
            return
        if len(session.subscriptions) >= self.config.max_subscriptions:
            self._error(session, ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                        f"at most {self.config.max_subscriptions} subscriptions per connection", command.message_id)
            return
        namespace = self.permissions.namespace(channel)
        assert namespace is not None  # _allowed refused unknown namespaces
        sub = Subscription(channel, namespace)
        session.subscriptions[name] = sub
        self.telemetry.subscriptions_changed(namespace_label(channel.namespace), 1)
        await self._start_subscription(session, sub, command.recover, command.message_id, reply=True)

    async def _start_subscription(self, session: Session, sub: Subscription, recover: Recover | None,
                                  correlation_id: str | None, reply: bool = False) -> None:
        """Join the channel: buffer live publications, fetch what was missed, send both, go live."""
        name = sub.channel.name
        sub.resume = recover
        state = self.channels.get(name)
        if state is None:
            state = self.channels[name] = ChannelState()
        state.recovering[session] = []
        try:
            await self._sync_broker(name)
            if sub.namespace.presence != "none" and self._still_wanted(session, sub):
                await self.broker.presence_add(name, session.id, {"user": session.user})
                if not self._still_wanted(session, sub):  # it left while we added it: take it back out
                    await self.broker.presence_remove(name, session.id)
            # A replay is a read of history: without the history permission (a namespace with
            # history: none or claims) the client is told to resync instead of being replayed to.
            replay_allowed = self.permissions.check("history", sub.channel, session.user, session.identity.grants,
                                                    True) is None
            if recover is not None and replay_allowed:
                result = await self.broker.history(name, recover.offset, recover.epoch, self.config.history_size)
            else:
                result = await self.broker.history(name, 0, None, 0)
                if recover is not None:
                    result = dataclasses.replace(result, publications=(), recover_failed=True)
        except Exception as exc:
            state.recovering.pop(session, None)
            if session.subscriptions.get(name) is sub:
                del session.subscriptions[name]
                self.telemetry.subscriptions_changed(namespace_label(sub.channel.namespace), -1)
            await self._release(name)
            self._broker_failed("subscribe", exc, session, correlation_id)
            return

        buffered = state.recovering.pop(session, None)
        if buffered is None or not self._still_wanted(session, sub):
            # Closed, unsubscribed or suspended meanwhile: whoever did that cleaned up (and a
            # suspended subscription resumes from ``sub.resume`` after a token refresh).
            await self._release(name)
            return
        self._go_live(session, sub, state, recover, result, buffered, correlation_id, reply)

    @staticmethod
    def _still_wanted(session: Session, sub: Subscription) -> bool:
        return session.open and not session.suspended and session.subscriptions.get(sub.channel.name) is sub

    def _go_live(self, session: Session, sub: Subscription, state: ChannelState, recover: Recover | None,
                 result: HistoryResult, buffered: list[Publication], correlation_id: str | None, reply: bool) -> None:
        # No await in here: the replay, the held-back live publications and going live are one step,
        # so no publication can slip between them or arrive twice.
        name = sub.channel.name
        recovered = recover is not None and not result.recover_failed
        replay = result.publications if recovered else ()
        last = recover.offset if recovered else result.latest_offset  # type: ignore[union-attr]
        if reply:
            payload: dict[str, Any] = {"channel": name, "epoch": result.epoch, "offset": result.latest_offset}
            if recover is not None:
                payload["recovered"] = recovered
                payload["replayed"] = len(replay)
            if session.transport == SSE:
                # The ack sets the stream's position for this channel (its Last-Event-ID part).
                body = self._event_bytes("ack", payload, correlation_id)
                self._send_item(session, SseDelivery(name, last, result.epoch, data_event(body)), "ack")
            else:
                self._event(session, "ack", payload, correlation_id)
        if recover is not None:
            self.telemetry.reconnect("replayed" if recovered else "resync")
            if not recovered:
                reason = ("history not allowed on this channel" if self.permissions.check(
                    "history", sub.channel, session.user, session.identity.grants, True) is not None else
                          "epoch changed" if recover.epoch != result.epoch else "offset no longer in history")
                self._event(session, "resync", {"channel": name, "epoch": result.epoch,
                                                "offset": result.latest_offset, "reason": reason})
        epoch = result.epoch
        for pub in replay:
            if pub.offset > last:
                self._send_publication(session, pub)
                last = pub.offset
        for pub in buffered:
            if pub.offset == LOCAL_ONLY_OFFSET:
                self._send_publication(session, pub)  # in no history: it moves no position
                continue
            if pub.epoch == epoch and pub.offset <= last:
                continue  # already sent from history, or older than the subscription
            if pub.epoch != epoch:
                self._event(session, "resync", {"channel": name, "epoch": pub.epoch, "offset": pub.offset - 1,
                                                "reason": "epoch changed"})
            self._send_publication(session, pub)
            last, epoch = pub.offset, pub.epoch
        sub.resume = None
        sub.live = True
        sub.offset, sub.epoch = last, epoch
        if sub.namespace.join_leave:
            self._broadcast(state, "join", {"channel": name, "client": session.id, "user": session.user})
        state.add(session)

    async def _unsubscribe(self, session: Session, command: Command) -> None:
        name = command.channel
        assert name is not None
        sub = session.subscriptions.pop(name, None)
        if sub is None:
            self._error(session, ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {name}", command.message_id)
            return
        self._ack(session, command, {"channel": name})
        await self._drop_subscription(session, sub)

    async def _publish(self, session: Session, command: Command) -> None:
        name = command.channel
        assert name is not None and command.data is not None
        if not self._allowed(session, "publish", channel_info(name), command):
            return
        metadata = {"message_id": self.new_id(), "publisher": session.user}
        if self.telemetry.enabled:
            self.telemetry.inject(metadata)  # deliveries, on any process, continue this trace
        try:
            pub = await self.broker.publish(name, command.data, metadata)
        except Exception as exc:
            local = exc.publication if isinstance(exc, BrokerUnavailable) else None
            if local is not None:
                # Degraded mode: the broker is sure nothing was stored and hands back a local-only
                # copy for this process's subscribers. Not acknowledged: the publisher may retry.
                self.on_publication(local)
            self._broker_failed("publish", exc, session, command.message_id,
                                "delivered to this server's subscribers only, not stored" if local else "retry later")
            return
        self._ack(session, command, {"channel": name, "offset": pub.offset, "epoch": pub.epoch})

    async def _presence(self, session: Session, command: Command) -> None:
        name = command.channel
        assert name is not None
        if not self._allowed(session, "presence", channel_info(name), command):
            return
        try:
            clients = await self.broker.presence(name)
        except Exception as exc:
            self._broker_failed("presence", exc, session, command.message_id)
            return
        self._ack(session, command, {"channel": name, "clients": {cid: dict(info) for cid, info in sorted(clients.items())}})

    async def _history(self, session: Session, command: Command) -> None:
        name = command.channel
        assert name is not None
        if not self._allowed(session, "history", channel_info(name), command):
            return
        try:
            result = await self.broker.history(name, command.since_offset or 0, command.epoch, command.limit or 0)
        except Exception as exc:
            self._broker_failed("history", exc, session, command.message_id)
            return
        self._ack(session, command, {
            "channel": name, "epoch": result.epoch, "offset": result.latest_offset,
            "recover_failed": result.recover_failed,
            "publications": [
                {"offset": p.offset, "data": json.loads(p.data),
                 "metadata": {k: v for k, v in p.metadata.items() if k in ("message_id", "publisher")}}
                for p in result.publications
            ],
        })

    def _broker_failed(self, what: str, exc: BaseException, session: Session | None = None,
                       correlation_id: str | None = None, advice: str = "retry later") -> None:
        """Count a broker failure, tell the client if there is one, log at most every few seconds."""
        if session is not None:
            self._error(session, ErrorCode.UNAVAILABLE, f"the broker is unavailable: {advice}", correlation_id)
        else:
            self.telemetry.error("broker")
        now = self.monotonic()
        if now >= self._next_broker_log:
            # An outage fails every command: one line per interval, not one per command.
            log.warning("broker %s failed: %s (%d similar failures not logged)", what, exc or type(exc).__name__,
                        self._unlogged_broker_failures)
            self._next_broker_log = now + BROKER_LOG_INTERVAL
            self._unlogged_broker_failures = 0
        else:
            self._unlogged_broker_failures += 1

    def _allowed(self, session: Session, action: str, channel: Channel, command: Command) -> bool:
        sub = session.subscriptions.get(channel.name)
        denied = self.permissions.check(action, channel, session.user, session.identity.grants,
                                        sub is not None and sub.live)
        if denied is None:
            return True
        if denied is ErrorCode.UNKNOWN_NAMESPACE:
            message = f"unknown namespace {channel.namespace!r}"
        else:
            message = f"{action} is not allowed on {channel.name}"
        self._error(session, denied, message, command.message_id)
        return False

    # ------------------------------------------------------------------ subscriptions and the broker

    async def _drop_subscription(self, session: Session, sub: Subscription) -> None:
        """Undo a subscription already removed from ``session.subscriptions``."""
        name = sub.channel.name
        self.telemetry.subscriptions_changed(namespace_label(sub.channel.namespace), -1)
        state = self.channels.get(name)
        was_live = state.discard(session) if state is not None else False
        sub.live = False
        if was_live and sub.namespace.join_leave and state is not None:
            self._broadcast(state, "leave", {"channel": name, "client": session.id, "user": session.user})
        if sub.namespace.presence != "none":
            try:
                await self.broker.presence_remove(name, session.id)
            except Exception as exc:
                self._broker_failed("presence removal", exc)
        await self._release(name)

    async def _release(self, name: str) -> None:
        state = self.channels.get(name)
        if state is not None and state.empty:
            del self.channels[name]
        if name in self._broker_channels and name not in self.channels:
            try:
                await self._sync_broker(name)
            except Exception as exc:
                self._broker_failed("unsubscribe", exc)

    async def _sync_broker(self, name: str) -> None:
        """Make the broker subscription match local interest; serialised per channel."""
        entry = self._broker_locks.get(name)
        if entry is None:
            entry = self._broker_locks[name] = [asyncio.Lock(), 0]
        entry[1] += 1  # users of this lock, waiting or holding: it is dropped only when none is left
        try:
            async with entry[0]:
                wanted = name in self.channels
                if wanted and name not in self._broker_channels:
                    await self.broker.subscribe(name)
                    self._broker_channels.add(name)
                elif not wanted and name in self._broker_channels:
                    self._broker_channels.discard(name)
                    await self.broker.unsubscribe(name)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._broker_locks[name]

    # ------------------------------------------------------------------ token expiry

    def _schedule_expiry(self, session: Session) -> None:
        loop = self._loop or asyncio.get_running_loop()
        delay = max(0.0, session.identity.expires_at - self.wall())
        session.expiry_timer = loop.call_later(delay, self._expire, session)

    def _cancel_timers(self, session: Session) -> None:
        for timer in (session.expiry_timer, session.grace_timer):
            if timer is not None:
                timer.cancel()
        session.expiry_timer = session.grace_timer = None

    def _expire(self, session: Session) -> None:
        """The token expired: suspend every subscription (no more deliveries) until a refresh."""
        if not session.open or session.suspended:
            return
        if not session.identity.expired(self.wall()):
            self._schedule_expiry(session)  # refreshed meanwhile, or the timer fired early
            return
        if session.transport == SSE:
            # A stream cannot send a new token: end it; the client reconnects with a fresh one
            # (cookie or header) and its Last-Event-ID, and loses nothing.
            self.close(session, CloseCode.TOKEN_EXPIRED)
            return
        session.suspended = True
        for name, sub in session.subscriptions.items():
            state = self.channels.get(name)
            if sub.live and state is not None:
                sub.resume = self._position(sub, state)
            sub.live = False
            if state is not None:
                state.discard(session)
            self._background(self._leave_after_expiry(session, sub))
        grace = self.config.token_refresh_grace
        self._error(session, ErrorCode.TOKEN_EXPIRED,
                    f"token expired: send a connect command with a new token within {grace:g}s", None)
        loop = self._loop or asyncio.get_running_loop()
        session.grace_timer = loop.call_later(grace, self._expired_unrefreshed, session)

    def _expired_unrefreshed(self, session: Session) -> None:
        if session.suspended:
            self.close(session, CloseCode.TOKEN_EXPIRED)

    async def _leave_after_expiry(self, session: Session, sub: Subscription) -> None:
        name = sub.channel.name
        if sub.namespace.presence != "none":
            try:
                await self.broker.presence_remove(name, session.id)
            except Exception as exc:
                self._broker_failed("presence removal", exc)
        await self._release(name)

    @staticmethod
    def _position(sub: Subscription, state: ChannelState) -> Recover:
        """Where a live subscription stands: the later of where it went live and the last fan-out."""
        if state.epoch == sub.epoch and state.last_offset is not None and state.last_offset > sub.offset:
            return Recover(state.last_offset, state.epoch)
        return Recover(sub.offset, sub.epoch)

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ fan-out and writing

    def on_publication(self, pub: Publication) -> None:
        """A publication for a channel this process is subscribed to, from any process."""
        state = self.channels.get(pub.channel)
        if state is None:
            return
        for held in state.recovering.values():
            held.append(pub)
        if pub.offset != LOCAL_ONLY_OFFSET:  # a local-only copy (broker outage) moves no position
            if state.epoch == pub.epoch:
                if state.last_offset is not None and pub.offset <= state.last_offset:
                    return  # a redelivery: every live subscriber already has it
            elif state.epoch is not None:
                # History was lost (a restarted broker): positions in the old epoch are void.
                self._broadcast(state, "resync", {"channel": pub.channel, "epoch": pub.epoch,
                                                  "offset": pub.offset - 1, "reason": "epoch changed"})
            state.last_offset, state.epoch = pub.offset, pub.epoch
        sessions = state.snapshot()
        sse_sessions = state.sse_snapshot()
        if not sessions and not sse_sessions:
            return
        telemetry = self.telemetry
        message = encode_message(pub.channel, pub.offset, pub.epoch, pub.data, pub.metadata,
                                 milliseconds(pub.published_at))
        frame = text_frame(message)
        # SSE subscribers share one event body too; their id line (all of a stream's positions)
        # is added by each stream's peer when it writes.
        event: SseDelivery | bytes | None = None
        if sse_sessions:  # a local-only copy (offset 0) is in no history: it moves no position
            event = (SseDelivery(pub.channel, pub.offset, pub.epoch, data_event(message))
                     if pub.offset != LOCAL_ONLY_OFFSET else data_event(message))
        if telemetry.enabled:
            with telemetry.span("ws.deliver", {"messaging.destination.name": pub.channel, "messaging.message.id":
                                               pub.metadata.get("message_id", "")},
                                parent=pub.metadata, kind="consumer") as span:
                recipients = self._fanout(sessions, frame)
                sse_recipients = self._fanout(sse_sessions, event) if event is not None else 0
                span.set_attribute("messaging.batch.message_count", recipients + sse_recipients)
                if event is not None:
                    span.set_attribute("ws.sse_recipients", sse_recipients)
        else:
            recipients = self._fanout(sessions, frame)
            sse_recipients = self._fanout(sse_sessions, event) if event is not None else 0
        telemetry.fanout(recipients)
        telemetry.messages_sent("message", recipients, len(frame))
        if event is not None:
            telemetry.fanout(sse_recipients, SSE)
            telemetry.messages_sent("message", sse_recipients, len(event), SSE)
        telemetry.broker_lag(self.broker.name, max(0.0, self.wall() - pub.published_at))

    def _fanout(self, sessions: tuple[Session, ...], frame: bytes | SseDelivery) -> int:
        # The hot loop: one list append per recipient, no call, no allocation.
        dirty = self._dirty
        recipients = 0
        for session in sessions:
            if session.open:
                outbox = session.outbox
                if not outbox:
                    dirty.append(session)
                outbox.append(frame)
                recipients += 1
        if recipients and not self._flush_scheduled:
            self._schedule_flush()
        return recipients

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        loop = self._loop or asyncio.get_running_loop()
        if self.config.write_delay:
            loop.call_later(self.config.write_delay, self.flush)
        else:
            loop.call_soon(self.flush)  # runs after every callback already ready in this tick

    def flush(self) -> None:
        """Write each session's frames of this tick in one go; cut off those that do not read."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        limit = self.config.max_outgoing_buffer
        for session in dirty:
            frames, session.outbox = session.outbox, []
            if not session.open or not frames:
                continue
            try:
                buffered = session.peer.write(frames)
            except Exception as exc:  # the transport broke under us; the handler will see it close
                log.debug("write to %s failed: %s", session.id, exc)
                session.open = False
                continue
            if buffered > limit:
                self.cut_off_slow(session)

    def cut_off_slow(self, session: Session) -> None:
        """A client that does not read what it is sent: close it (4008) before its backlog grows further."""
        if session.open:
            self.telemetry.error("slow_consumer")
            self.close(session, CloseCode.SLOW_CONSUMER)

    def _send(self, session: Session, payload: bytes, label: str) -> None:
        if session.open:
            self._send_item(session, data_event(payload) if session.transport == SSE else text_frame(payload), label)

    def _send_item(self, session: Session, item: bytes | SseDelivery, label: str) -> None:
        if not session.open:
            return
        if not session.outbox:
            self._dirty.append(session)
        session.outbox.append(item)
        if not self._flush_scheduled:
            self._schedule_flush()
        self.telemetry.messages_sent(label, 1, len(item), session.transport)

    def _send_publication(self, session: Session, pub: Publication) -> None:
        message = encode_message(pub.channel, pub.offset, pub.epoch, pub.data, pub.metadata,
                                 milliseconds(pub.published_at))
        if session.transport == SSE and pub.offset != LOCAL_ONLY_OFFSET:
            self._send_item(session, SseDelivery(pub.channel, pub.offset, pub.epoch, data_event(message)), "message")
        else:
            self._send(session, message, "message")

    def _event_bytes(self, type_: str, payload: dict[str, Any], correlation_id: str | None = None) -> bytes:
        return encode_event(type_, payload, message_id=self.new_id(), timestamp_ms=milliseconds(self.wall()),
                            correlation_id=correlation_id)

    def _event(self, session: Session, type_: str, payload: dict[str, Any], correlation_id: str | None = None) -> None:
        self._send(session, self._event_bytes(type_, payload, correlation_id), EVENT_LABEL[type_])

    def _ack(self, session: Session, command: Command, payload: dict[str, Any]) -> None:
        self._event(session, "ack", payload, command.message_id)

    def _error(self, session: Session, code: ErrorCode, message: str, correlation_id: str | None) -> None:
        self.telemetry.error(ERROR_REASON[code])
        self._send(session, encode_error(code, message, message_id=self.new_id(),
                                         timestamp_ms=milliseconds(self.wall()), correlation_id=correlation_id), "error")

    def _broadcast(self, state: ChannelState, type_: str, payload: dict[str, Any]) -> None:
        """A server event (join, leave) to this process's live subscribers of one channel."""
        body = encode_event(type_, payload, message_id=self.new_id(), timestamp_ms=milliseconds(self.wall()))
        frame = text_frame(body)
        recipients = self._fanout(state.snapshot(), frame)
        self.telemetry.messages_sent(EVENT_LABEL[type_], recipients, len(frame))
        sse_sessions = state.sse_snapshot()
        if sse_sessions:
            event = data_event(body)
            self.telemetry.messages_sent(EVENT_LABEL[type_], self._fanout(sse_sessions, event), len(event), SSE)
