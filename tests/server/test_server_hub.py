"""The hub without sockets: in-memory peers, the real memory broker, recorded telemetry."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from instrumented_server.auth import Identity
from instrumented_server.broker.base import BrokerUnavailable, Publication
from instrumented_server.broker.memory import MemoryBroker
from instrumented_server.hub import Hub
from instrumented_server.protocol import CloseCode, encode_command
from instrumented_server.ratelimit import Rate
from tests.server.server_support import AUTH, FakePeer, RecordingTelemetry, eventually, make_config, settle, token


class GatedBroker(MemoryBroker):
    """A memory broker whose history() waits at a gate, so publications can arrive meanwhile."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def history(self, channel, since_offset, epoch, limit):
        result = await super().history(channel, since_offset, epoch, limit)
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        return result


@pytest.fixture
async def hub():
    telemetry = RecordingTelemetry()
    hub = Hub(GatedBroker(history_size=5), make_config(history_size=5), telemetry=telemetry)
    await hub.start()
    yield hub
    await hub.stop()


def connect(hub: Hub, user: str = "alice", ttl: float = 3600, buffered: int = 0, **claims):
    peer = FakePeer(buffered)
    session = hub.open_session(peer, AUTH.verify(token(user, ttl, **claims)), "127.0.0.1")
    return session, peer


async def send(hub: Hub, session, type_: str, payload=None, message_id: str = "id"):
    await hub.handle(session, encode_command(type_, payload or {}, message_id))
    await settle()


def reply(peer: FakePeer, message_id: str = "id") -> dict:
    replies = [e for e in peer.events if e["metadata"].get("correlation_id") == message_id]
    assert replies, peer.events
    return replies[-1]


async def test_one_frame_per_publication_shared_by_all_subscribers_and_one_write_per_tick(hub):
    subscribers = [connect(hub, f"user{i}") for i in range(3)]
    for session, _ in subscribers:
        await send(hub, session, "subscribe", {"channel": "room"})
    publisher, _ = connect(hub, "pub")
    for peer in (p for _, p in subscribers):
        peer.writes.clear()

    # Five publishes handled within one tick: each subscriber gets them in one write.
    await asyncio.gather(*(hub.handle(publisher, encode_command("publish", {"channel": "room", "data": i}, f"p{i}"))
                           for i in range(5)))
    await settle()
    frames = []
    for _, peer in subscribers:
        assert len(peer.writes) == 1 and len(peer.writes[0]) == 5
        assert peer.offsets("room") == [1, 2, 3, 4, 5]
        frames.append(peer.writes[0])
    for i in range(5):
        assert frames[0][i] is frames[1][i] is frames[2][i]  # encoded once, the same bytes object

    fanouts = hub.telemetry.named("fanout")
    assert fanouts == [(3,)] * 5  # once per fan-out, with the recipient count
    assert ("message", 3, len(frames[0][0])) in hub.telemetry.named("messages_sent")


async def test_publisher_gets_ack_with_offset_and_epoch(hub):
    session, peer = connect(hub)
    await send(hub, session, "publish", {"channel": "room", "data": {"a": 1}})
    ack = reply(peer)
    assert ack["type"] == "ack"
    assert ack["payload"]["offset"] == 1 and ack["payload"]["epoch"]


async def test_recovery_replays_missed_then_live_with_no_gap_and_no_duplicate(hub):
    publisher, _ = connect(hub, "pub")
    for i in range(3):
        await send(hub, publisher, "publish", {"channel": "room", "data": i})
    # a first subscriber keeps the channel live in this process during the second one's recovery
    watcher, _ = connect(hub, "watcher")
    await send(hub, watcher, "subscribe", {"channel": "room"})
    history = await hub.broker.history("room", 0, None, 0)

    hub.broker.gate = asyncio.Event()
    session, peer = connect(hub)
    task = asyncio.ensure_future(send(hub, session, "subscribe",
                                      {"channel": "room", "recover": {"offset": 1, "epoch": history.epoch}}))
    await hub.broker.waiting.wait()
    for i in range(3, 6):  # published while the history read is in flight
        await send(hub, publisher, "publish", {"channel": "room", "data": i}, f"p{i}")
    hub.broker.gate.set()
    await task
    await send(hub, publisher, "publish", {"channel": "room", "data": 6}, "p6")

    ack = reply(peer)
    assert ack["payload"]["recovered"] is True
    assert peer.offsets("room") == [2, 3, 4, 5, 6, 7]
    assert hub.telemetry.named("reconnect") == [("replayed",)]


