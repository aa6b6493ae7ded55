"""The in-memory broker: one process, no backend, the default.

The state lives in two plain data structures with no event loop in them (``ChannelLog`` and
``PresenceTable``, tested directly); ``MemoryBroker`` is the thin async shell the hub talks to.
Everything is lost when the process stops, and each channel's epoch is random, so a client that
comes back to a restarted server is told to resync instead of being replayed a wrong history.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections import OrderedDict, deque
from itertools import islice
from typing import Callable, Mapping

from instrumented_server.broker.base import (
    Broker,
    HistoryResult,
    OnPublication,
    Publication,
    select_history,
)

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_SIZE = 100
DEFAULT_HISTORY_TTL = 300.0


def new_epoch() -> str:
    """A fresh random epoch: 8 hex characters, enough that two lifetimes never collide in practice."""
    return secrets.token_hex(4)


def check_limits(history_size: int, history_ttl: float) -> None:
    if history_size < 1:
        raise ValueError(f"history_size must be at least 1, got {history_size}")
    if not history_ttl > 0:
        raise ValueError(f"history_ttl must be positive seconds, got {history_ttl}")


class ChannelLog:
    """One channel's offset sequence and bounded history (pure: the caller passes the time)."""

    __slots__ = ("channel", "epoch", "latest_offset", "history_size", "history_ttl", "_entries", "last_used")

    def __init__(self, channel: str, history_size: int, history_ttl: float, epoch: str, now: float) -> None:
        self.channel = channel
        self.epoch = epoch
        self.latest_offset = 0
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._entries: deque[Publication] = deque(maxlen=history_size)
        self.last_used = now

    def append(self, data: bytes, metadata: Mapping[str, str], now: float) -> Publication:
        self.latest_offset += 1
        publication = Publication(self.channel, self.latest_offset, self.epoch, data, now, dict(metadata))
        self._entries.append(publication)  # the deque's maxlen drops the oldest: the count bound
        self.last_used = now
        self.expire(now)
        return publication

    def expire(self, now: float) -> None:
        """Drop publications older than ``history_ttl`` (the age bound)."""
        cutoff = now - self.history_ttl
        entries = self._entries
        while entries and entries[0].published_at < cutoff:
            entries.popleft()

    def held(self) -> tuple[Publication, ...]:
        return tuple(self._entries)

    def history(self, since_offset: int, epoch: str | None, limit: int, now: float) -> HistoryResult:
        self.expire(now)
        entries = self._entries
        candidates: tuple[Publication, ...] = ()
        if entries and since_offset + 1 >= entries[0].offset:
            # Offsets held are contiguous, so the first one wanted is found by its index; take at
            # least one so select_history can judge recoverability even when limit is 0.
            start = since_offset + 1 - entries[0].offset
            candidates = tuple(islice(entries, start, start + max(1, limit)))
        return select_history(
            channel_epoch=self.epoch,
            latest_offset=self.latest_offset,
            candidates=candidates,
            since_offset=since_offset,
            epoch=epoch,
            limit=limit,
            history_size=self.history_size,
            history_ttl=self.history_ttl,
            now=now,
        )

    @property
    def empty(self) -> bool:
        return not self._entries


class PresenceTable:
    """Who is in which channel: channel -> client_id -> info (pure)."""

    __slots__ = ("_channels",)

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, Mapping[str, str]]] = {}

    def add(self, channel: str, client_id: str, info: Mapping[str, str]) -> None:
        self._channels.setdefault(channel, {})[client_id] = dict(info)

    def remove(self, channel: str, client_id: str) -> None:
        clients = self._channels.get(channel)
        if clients is None:
            return
        clients.pop(client_id, None)
        if not clients:  # an empty channel costs nothing once it has left the table
            del self._channels[channel]

    def get(self, channel: str) -> dict[str, Mapping[str, str]]:
        return dict(self._channels.get(channel, {}))

    def __len__(self) -> int:
        return len(self._channels)


class MemoryBroker(Broker):
    """Offsets, history, presence and delivery for a single server process.

    A channel's log is forgotten once it has held nothing for ``idle_ttl`` seconds (history empty,
    no publish since), so a flood of one-off channel names cannot grow memory without limit; a
    channel that comes back gets a new epoch, so nobody is replayed a wrong history.
    """

    name = "memory"

    def __init__(
        self,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: float = DEFAULT_HISTORY_TTL,
        clock: Callable[[], float] = time.time,
        idle_ttl: float | None = None,
    ) -> None:
        check_limits(history_size, history_ttl)
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.idle_ttl = history_ttl if idle_ttl is None else idle_ttl
        if self.idle_ttl < history_ttl:
            raise ValueError("idle_ttl must be at least history_ttl, or held history would be forgotten")
        self._clock = clock
        # Ordered by last use, oldest first, so idle channels are found from the front in O(1).
        self._logs: OrderedDict[str, ChannelLog] = OrderedDict()
        self._presence = PresenceTable()
        self._wanted: set[str] = set()
        self._on_publication: OnPublication | None = None
        # Serialises deliveries so an async callback cannot interleave two publications.
        self._delivery_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, on_publication: OnPublication) -> None:
        self._on_publication = on_publication

    async def close(self) -> None:
        self._on_publication = None
        self._wanted.clear()

    # -- publications ------------------------------------------------------------------------

    def _log(self, channel: str, now: float) -> ChannelLog:
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = ChannelLog(channel, self.history_size, self.history_ttl, new_epoch(), now)
        else:
            self._logs.move_to_end(channel)
        log.last_used = now
        return log

    def _forget_idle(self, now: float) -> None:
        cutoff = now - self.idle_ttl
        while self._logs:
            channel, log = next(iter(self._logs.items()))
            if log.last_used >= cutoff:
                return
            log.expire(now)
            if channel in self._wanted or not log.empty:
                # A subscribed channel keeps its epoch (its clients hold positions in it).
                log.last_used = now
                self._logs.move_to_end(channel)
                continue
            del self._logs[channel]

    async def publish(self, channel: str, data: bytes, metadata: Mapping[str, str]) -> Publication:
        now = self._clock()
        self._forget_idle(now)
        publication = self._log(channel, now).append(data, metadata, now)
        if channel in self._wanted and self._on_publication is not None:
            async with self._delivery_lock:
                await self._deliver(publication)
        return publication

    async def _deliver(self, publication: Publication) -> None:
        try:
            result = self._on_publication(publication)  # type: ignore[misc]
            if inspect.isawaitable(result):
                await result
        except Exception:  # the hub's bug must not fail the publisher
            logger.exception("on_publication failed for channel %r offset %d", publication.channel, publication.offset)

    async def subscribe(self, channel: str) -> None:
        self._wanted.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)

    async def history(self, channel: str, since_offset: int, epoch: str | None, limit: int) -> HistoryResult:
        now = self._clock()
        self._forget_idle(now)
        return self._log(channel, now).history(since_offset, epoch, limit, now)

    # -- presence ----------------------------------------------------------------------------

    async def presence_add(self, channel: str, client_id: str, info: Mapping[str, str]) -> None:
        self._presence.add(channel, client_id, info)

    async def presence_remove(self, channel: str, client_id: str) -> None:
        self._presence.remove(channel, client_id)

    async def presence(self, channel: str) -> dict[str, Mapping[str, str]]:
        return self._presence.get(channel)

    # -- introspection (tests, /debug) -------------------------------------------------------

    @property
    def channel_count(self) -> int:
        return len(self._logs)
