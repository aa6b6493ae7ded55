"""The broker interface shared by the in-memory and Redis implementations.

A broker owns, per channel: the offset sequence (monotonic, gap-free, starting at 1), a bounded
history (the last ``history_size`` publications, none older than ``history_ttl`` seconds), an
``epoch`` that changes when history is lost (a restart of the memory broker, a Redis stream that
was deleted), and presence. It also delivers every publication, from any process, to the local
``on_publication`` callback exactly once per process that is interested in the channel.

Clients resume with (offset, epoch): if the epoch matches and offset+1 is still in history, the
missed publications are replayed in order; otherwise the client is told to resync.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping


@dataclass(frozen=True, slots=True)
class Publication:
    channel: str
    offset: int
    epoch: str
    data: bytes  # the JSON payload as published (already validated by the server)
    published_at: float  # unix seconds at the publishing process, for broker lag
    metadata: Mapping[str, str] = field(default_factory=dict)  # message_id, traceparent, publisher


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: tuple[Publication, ...]
    epoch: str
    latest_offset: int
    # True when the requested position is no longer in history (too old, or another epoch):
    # the client must resync instead of replaying.
    recover_failed: bool = False


OnPublication = Callable[[Publication], Awaitable[None] | None]


class Broker(abc.ABC):
    name: str  # "memory" or "redis": the broker label of websocket_broker_lag_seconds

    @abc.abstractmethod
    async def start(self, on_publication: OnPublication) -> None:
        """Connect; from now on publications for subscribed channels reach ``on_publication``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks."""

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes, metadata: Mapping[str, str]) -> Publication:
        """Append to the channel's history with the next offset and fan out to every process."""

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This process wants ``channel``'s publications (called when its first local subscriber joins)."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """This process no longer wants ``channel`` (its last local subscriber left)."""

    @abc.abstractmethod
    async def history(self, channel: str, since_offset: int, epoch: str | None, limit: int) -> HistoryResult:
        """Publications after ``since_offset`` (at most ``limit``), or recover_failed when out of reach."""

    @abc.abstractmethod
    async def presence_add(self, channel: str, client_id: str, info: Mapping[str, str]) -> None: ...

    @abc.abstractmethod
    async def presence_remove(self, channel: str, client_id: str) -> None: ...

    @abc.abstractmethod
    async def presence(self, channel: str) -> dict[str, Mapping[str, str]]:
        """client_id -> info of every client present in ``channel`` across all processes."""

    @property
    def healthy(self) -> bool:
        """False while the backend is unreachable (the server then degrades to local delivery)."""
        return True