async def test_fresh_subscription_starts_after_the_current_position(hub):
    publisher, _ = connect(hub, "pub")
    await send(hub, publisher, "publish", {"channel": "room", "data": 0})
    hub.broker.gate = asyncio.Event()
    session, peer = connect(hub)
    task = asyncio.ensure_future(send(hub, session, "subscribe", {"channel": "room"}))
    await hub.broker.waiting.wait()
    await send(hub, publisher, "publish", {"channel": "room", "data": 1}, "p1")
    hub.broker.gate.set()
    await task
    ack = reply(peer)
    assert ack["payload"]["offset"] == 1  # the position when the history was read
    assert peer.offsets("room") == [2]  # published during setup: delivered once, after the ack


async def test_gap_older_than_history_gets_resync(hub):
    publisher, _ = connect(hub, "pub")
    for i in range(10):
        await send(hub, publisher, "publish", {"channel": "room", "data": i})
    epoch = (await hub.broker.history("room", 0, None, 0)).epoch
    session, peer = connect(hub)
    await send(hub, session, "subscribe", {"channel": "room", "recover": {"offset": 1, "epoch": epoch}})
    assert reply(peer)["payload"]["recovered"] is False
    resync = peer.of_type("resync")
    assert resync and resync[0]["payload"]["offset"] == 10
    assert peer.offsets("room") == []
    await send(hub, publisher, "publish", {"channel": "room", "data": 10})
    assert peer.offsets("room") == [11]
    assert hub.telemetry.named("reconnect") == [("resync",)]


async def test_wrong_epoch_gets_resync(hub):
    session, peer = connect(hub)
    await send(hub, session, "subscribe", {"channel": "room", "recover": {"offset": 0, "epoch": "other"}})
    assert peer.of_type("resync")[0]["payload"]["reason"] == "epoch changed"


async def test_slow_consumer_is_closed_with_4008(hub):
    hub.config.max_outgoing_buffer = 1000
    session, peer = connect(hub, buffered=5000)
    await send(hub, session, "subscribe", {"channel": "room"})
    assert peer.closed == (CloseCode.SLOW_CONSUMER, "slow consumer")
    assert not session.open
    writes = len(peer.writes)
    publisher, _ = connect(hub, "pub")
    await send(hub, publisher, "publish", {"channel": "room", "data": "x"})
    assert len(peer.writes) == writes  # nothing more is queued for it
    assert ("slow_consumer",) in hub.telemetry.named("error")


async def test_rate_limit_errors_then_4004(hub):
    hub.config.rate_limit_strikes = 3
    session, peer = connect(hub)
    session.bucket.__init__(Rate(0.001, 2), hub.monotonic())
    for i in range(5):
        await send(hub, session, "ping", message_id=f"m{i}")
    types = [e["type"] for e in peer.events[1:]]
    assert types == ["ack", "ack", "error", "error"]
    assert peer.of_type("error")[0]["payload"]["code"] == "rate_limited"
    assert peer.closed[0] == CloseCode.RATE_LIMITED
    assert hub.telemetry.named("rate_limited") == [("connection",)] * 3


async def test_per_ip_rate_limit_spans_connections():
    hub = Hub(MemoryBroker(), make_config(ip_message_rate=Rate(0.001, 3), rate_limit_strikes=10),
              telemetry=RecordingTelemetry())
    await hub.start()
    first, peer1 = connect(hub)
    second, peer2 = connect(hub, "bob")
    for session in (first, second, first, second):
        await send(hub, session, "ping")
    assert [e["payload"].get("code") for e in peer2.of_type("error")] == ["rate_limited"]
    assert ("ip",) in hub.telemetry.named("rate_limited")
    await hub.stop()


async def test_oversized_message_4005_and_binary_1003(hub):
    session, peer = connect(hub)
    await hub.handle(session, json.dumps({"type": "publish", "payload": {"channel": "room", "data": "x" * 70000}}))
    assert peer.closed[0] == CloseCode.MESSAGE_TOO_LARGE
    session, peer = connect(hub)
    await hub.handle(session, "é" * 30000)  # 60,000 bytes of UTF-8 is fine, counted in bytes
    assert peer.closed is None
    await hub.handle(session, "é" * 40000)  # 80,000 bytes
    assert peer.closed[0] == CloseCode.MESSAGE_TOO_LARGE
    session, peer = connect(hub)
    await hub.handle(session, b'{"type": "ping"}')
    assert peer.closed[0] == CloseCode.UNSUPPORTED_DATA


