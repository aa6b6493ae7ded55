"""The broker interface shared by the in-memory and Redis implementations.

A broker owns, per channel: the offset sequence (monotonic, gap-free, starting at 1), a bounded
history (the last ``history_size`` publications, none older than ``history_ttl`` seconds), an
``epoch`` that changes when history is lost (a restart of the memory broker, Redis data that was
flushed or expired), and presence. It also delivers every publication, from any process, to the local
``on_publication`` callback exactly once per process that is interested in the channel.

Clients resume with (offset, epoch): if the epoch matches and offset+1 is still in history, the
missed publications are replayed in order; otherwise the client is told to resync.

Delivery rules every implementation keeps (tests/server/test_broker_contract.py checks them):

- ``on_publication`` receives this process's own publications too, through the same path as
  everyone else's. The hub must not also deliver the value ``publish`` returns, or subscribers
  would get it twice.
- Calls to ``on_publication`` are serial (never concurrent) and, per channel, in offset order.
- After ``subscribe(channel)`` returns, every publication with an offset above the channel's
  ``latest_offset`` at that moment is delivered (a few at or below it may arrive too, during the
  call: compare offsets with each client's position). A delivered publication whose ``epoch`` differs
  from the one the hub last saw for the channel means history was lost in between: clients
  positioned in the old epoch must resync.

Outages (only a networked broker has them): ``publish``, ``history`` and ``presence`` raise
``BrokerUnavailable`` within a bounded time instead of hanging; ``subscribe``, ``unsubscribe``,
``presence_add`` and ``presence_remove`` never raise for an outage: they are remembered and
re-applied when the backend returns. ``healthy`` is False meanwhile.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

# The offset of a publication that was delivered to this process's subscribers only, during a
# broker outage: it is in no history and will never be replayed.
LOCAL_ONLY_OFFSET = 0


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


class BrokerUnavailable(Exception):
    """The backend cannot be reached right now; raised within the broker's timeout, never a hang.

    From ``publish``: when the broker is sure nothing was stored (it had already seen the backend
    down and did not send anything), ``publication`` is a local-only copy (offset 0, epoch "") that
    the hub should deliver to this process's subscribers and must not acknowledge as stored. When
    the failure happened mid-command, the message may or may not have been stored (and may still
    arrive through ``on_publication``), so ``publication`` is None and the hub delivers nothing:
    that keeps "no duplicates" at the cost of a possible loss of a message that was never
    acknowledged. Either way the publisher is told the publish failed and may retry.
    """

    def __init__(self, message: str, publication: Publication | None = None) -> None:
        super().__init__(message)
        self.publication = publication


class Broker(abc.ABC):
    name: str  # "memory" or "redis": the broker label of websocket_broker_lag_seconds

    @abc.abstractmethod
    async def start(self, on_publication: OnPublication) -> None:
        """Connect; from now on publications for subscribed channels reach ``on_publication``.

        Never raises because the backend is down: the broker keeps trying and ``healthy`` says so.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks."""

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes, metadata: Mapping[str, str]) -> Publication:
        """Append to the channel's history with the next offset and fan out to every process.

        Returns once the publication is stored (the caller may acknowledge it); raises
        ``BrokerUnavailable`` otherwise.
        """

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This process wants ``channel``'s publications (called when its first local subscriber joins)."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """This process no longer wants ``channel`` (its last local subscriber left)."""

    @abc.abstractmethod
    async def history(self, channel: str, since_offset: int, epoch: str | None, limit: int) -> HistoryResult:
        """Publications after ``since_offset`` (at most ``limit``), or recover_failed when out of reach.

        ``epoch`` None skips the epoch check (a client with no position yet). ``limit`` 0 returns
        only the channel's position (epoch, latest_offset): the starting point of a new subscriber.
        A channel never published to gets its epoch here, so that position stays valid.
        """

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


def select_history(
    *,
    channel_epoch: str,
    latest_offset: int,
    candidates: Sequence[Publication],
    since_offset: int,
    epoch: str | None,
    limit: int,
    history_size: int,
    history_ttl: float,
    now: float,
) -> HistoryResult:
    """The answer to a history request, from what a broker holds (pure; shared by every broker).

    ``candidates`` are the stored publications with offsets above ``since_offset``, in offset
    order (more than ``limit`` is fine; older or out-of-window ones are filtered here).
    """
    if since_offset < 0:
        raise ValueError(f"since_offset must be >= 0, got {since_offset}")

    def result(publications: tuple[Publication, ...] = (), failed: bool = False) -> HistoryResult:
        return HistoryResult(publications, channel_epoch, latest_offset, recover_failed=failed)

    if (epoch is not None and epoch != channel_epoch) or since_offset > latest_offset:
        return result(failed=True)
    if since_offset == latest_offset:
        return result()
    # The next publication the client needs must still be held: within the last history_size
    # offsets, not older than history_ttl, and actually present (a deleted stream loses it).
    wanted = since_offset + 1
    oldest_kept = max(1, latest_offset - history_size + 1)
    first = candidates[0] if candidates else None
    if (
        wanted < oldest_kept
        or first is None
        or first.offset != wanted
        or first.published_at < now - history_ttl
    ):
        return result(failed=True)
    return result(tuple(candidates[: max(0, limit)]))
