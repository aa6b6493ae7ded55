"""The Redis broker: several server processes share channels, history and presence.

Per channel, in Redis (``<prefix>`` defaults to ``obsgen``):

- ``<prefix>:meta:<channel>``: a hash with the channel's ``epoch`` and latest ``offset``. It lives
  ``meta_ttl`` seconds after the last publish (longer than the history), so positions stay valid
  while the history is merely empty; when it is gone (flushed, Redis restarted without
  persistence, expired) the next publish or history call creates a new epoch and clients resync.
- ``<prefix>:stream:<channel>``: a stream holding the history, one entry per publication with the
  id ``<offset>-0``, trimmed to exactly ``history_size`` entries and expiring ``history_ttl``
  seconds after the last publish. Age is also checked on read, per entry.
- ``<prefix>:pub:<channel>``: the Pub/Sub channel every publication is sent on, in a compact form:
  ``offset \\n epoch \\n published_at \\n metadata-json \\n data``.
- ``<prefix>:presence:<channel>`` (client_id -> info JSON) and ``<prefix>:presence-expiry:<channel>``
  (client_id scored by its expiry, in Redis server time): each process refreshes its own clients
  every ``presence_ttl / 3`` seconds, so the clients of a process that died vanish within
  ``presence_ttl``.

A publish is one Lua script (atomic in Redis): it takes the next offset, appends to the stream,
refreshes the expiries and publishes, so offsets are gap-free across every process and the
history and the fan-out agree.

Delivery, exactly once per process and in order per channel: the process remembers, for each
channel it is subscribed to, the last (epoch, offset) it delivered. A Pub/Sub message at that
offset or below is a duplicate and dropped; one further ahead means messages were missed (a
dropped connection), and the missing ones are read from the stream and delivered first. After a
reconnect every wanted channel is resubscribed and caught up from the stream the same way.

Outages: every command has a timeout (``timeout`` seconds to connect, and to read a reply). A
failed command marks the broker unhealthy; while it is, ``publish``, ``history`` and ``presence``
raise ``BrokerUnavailable`` at once without touching the network. A background task reconnects
with exponential backoff and jitter, resubscribes, catches up and re-registers presence, then marks
the broker healthy again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from instrumented_server.broker.base import (
    LOCAL_ONLY_OFFSET,
    Broker,
    BrokerUnavailable,
    HistoryResult,
    OnPublication,
    Publication,
    select_history,
)
from instrumented_server.broker.memory import DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL, check_limits, new_epoch

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "Redis is not reachable" (as opposed to Redis refusing a command).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, asyncio.TimeoutError, OSError)

SUBSCRIBE_BATCH = 500  # channels per SUBSCRIBE command when resubscribing after a reconnect
CATCH_UP_BATCH = 500  # stream entries per read when catching up

# KEYS: meta, stream. ARGV: data, metadata json, published_at, history_size, stream ttl ms,
# meta ttl ms, a fresh epoch (used only if the channel has none), pubsub channel.
# XADD comes before the offset is stored, so a failed XADD leaves no gap.
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[7]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = string.format('%d', tonumber(redis.call('HGET', KEYS[1], 'offset') or '0') + 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '=', ARGV[4], offset .. '-0', 'd', ARGV[1], 'm', ARGV[2], 't', ARGV[3])
redis.call('HSET', KEYS[1], 'offset', offset)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[8], offset .. '\\n' .. epoch .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[1])
return {offset, epoch}
"""

# KEYS: meta, stream. ARGV: first stream id wanted, count, a fresh epoch to create when the
# channel has none ('' to create nothing), meta ttl ms. Returns {epoch or nil, latest, entries}.
_READ = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  if ARGV[3] == '' then return {false, '0', {}} end
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local latest = redis.call('HGET', KEYS[1], 'offset') or '0'
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {epoch, latest, entries}
"""

# KEYS: presence hash, expiry zset. ARGV: ttl ms, then client_id, info pairs.
_PRESENCE_SET = """
local now = redis.call('TIME')
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], expires, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: presence hash, expiry zset. Drops expired clients, returns the rest as a flat list.
_PRESENCE_GET = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
for _, client in ipairs(expired) do
  redis.call('HDEL', KEYS[1], client)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