async def test_protocol_errors_in_a_row_close_with_1008(hub):
    hub.config.max_protocol_errors = 3
    session, peer = connect(hub)
    for text in ("nope", "{}", '{"type": "ping"}', "[", "[", "["):
        await hub.handle(session, text)
        await settle()
    codes = [e["payload"]["code"] for e in peer.of_type("error")]
    assert codes == ["malformed", "malformed", "malformed", "malformed", "malformed"]
    assert peer.closed[0] == CloseCode.POLICY_VIOLATION


async def test_forbidden_subscribe_learns_nothing(hub):
    session, peer = connect(hub)
    await send(hub, session, "subscribe", {"channel": "secure:vault"})
    assert reply(peer)["payload"]["code"] == "forbidden"
    await send(hub, session, "history", {"channel": "secure:vault"}, "h")
    await send(hub, session, "presence", {"channel": "secure:vault"}, "p")
    assert reply(peer, "h")["payload"]["code"] == "forbidden"
    assert reply(peer, "p")["payload"]["code"] == "forbidden"
    owner, _ = connect(hub, "owner", channels={"secure:vault": ["subscribe", "publish"]})
    await send(hub, owner, "subscribe", {"channel": "secure:vault"})
    await send(hub, owner, "publish", {"channel": "secure:vault", "data": "secret"}, "p2")
    assert reply(owner.peer, "p2")["type"] == "ack"
    assert peer.of_type("message") == []


async def test_presence_join_and_leave(hub):
    alice, alice_peer = connect(hub, "alice")
    bob, bob_peer = connect(hub, "bob")
    await send(hub, alice, "subscribe", {"channel": "chat:room"})
    await send(hub, bob, "subscribe", {"channel": "chat:room"})
    joins = alice_peer.of_type("join")
    assert [j["payload"]["user"] for j in joins] == ["bob"]
    assert bob_peer.of_type("join") == []  # not told about its own join
    await send(hub, alice, "presence", {"channel": "chat:room"}, "pr")
    clients = reply(alice_peer, "pr")["payload"]["clients"]
    assert sorted(info["user"] for info in clients.values()) == ["alice", "bob"]
    await hub.close_session(bob, 1000)
    await settle()
    assert [e["payload"]["user"] for e in alice_peer.of_type("leave")] == ["bob"]
    assert list((await hub.broker.presence("chat:room")).values()) == [{"user": "alice"}]
    await send(hub, alice, "subscribe", {"channel": "room"})  # the default namespace sends no join/leave
    await send(hub, bob, "subscribe", {"channel": "room"})
    assert len(alice_peer.of_type("join")) == 1


async def test_unsubscribe_stops_delivery_and_releases_the_channel(hub):
    session, peer = connect(hub)
    await send(hub, session, "subscribe", {"channel": "room"})
    await send(hub, session, "unsubscribe", {"channel": "room"}, "u")
    assert reply(peer, "u")["type"] == "ack"
    assert "room" not in hub.channels
    publisher, _ = connect(hub, "pub")
    await send(hub, publisher, "publish", {"channel": "room", "data": 1})
    assert peer.of_type("message") == []
    await send(hub, session, "unsubscribe", {"channel": "room"}, "u2")
    assert reply(peer, "u2")["payload"]["code"] == "not_subscribed"


async def test_token_expiry_suspends_then_refresh_resumes_without_loss(hub):
    # A token far from its expiry: the test expires the identity itself below. (A ttl of 1 s is
    # 0 to 1 s of life, since exp is whole seconds: its timer could fire mid-test on a loaded machine.)
    session, peer = connect(hub, ttl=60)
    await send(hub, session, "subscribe", {"channel": "room"})
    publisher, _ = connect(hub, "pub")
    await send(hub, publisher, "publish", {"channel": "room", "data": 1}, "p1")
    assert peer.offsets("room") == [1]

    session.identity = Identity("alice", time.time() - 1, session.identity.grants)  # expired, timer not yet fired
    await send(hub, session, "publish", {"channel": "room", "data": 2}, "late")
    assert reply(peer, "late")["payload"]["code"] == "token_expired"
    assert session.suspended
    await send(hub, publisher, "publish", {"channel": "room", "data": 3}, "p3")
    assert peer.offsets("room") == [1]  # nothing while expired

    await send(hub, session, "connect", {"token": token("mallory")}, "wrong")
    assert reply(peer, "wrong")["payload"]["code"] == "invalid_token"
    await send(hub, session, "connect", {"token": token("alice")}, "refresh")
    assert reply(peer, "refresh")["type"] == "ack"
    await send(hub, publisher, "publish", {"channel": "room", "data": 4}, "p4")
    assert peer.offsets("room") == [1, 2, 3]  # the one missed while suspended, then live


