"""The authorization matrix: for every command and channel kind, a client without permission is refused
and learns nothing: no message, no presence, no history, also after its token expires and when it
resumes from an old offset."""

from __future__ import annotations

import json
import time

import pytest

from instrumented_server.auth import Identity
from instrumented_server.broker.memory import MemoryBroker
from instrumented_server.hub import Hub
from instrumented_server.protocol import encode_command
from tests.server.server_support import AUTH, FakePeer, make_config, settle, token

SECRET_DATA = "top-secret-payload"
OWNER_GRANTS = {"channels": {"$vault": ["subscribe", "publish", "presence", "history"],
                             "secure:*": ["subscribe", "publish", "presence", "history"]},
                "namespaces": {"news": ["publish"]}}

# channel kind -> (channel, which of eve's commands are refused)
KINDS = {
    "private ($)": ("$vault", {"subscribe", "recover", "publish", "presence", "history"}),
    "private namespace": ("secure:ops", {"subscribe", "recover", "publish", "presence", "history"}),
    "user-limited": ("room#owner", {"subscribe", "recover", "publish", "presence", "history"}),
    "claims-only publish": ("news:today", {"publish", "presence", "history"}),  # not subscribed: presence/history refused too
    "subscriber-only presence/history": ("room", {"presence", "history"}),
}
COMMANDS = {
    "subscribe": lambda channel, epoch: ("subscribe", {"channel": channel}),
    "recover": lambda channel, epoch: ("subscribe", {"channel": channel, "recover": {"offset": 0, "epoch": epoch}}),
    "publish": lambda channel, epoch: ("publish", {"channel": channel, "data": "eve was here"}),
    "presence": lambda channel, epoch: ("presence", {"channel": channel}),
    "history": lambda channel, epoch: ("history", {"channel": channel, "since_offset": 0, "limit": 100}),
}


@pytest.fixture
async def hub():
    hub = Hub(MemoryBroker(), make_config())
    await hub.start()
    yield hub
    await hub.stop()


def connect(hub, user, **claims):
    peer = FakePeer()
    return hub.open_session(peer, AUTH.verify(token(user, **claims)), "127.0.0.1"), peer


async def send(hub, session, type_, payload, message_id="x"):
    await hub.handle(session, encode_command(type_, payload, message_id))
    await settle()


async def owner_fills(hub, channel):
    owner, _ = connect(hub, "owner", **OWNER_GRANTS)
    await send(hub, owner, "subscribe", {"channel": channel})
    await send(hub, owner, "publish", {"channel": channel, "data": SECRET_DATA})
    return owner, (await hub.broker.history(channel, 0, None, 0)).epoch


def leaked(peer: FakePeer) -> list[dict]:
    """Everything eve got that is not a refusal or her own connection event."""
    return [e for e in peer.events if e["type"] not in ("connected", "error")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS)
async def test_refused_and_learns_nothing(hub, kind, command):
    channel, refused = KINDS[kind]
    owner, epoch = await owner_fills(hub, channel)
    eve, peer = connect(hub, "eve")
    type_, payload = COMMANDS[command](channel, epoch)
    await send(hub, eve, type_, payload, "eve-1")
    await send(hub, owner, "publish", {"channel": channel, "data": SECRET_DATA}, "more")
    if command in refused:
        errors = [e for e in peer.events if e["type"] == "error"]
        assert [e["payload"]["code"] for e in errors] == ["forbidden"], peer.events
        assert leaked(peer) == []
        assert SECRET_DATA not in json.dumps(peer.events)
        assert eve.id not in await hub.broker.presence(channel)
    else:
        assert [e for e in peer.events if e["type"] == "error"] == []  # allowed: the matrix is not vacuous


async def test_after_expiry_nothing_more_arrives_and_commands_are_refused(hub):
    owner, _ = await owner_fills(hub, "$vault")
    reader, peer = connect(hub, "reader", channels=["$vault"])
    await send(hub, reader, "subscribe", {"channel": "$vault"})
    await send(hub, owner, "publish", {"channel": "$vault", "data": "before"})
    assert [e["payload"]["data"] for e in peer.of_type("message")] == ["before"]

    reader.identity = Identity("reader", time.time() - 1, reader.identity.grants)
    for type_, payload in (("history", {"channel": "$vault"}), ("presence", {"channel": "$vault"}),
                           ("subscribe", {"channel": "$vault"}), ("publish", {"channel": "$vault", "data": 1})):
        await send(hub, reader, type_, payload, type_)
    await send(hub, owner, "publish", {"channel": "$vault", "data": SECRET_DATA})
    assert {e["payload"]["code"] for e in peer.of_type("error")} == {"token_expired"}
    assert [e["payload"]["data"] for e in peer.of_type("message")] == ["before"]
    assert SECRET_DATA not in json.dumps(peer.events)
    assert reader.id not in await hub.broker.presence("$vault")


async def test_resuming_from_an_old_offset_without_the_grant_replays_nothing(hub):
    owner, epoch = await owner_fills(hub, "$vault")
    for i in range(3):
        await send(hub, owner, "publish", {"channel": "$vault", "data": SECRET_DATA})
    # a client that once had access comes back with a token that no longer grants it
    former, peer = connect(hub, "former")
    await send(hub, former, "subscribe", {"channel": "$vault", "recover": {"offset": 1, "epoch": epoch}})
    assert [e["payload"]["code"] for e in peer.of_type("error")] == ["forbidden"]
    assert leaked(peer) == [] and SECRET_DATA not in json.dumps(peer.events)