end
return redis.call('HGETALL', KEYS[1])
"""


@dataclass(eq=False)
class _Wanted:
    """What this process knows of a channel it is subscribed to."""

    epoch: str | None = None
    last_offset: int = 0  # the last offset delivered to on_publication
    # False until a starting point is read. It is read *before* SUBSCRIBE is sent, and the
    # catch-up when Redis confirms the subscription delivers everything after it, so nothing
    # published in between (after the read, before Redis registered the subscription) is missed.
    positioned: bool = False
    synced: bool = False  # True once the current connection's subscription is caught up
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def encode_metadata(metadata: Mapping[str, str]) -> bytes:
    return json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True).encode() if metadata else b""


def decode_metadata(raw: bytes) -> dict[str, str]:
    return json.loads(raw) if raw else {}


def decode_message(channel: str, payload: bytes) -> Publication:
    """A Pub/Sub payload written by the publish script back into a Publication."""
    offset, epoch, published_at, metadata, data = payload.split(b"\n", 4)
    return Publication(channel, int(offset), epoch.decode(), data, float(published_at), decode_metadata(metadata))


def decode_entry(channel: str, epoch: str, entry: Sequence[Any]) -> Publication:
    """One XRANGE entry ``[b"<offset>-0", [field, value, ...]]`` as a Publication."""
    entry_id, flat = entry
    fields = dict(zip(flat[::2], flat[1::2]))
    return Publication(
        channel,
        int(entry_id.split(b"-", 1)[0]),
        epoch,
        fields[b"d"],
        float(fields[b"t"]),
        decode_metadata(fields[b"m"]),
    )


class RedisBroker(Broker):
    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: float = DEFAULT_HISTORY_TTL,
        prefix: str = "obsgen",
        *,
        meta_ttl: float = 86400.0,
        presence_ttl: float = 30.0,
        timeout: float = 1.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        liveness_interval: float = 1.0,
        max_connections: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_limits(history_size, history_ttl)
        if meta_ttl < history_ttl:
            raise ValueError("meta_ttl must be at least history_ttl, or held history would lose its epoch")
        for label, value in (("presence_ttl", presence_ttl), ("timeout", timeout),
                             ("backoff_initial", backoff_initial), ("liveness_interval", liveness_interval)):
            if not value > 0:
                raise ValueError(f"{label} must be positive seconds, got {value}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if backoff_max < backoff_initial:
            raise ValueError("backoff_max must be at least backoff_initial")
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.prefix = prefix
        self.meta_ttl = meta_ttl
        self.presence_ttl = presence_ttl
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.liveness_interval = liveness_interval
        self._clock = clock

        # redis-py's own retries are off: the broker decides when to retry, and a command fails
        # within one timeout instead of several. The pool is bounded: a burst of publishes waits
        # (within the timeout) for a connection instead of opening one each.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # closed with the client
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._read_script = self._redis.register_script(_READ)
        self._presence_set_script = self._redis.register_script(_PRESENCE_SET)
        self._presence_get_script = self._redis.register_script(_PRESENCE_GET)

        self._pub_prefix = f"{prefix}:pub:".encode()
        self._on_publication: OnPublication | None = None
        self._wanted: dict[str, _Wanted] = {}
        self._local_presence: dict[str, dict[str, Mapping[str, str]]] = {}
        self._healthy = False
        self._became_healthy = asyncio.Event()
        self._kick = asyncio.Event()  # set by a failed command: drop the connection and reconnect
        self._conn: Any = None  # the Pub/Sub connection of the live session, if any
        self._session_live = False
        self._reading = False
        self._stop_reading = False
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        self.outages = 0  # times Redis became unreachable (for tests and /debug)

    # -- keys ----------------------------------------------------------------------------------

    def _meta_key(self, channel: str) -> str:
        return f"{self.prefix}:meta:{channel}"

    def _stream_key(self, channel: str) -> str:
        return f"{self.prefix}:stream:{channel}"

    def _pub_name(self, channel: str) -> bytes:
        return self._pub_prefix + channel.encode()

    def _presence_keys(self, channel: str) -> list[str]:
        return [f"{self.prefix}:presence:{channel}", f"{self.prefix}:presence-expiry:{channel}"]

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def start(self, on_publication: OnPublication) -> None:
        self._on_publication = on_publication
        self._tasks = [
            asyncio.create_task(self._supervise(), name="redis-broker-supervisor"),
            asyncio.create_task(self._refresh_presence_forever(), name="redis-broker-presence"),
        ]
        try:
            await asyncio.wait_for(self._became_healthy.wait(), self.timeout * 2)
        except asyncio.TimeoutError:
            logger.warning("redis broker: %s not reachable at start; serving local-only until it is", self._safe_url)

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._healthy = False
        await self._redis.aclose()

    @property
    def _safe_url(self) -> str:
        """The URL without a password, for logs."""
        conn = self._redis.connection_pool.connection_kwargs
        return f"{conn.get('host', '?')}:{conn.get('port', '?')}/{conn.get('db', 0)}"

    def _mark_down(self, error: BaseException) -> None:
        if self._healthy:
            self.outages += 1
            logger.warning("redis broker: lost %s (%s); local-only delivery until it returns", self._safe_url, error)
        self._healthy = False
        self._became_healthy.clear()
        self._kick.set()

    async def _supervise(self) -> None:
        """Keep one Pub/Sub session alive: reconnect with exponential backoff and jitter."""
        delay = self.backoff_initial
        while not self._closing:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure ends the session; we reconnect below
                self._mark_down(error)
            if self._closing:
                return
            if self.outages and not self._healthy:
                logger.debug("redis broker: reconnecting in %.2fs", delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = self.backoff_initial if self._healthy else min(self.backoff_max, delay * 2)

    async def _session(self) -> None:
        conn = self._redis.connection_pool.make_connection()
        self._kick.clear()
        try:
            await conn.connect()
            if self.outages:
                # Pooled command connections from before the outage point at a dead server (or a
                # restarted one): drop them so the next commands open fresh ones.
                await self._redis.connection_pool.disconnect()
            await asyncio.wait_for(self._redis.ping(), self.timeout)
            self._conn, self._session_live, self._stop_reading = conn, True, False
            loop = asyncio.get_running_loop()
            self._last_seen = loop.time()
            for channel, wanted in list(self._wanted.items()):
                wanted.synced = False
                if not wanted.positioned:  # subscribed during an outage
                    await self._position(channel, wanted)
            names = [self._pub_name(channel) for channel in self._wanted]
            for start in range(0, len(names), SUBSCRIBE_BATCH):
                await conn.send_command("SUBSCRIBE", *names[start : start + SUBSCRIBE_BATCH])
            reader = asyncio.create_task(self._read(conn), name="redis-broker-reader")
            self._healthy = True
            self._became_healthy.set()
            if self.outages:
                logger.warning("redis broker: %s is back; resubscribed %d channels", self._safe_url, len(names))
            await self._refresh_presence()  # re-register this process's clients (Redis may be new)
            try:
                await self._watch(conn, reader)
            finally:
                # Let a delivery in progress finish; only a read waiting for data is cancelled.
                self._stop_reading = True
                if self._reading:
                    reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        finally:
            self._session_live = False
            self._conn = None
            await conn.disconnect(nowait=True)

    async def _watch(self, conn: Any, reader: asyncio.Task) -> None:
        """Return or raise when the session must end: reader failed, kicked, or Redis went silent."""
        loop = asyncio.get_running_loop()
        kicked = asyncio.ensure_future(self._kick.wait())
        try:
            while True:
                await asyncio.wait({reader, kicked}, timeout=self.liveness_interval, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    reader.result()  # raises the reader's error
                    raise RedisConnectionError("pub/sub reader stopped")
                if kicked.done():
                    raise RedisConnectionError("a command failed")
                silent = loop.time() - self._last_seen
                if silent > 3 * self.liveness_interval:
                    raise RedisTimeoutError(f"no reply from Redis for {silent:.1f}s")
                if silent > self.liveness_interval:
                    await asyncio.wait_for(conn.send_command("PING"), self.timeout)
        finally:
            kicked.cancel()

    async def _read(self, conn: Any) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop_reading:
            self._reading = True
            try:
                # push_request: under RESP3 (redis-py's default) Pub/Sub messages are pushes.
                response = await conn.read_response(timeout=math.inf, push_request=True)
            finally:
                self._reading = False
            self._last_seen = loop.time()
            if not isinstance(response, list) or not response:
                continue  # the reply to a liveness PING
            kind = response[0]
            if kind == b"message":
                channel = response[1][len(self._pub_prefix) :].decode()
                wanted = self._wanted.get(channel)
                if wanted is not None and wanted.synced:
                    await self._accept(channel, wanted, decode_message(channel, response[2]))
            elif kind == b"subscribe":
                channel = response[1][len(self._pub_prefix) :].decode()
                wanted = self._wanted.get(channel)
                if wanted is not None:
                    await self._sync(channel, wanted)
            # "unsubscribe" confirmations and "pong" replies need nothing beyond _last_seen.

    # -- delivery ----------------------------------------------------------------------------------

    async def _deliver(self, publication: Publication) -> None:
        try:
            result = self._on_publication(publication)  # type: ignore[misc]
            if inspect.isawaitable(result):
                await result
        except Exception:  # the hub's bug must not stop delivery of the next publication
            logger.exception("on_publication failed for channel %r offset %d", publication.channel, publication.offset)

    async def _accept(self, channel: str, wanted: _Wanted, publication: Publication) -> None:
        """A live Pub/Sub publication: drop duplicates, fill gaps from the stream, then deliver."""
        if publication.epoch != wanted.epoch:
            wanted.epoch, wanted.last_offset = publication.epoch, 0  # history was lost: a new sequence
        if publication.offset <= wanted.last_offset:
            return
        if publication.offset > wanted.last_offset + 1:
            await self._catch_up(channel, wanted, upto=publication.offset - 1)
            if publication.epoch != wanted.epoch:
                return  # the epoch moved again while catching up; the catch-up delivered what exists
        wanted.last_offset = publication.offset
        await self._deliver(publication)

    async def _position(self, channel: str, wanted: _Wanted) -> None:
        """Take the channel's current (epoch, offset) as the point deliveries start after."""
        epoch, latest, _ = await self._read_channel(channel, 1, count=0, create_epoch=False)
        if not wanted.positioned:  # a concurrent sync may have positioned it meanwhile
            wanted.epoch, wanted.last_offset, wanted.positioned = epoch, latest, True

    async def _sync(self, channel: str, wanted: _Wanted) -> None:
        """The subscription is confirmed: deliver what was published since the starting point."""
        if not wanted.positioned:  # subscribe() is still reading its position: start from now
            await self._position(channel, wanted)
        else:
            await self._catch_up(channel, wanted, upto=None)
        wanted.synced = True
        wanted.ready.set()

    async def _catch_up(self, channel: str, wanted: _Wanted, upto: int | None) -> None:
        """Deliver what the stream holds after ``wanted.last_offset`` (up to ``upto``, or all)."""
        for _ in range(3):  # bounded: the epoch can only change this often while we read
            epoch, latest, entries = await self._read_channel(channel, wanted.last_offset + 1, CATCH_UP_BATCH)
            if epoch is None:  # the channel's data is gone; the next publish starts a new epoch
                wanted.epoch, wanted.last_offset = None, 0
                return
            if epoch != wanted.epoch:
                wanted.epoch, wanted.last_offset = epoch, 0
                continue
            target = latest if upto is None else min(upto, latest)
            while entries:
                for entry in entries:
                    publication = decode_entry(channel, epoch, entry)
                    if publication.offset > target:
                        break
                    if publication.offset > wanted.last_offset:
                        wanted.last_offset = publication.offset
                        await self._deliver(publication)
                if wanted.last_offset >= target or len(entries) < CATCH_UP_BATCH:
                    break
                _, _, entries = await self._read_channel(channel, wanted.last_offset + 1, CATCH_UP_BATCH)
            # Whatever the stream no longer holds cannot be delivered; clients see the jump in
            # offsets and recover (or resync) through history.
            wanted.last_offset = max(wanted.last_offset, target)
            return

    async def _read_channel(
        self, channel: str, first_offset: int, count: int, create_epoch: bool = False
    ) -> tuple[str | None, int, list]:
        epoch, latest, entries = await self._guard(
            self._read_script(
                keys=[self._meta_key(channel), self._stream_key(channel)],
                args=[f"{first_offset}-0", count, new_epoch() if create_epoch else "", int(self.meta_ttl * 1000)],
            )
        )
        return (epoch.decode() if epoch is not None else None), int(latest), entries

    # -- commands -----------------------------------------------------------------------------------

    async def _guard(self, awaitable: Awaitable[T]) -> T:
        """Run one Redis command within the timeout; an unreachable Redis marks the broker down."""
        try:
            return await asyncio.wait_for(awaitable, self.timeout * 2)
        except _UNREACHABLE as error:
            self._mark_down(error)
            raise BrokerUnavailable(f"redis unreachable: {error}") from error

    def _check_up(self) -> None:
        if not self._healthy:
            raise BrokerUnavailable("redis unreachable")

    async def publish(self, channel: str, data: bytes, metadata: Mapping[str, str]) -> Publication:
        published_at = self._clock()
        if not self._healthy:
            local = Publication(channel, LOCAL_ONLY_OFFSET, "", data, published_at, dict(metadata))
            raise BrokerUnavailable("redis unreachable: delivered to this process only", publication=local)
        try:
            offset, epoch = await self._guard(
                self._publish_script(
                    keys=[self._meta_key(channel), self._stream_key(channel)],
                    args=[
                        data,
                        encode_metadata(metadata),
                        repr(published_at),
                        self.history_size,
                        int(self.history_ttl * 1000),
                        int(self.meta_ttl * 1000),
                        new_epoch(),
                        self._pub_name(channel),
                    ],
                )
            )
        except RedisError as error:  # Redis answered but refused (out of memory, say): nothing stored
            raise BrokerUnavailable(f"redis refused the publish: {error}") from error
        return Publication(channel, int(offset), epoch.decode(), data, published_at, dict(metadata))

    async def subscribe(self, channel: str) -> None:
        wanted = self._wanted.get(channel)
        if wanted is None:
            wanted = self._wanted[channel] = _Wanted()
            if not self._session_live:
                return  # positioned and subscribed when the next session starts
            try:
                await self._position(channel, wanted)
                conn = self._conn
                if not self._session_live or conn is None or self._wanted.get(channel) is not wanted:
                    return
                await asyncio.wait_for(conn.send_command("SUBSCRIBE", self._pub_name(channel)), self.timeout)
            except _UNREACHABLE as error:
                self._mark_down(error)
                return
            except (BrokerUnavailable, RedisError):
                return  # the next session positions and subscribes it
        if self._session_live:
            try:
                await asyncio.wait_for(wanted.ready.wait(), self.timeout)
            except asyncio.TimeoutError:
                pass  # the session is in trouble; the next one subscribes and positions it

    async def unsubscribe(self, channel: str) -> None:
        if self._wanted.pop(channel, None) is None:
            return
        conn = self._conn
        if self._session_live and conn is not None:
            try:
                await asyncio.wait_for(conn.send_command("UNSUBSCRIBE", self._pub_name(channel)), self.timeout)
            except _UNREACHABLE as error:
                self._mark_down(error)

    async def history(self, channel: str, since_offset: int, epoch: str | None, limit: int) -> HistoryResult:
        if since_offset < 0:
            raise ValueError(f"since_offset must be >= 0, got {since_offset}")
        self._check_up()
        try:
            channel_epoch, latest, entries = await self._read_channel(
                channel, since_offset + 1, max(1, limit), create_epoch=True
            )
        except RedisError as error:
            raise BrokerUnavailable(f"redis refused the history read: {error}") from error
        assert channel_epoch is not None  # the script creates it
        return select_history(
            channel_epoch=channel_epoch,
            latest_offset=latest,
            candidates=[decode_entry(channel, channel_epoch, entry) for entry in entries],
            since_offset=since_offset,
            epoch=epoch,
            limit=limit,
            history_size=self.history_size,
            history_ttl=self.history_ttl,
            now=self._clock(),
        )

    # -- presence --------------------------------------------------------------------------------

    async def _store_presence(self, channel: str, clients: Mapping[str, Mapping[str, str]]) -> None:
        args: list[Any] = [int(self.presence_ttl * 1000)]
        for client_id, info in clients.items():
            args += [client_id, json.dumps(dict(info), separators=(",", ":"), sort_keys=True)]
        await self._guard(self._presence_set_script(keys=self._presence_keys(channel), args=args))

    async def presence_add(self, channel: str, client_id: str, info: Mapping[str, str]) -> None:
        self._local_presence.setdefault(channel, {})[client_id] = dict(info)
        if self._healthy:
            try:
                await self._store_presence(channel, {client_id: info})
            except (BrokerUnavailable, RedisError):
                pass  # remembered locally; stored by the refresh after reconnecting

    async def presence_remove(self, channel: str, client_id: str) -> None:
        clients = self._local_presence.get(channel)
        if clients is not None:
            clients.pop(client_id, None)
            if not clients:
                del self._local_presence[channel]
        if self._healthy:
            hash_key, expiry_key = self._presence_keys(channel)
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(hash_key, client_id)
            pipe.zrem(expiry_key, client_id)
            try:
                await self._guard(pipe.execute())
            except (BrokerUnavailable, RedisError):
                pass  # the entry expires within presence_ttl, since nobody refreshes it

    async def presence(self, channel: str) -> dict[str, Mapping[str, str]]:
        self._check_up()
        try:
            flat = await self._guard(self._presence_get_script(keys=self._presence_keys(channel), args=[]))
        except RedisError as error:
            raise BrokerUnavailable(f"redis refused the presence read: {error}") from error
        return {flat[i].decode(): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def _refresh_presence(self) -> None:
        for channel, clients in list(self._local_presence.items()):
            if clients:
                await self._store_presence(channel, dict(clients))

    async def _refresh_presence_forever(self) -> None:
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            if self._healthy:
                try:
                    await self._refresh_presence()
                except (BrokerUnavailable, RedisError) as error:
                    logger.debug("redis broker: presence refresh failed: %s", error)