async def test_expired_token_not_refreshed_closes_with_4006(hub):
    hub.config.token_refresh_grace = 0.05
    peer = FakePeer()
    identity = AUTH.verify(token("alice"))
    hub.open_session(peer, Identity("alice", time.time() + 0.2, identity.grants), "127.0.0.1")
    await eventually(lambda: peer.closed is not None)  # expiry at 0.2 s, then the 0.05 s grace
    assert [e["payload"]["code"] for e in peer.of_type("error")] == ["token_expired"]
    assert peer.closed[0] == CloseCode.TOKEN_EXPIRED


async def test_refresh_with_fewer_grants_drops_the_subscription(hub):
    session, peer = connect(hub, channels={"secure:a": ["subscribe"]})
    await send(hub, session, "subscribe", {"channel": "secure:a"})
    await send(hub, session, "connect", {"token": token("alice")}, "r")
    assert peer.of_type("unsubscribed")[0]["payload"] == {"channel": "secure:a", "reason": "forbidden"}
    assert "secure:a" not in session.subscriptions


async def test_drain_closes_every_session_with_1001(hub):
    peers = [connect(hub, f"u{i}")[1] for i in range(3)]
    hub.drain()
    assert [p.closed for p in peers] == [(1001, "server going away: reconnect")] * 3


async def test_local_only_publication_during_an_outage():
    class DownBroker(MemoryBroker):
        async def publish(self, channel, data, metadata):
            raise BrokerUnavailable("down", Publication(channel, 0, "", data, time.time(), dict(metadata)))

    hub = Hub(DownBroker(), make_config(), telemetry=RecordingTelemetry())
    await hub.start()
    subscriber, sub_peer = connect(hub)
    await send(hub, subscriber, "subscribe", {"channel": "room"})
    publisher, pub_peer = connect(hub, "pub")
    await send(hub, publisher, "publish", {"channel": "room", "data": "hi"}, "p")
    assert reply(pub_peer, "p")["payload"]["code"] == "unavailable"
    assert [m["payload"]["data"] for m in sub_peer.of_type("message")] == ["hi"]
    assert ("broker",) in hub.telemetry.named("error")
    await hub.stop()


async def test_new_epoch_on_the_live_path_tells_subscribers_to_resync(hub):
    session, peer = connect(hub)
    await send(hub, session, "subscribe", {"channel": "room"})
    hub.on_publication(Publication("room", 1, "e1", b"1", time.time()))
    hub.on_publication(Publication("room", 1, "e1", b"1", time.time()))  # a redelivery: dropped
    hub.on_publication(Publication("room", 1, "e2", b"2", time.time()))
    await settle()
    assert [e["type"] for e in peer.events if e["type"] in ("message", "resync")] == ["message", "resync", "message"]
    assert peer.of_type("resync")[0]["payload"] == {"channel": "room", "epoch": "e2", "offset": 0, "reason": "epoch changed"}


async def test_close_session_forgets_everything(hub):
    session, _ = connect(hub)
    await send(hub, session, "subscribe", {"channel": "room"})
    await send(hub, session, "subscribe", {"channel": "chat:x"})
    await hub.close_session(session, 1006)
    assert hub.sessions == {} and hub.channels == {}
    assert hub.telemetry.named("connection_closed") == [("default", 1006, "websocket")]
    deltas = hub.telemetry.named("subscriptions_changed")
    assert sum(d for _, d in deltas) == 0
    assert await hub.broker.presence("room") == {}


async def test_write_delay_gathers_frames_across_ticks(hub):
    # Long enough that the four publishes below fit inside it on a loaded machine.
    hub.config.write_delay = 0.5
    session, peer = connect(hub)
    await send(hub, session, "subscribe", {"channel": "room"})
    await eventually(lambda: peer.writes)  # the subscribe's ack, flushed after the delay
    peer.writes.clear()
    publisher, _ = connect(hub, "pub")
    for i in range(4):  # four separate ticks
        await hub.handle(publisher, encode_command("publish", {"channel": "room", "data": i}, f"p{i}"))
        await asyncio.sleep(0)
    assert peer.writes == []
    await eventually(lambda: peer.writes)
    await asyncio.sleep(0.1)  # a second write, were there one, would come now
    assert len(peer.writes) == 1 and peer.offsets("room") == [1, 2, 3, 4]
