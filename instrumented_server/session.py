"""One client connection as the hub sees it, and the peer it writes to.

The hub never calls ``send`` on a connection for each message. It appends already-framed bytes
to the session's ``outbox`` and, once per event-loop tick, hands each session's outbox to its
peer in one write (see ``Hub.flush``). ``Peer`` is the narrow seam to the transport, so the hub
can be tested with an in-memory peer.
"""

from __future__ import annotations

from typing import Protocol

from instrumented_server.auth import Identity
from instrumented_server.permissions import Channel, Namespace
from instrumented_server.protocol import Recover
from instrumented_server.ratelimit import TokenBucket


WEBSOCKET = "websocket"
SSE = "sse"  # a one-way Server-Sent Events stream: no commands, no token refresh


class Peer(Protocol):
    def write(self, frames: list[bytes]) -> int:
        """Write whole text frames in order; return the bytes still buffered for this peer."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (without waiting for it)."""


class Subscription:
    """A channel a session is subscribed to.

    ``live`` is False while the subscription is being set up (history fetched, live publications
    buffered), and while suspended because the token expired; ``resume`` is where to resume from
    after a token refresh.
    """

    __slots__ = ("channel", "namespace", "live", "resume", "offset", "epoch")

    def __init__(self, channel: Channel, namespace: Namespace) -> None:
        self.channel = channel
        self.namespace = namespace
        self.live = False
        self.resume: Recover | None = None
        self.offset = 0  # position when it went live (the last publication sent to it then)
        self.epoch = ""


class Session:
    __slots__ = (
        "id", "peer", "ip", "identity", "subscriptions", "outbox", "open", "close_code",
        "bucket", "strikes", "protocol_errors", "suspended", "expiry_timer", "grace_timer", "transport",
    )

    def __init__(self, id: str, peer: Peer, ip: str, identity: Identity, bucket: TokenBucket,
                 transport: str = WEBSOCKET) -> None:
        self.id = id
        self.peer = peer
        self.transport = transport  # WEBSOCKET or SSE: how the hub encodes what it sends
        self.ip = ip
        self.identity = identity
        self.subscriptions: dict[str, Subscription] = {}
        self.outbox: list[bytes] = []
        self.open = True  # False as soon as the hub or the peer starts closing: fan-out skips it
        self.close_code: int | None = None
        self.bucket = bucket
        self.strikes = 0  # messages refused by a rate limit in a row
        self.protocol_errors = 0  # invalid commands in a row
        self.suspended = False  # token expired, not yet refreshed: no command, no delivery
        self.expiry_timer = None
        self.grace_timer = None

    @property
    def user(self) -> str:
        return self.identity.user

    def __repr__(self) -> str:
        return f"<Session {self.id} user={self.user!r} open={self.open}>"
