"""The authorization matrix over real sockets: for every command and channel kind (public, private,
namespaced, presence), a client without permission is refused and learns nothing: no message, no
join or leave, no presence, no history, no position. Also after its token expires mid-connection
(on the real clock) and when it comes back with an old offset.

tests/server/test_server_authz.py holds the same matrix at the hub, with a fake peer; this module
adds what only the wire shows (join/leave events, presence seen by others, a refused publish not
stored), the namespaces whose history policy differs from their subscribe policy, unsubscribe,
token refresh to another user or with fewer grants, and expiry on the real clock.
"""

from __future__ import annotations

import json
import time

import pytest

from instrumented_server.permissions import load_namespaces
from instrumented_server.protocol import CloseCode
from tests.server.server_support import Client, make_config, running_server, token

SECRET = "the-secret-payload"
NAMESPACES = load_namespaces({
    "": {},                                                       # public: anyone subscribes
    "secure": {"private": True},                                  # private namespace
    "news": {"publish": "claims"},                                # everyone reads, granted tokens publish
    "chat": {"presence": "all", "publish": "subscribers", "join_leave": True},  # presence for all
    "board": {"private": True, "join_leave": True},               # private, with join/leave events
    "feed": {"history": "none"},                                  # subscribe yes, history never
    "vip": {"history": "claims", "join_leave": True},             # subscribe yes, history by grant
})
OWNER = {"channels": {pattern: ["subscribe", "publish", "presence", "history"]
                      for pattern in ("$vault", "secure:*", "board:*", "room#owner")},
         "namespaces": {"news": ["publish"], "vip": ["history"]}}

# kind -> (channel, commands eve must be refused: name -> error code)
FORBIDDEN = "forbidden"
MATRIX = {
    "private ($)": ("$vault", dict.fromkeys(("subscribe", "recover", "publish", "presence", "history"), FORBIDDEN)),
    "private namespace": ("secure:ops", dict.fromkeys(("subscribe", "recover", "publish", "presence", "history"),
                                                      FORBIDDEN)),
    "private with join/leave": ("board:plans", dict.fromkeys(("subscribe", "recover", "publish", "presence",
                                                              "history"), FORBIDDEN)),
    "user-limited": ("room#owner", dict.fromkeys(("subscribe", "recover", "publish", "presence", "history"),
                                                 FORBIDDEN)),
    "public": ("room", {"presence": FORBIDDEN, "history": FORBIDDEN, "unsubscribe": "not_subscribed"}),
    "presence for all": ("chat:lobby", {"publish": FORBIDDEN, "history": FORBIDDEN}),
    "namespaced, publish by claims": ("news:today", {"publish": FORBIDDEN, "presence": FORBIDDEN,
                                                      "history": FORBIDDEN}),
    "namespaced, history none": ("feed:x", {"history": FORBIDDEN, "presence": FORBIDDEN}),
    "namespaced, history by claims": ("vip:x", {"history": FORBIDDEN, "presence": FORBIDDEN}),
    "unknown namespace": ("nowhere:x", dict.fromkeys(("subscribe", "recover", "publish", "presence", "history"),
                                                     "unknown_namespace")),
}
COMMANDS = {
    "subscribe": lambda channel, epoch: ("subscribe", {"channel": channel}),
    "recover": lambda channel, epoch: ("subscribe", {"channel": channel, "recover": {"offset": 0, "epoch": epoch}}),
    "unsubscribe": lambda channel, epoch: ("unsubscribe", {"channel": channel}),
    "publish": lambda channel, epoch: ("publish", {"channel": channel, "data": "eve was here"}),
    "presence": lambda channel, epoch: ("presence", {"channel": channel}),
    "history": lambda channel, epoch: ("history", {"channel": channel, "since_offset": 0, "limit": 1000}),
}


# An expired connection's time to send a new token: the expiry test's steps between expiry and its
# refresh (a dozen round trips) must fit in it on a loaded machine.
GRACE = 3.0


@pytest.fixture
async def server():
    async with running_server(make_config(namespaces=NAMESPACES, token_refresh_grace=GRACE)) as server:
        yield server


def learned(client: Client) -> list[dict]:
    """What a client read that is neither its connection event nor a refusal."""
    return [e for e in client.events if e["type"] not in ("connected", "error")]


@pytest.mark.parametrize("kind", MATRIX)
async def test_refused_everywhere_and_learns_nothing(server, kind):
    channel, refused = MATRIX[kind]
    async with Client.connect(server, token("owner", **OWNER)) as owner, \
            Client.connect(server, token("eve")) as eve:
        if kind != "unknown namespace":
            ack = await owner.request("subscribe", {"channel": channel})
            assert ack["type"] == "ack", ack
            await owner.request("publish", {"channel": channel, "data": SECRET})
            epoch = ack["payload"]["epoch"]
        else:
            epoch = "any"
        allowed = []
        for command, build in COMMANDS.items():
            reply = await eve.request(*build(channel, epoch))
            if command in refused:
                assert reply["type"] == "error" and reply["payload"]["code"] == refused[command], (command, reply)
            else:
                allowed.append(command)
                if reply["type"] == "ack" and reply["payload"].get("channel") == channel and command in (
                        "subscribe", "recover"):
                    await eve.request("unsubscribe", {"channel": channel})  # so the next one starts afresh
        if kind != "unknown namespace":
            await owner.request("publish", {"channel": channel, "data": SECRET})
            # The owner sees no trace of eve: not in presence, no join or leave of hers.
            presence = await owner.request("presence", {"channel": channel})
            assert presence["type"] == "ack" and eve.client_id not in json.dumps(presence)
            history = await owner.request("history", {"channel": channel, "since_offset": 0})
            assert "eve was here" not in json.dumps(history) or "publish" in allowed
        await eve.quiet(0.3)
        if set(refused) >= {"subscribe", "recover"}:
            assert learned(eve) == [], learned(eve)  # never subscribed: nothing at all
            assert SECRET not in json.dumps(eve.events)
        if kind != "unknown namespace" and "subscribe" in refused:
            assert [e for e in owner.events if e["type"] in ("join", "leave")
                    and e["payload"]["client"] == eve.client_id] == []
        # The matrix is not vacuous: what the policy allows, eve was allowed.
        assert set(allowed) == set(COMMANDS) - set(refused)


@pytest.mark.parametrize("channel, granted", [("feed:x", False), ("vip:x", False), ("vip:x", True)])
async def test_coming_back_with_an_old_offset_replays_only_with_the_history_permission(server, channel, granted):
    """Subscribing with recover reads history: where history is refused, no replay, but a resync."""
    async with Client.connect(server, token("owner", **OWNER)) as owner:
        epoch = (await owner.request("subscribe", {"channel": channel}))["payload"]["epoch"]
        for i in range(3):
            await owner.request("publish", {"channel": channel, "data": f"{SECRET}-{i}"})
        claims = {"namespaces": {"vip": ["history"]}} if granted else {}
        async with Client.connect(server, token("eve", **claims)) as eve:
            ack = await eve.request("subscribe", {"channel": channel, "recover": {"offset": 0, "epoch": epoch}})
            assert ack["type"] == "ack" and ack["payload"]["recovered"] is granted
            await owner.request("publish", {"channel": channel, "data": "live"})
            events = await eve.until(lambda e: e["type"] == "message" and e["payload"]["data"] == "live")
            data = [e["payload"]["data"] for e in events if e["type"] == "message"]
            if granted:
                assert data == [f"{SECRET}-{i}" for i in range(3)] + ["live"]
            else:
                assert data == ["live"]  # live from now on, and told it missed something
                resync = [e for e in events if e["type"] == "resync"]
                assert resync and resync[0]["payload"]["reason"] == "history not allowed on this channel"
                assert SECRET not in json.dumps(eve.events)


async def test_reconnect_with_an_old_offset_after_the_grant_is_gone_learns_nothing(server):
    async with Client.connect(server, token("owner", **OWNER)) as owner:
        await owner.request("subscribe", {"channel": "$vault"})
        async with Client.connect(server, token("eve", channels=["$vault"])) as eve:
            ack = await eve.request("subscribe", {"channel": "$vault"})
            epoch = ack["payload"]["epoch"]
            await owner.request("publish", {"channel": "$vault", "data": "seen"})
            offset = (await eve.messages(1))[0]["payload"]["offset"]
            eve.connection.transport.abort()  # dropped, no goodbye
        for i in range(3):
            await owner.request("publish", {"channel": "$vault", "data": f"{SECRET}-{i}"})
        async with Client.connect(server, token("eve")) as eve:  # a new token without the grant
            for type_, payload in (("subscribe", {"channel": "$vault", "recover": {"offset": offset, "epoch": epoch}}),
                                   ("history", {"channel": "$vault", "since_offset": offset, "epoch": epoch}),
                                   ("presence", {"channel": "$vault"})):
                reply = await eve.request(type_, payload)
                assert reply["payload"]["code"] == FORBIDDEN, reply
            await eve.quiet(0.3)
            assert learned(eve) == [] and SECRET not in json.dumps(eve.events)


# Tokens meant to expire during a test: exp is whole seconds, so a ttl of 3 s lives 2 to 3 s, time
# enough for the steps before expiry on a loaded machine (1 s could leave nothing at all).
SHORT_TTL = 3


async def test_token_expiry_mid_connection_on_the_real_clock(server):
    async with Client.connect(server, token("owner", **OWNER)) as owner, \
            Client.connect(server, token("eve", ttl=SHORT_TTL, channels=["$vault"])) as eve:
        await owner.request("subscribe", {"channel": "$vault"})
        await eve.request("subscribe", {"channel": "$vault"})
        await owner.request("publish", {"channel": "$vault", "data": "before"})
        assert [m["payload"]["data"] for m in await eve.messages(1)] == ["before"]
        assert eve.client_id in json.dumps(await owner.request("presence", {"channel": "$vault"}))

        # The server notices on its own, without a command from eve.
        expired = await eve.next()
        assert expired["type"] == "error" and expired["payload"]["code"] == "token_expired"
        await owner.request("publish", {"channel": "$vault", "data": SECRET})
        for type_, payload in (("history", {"channel": "$vault"}), ("presence", {"channel": "$vault"}),
                               ("publish", {"channel": "$vault", "data": "eve"}), ("subscribe", {"channel": "$x"})):
            reply = await eve.request(type_, payload)
            assert reply["payload"]["code"] == "token_expired", reply
        await eve.quiet(0.2)
        assert SECRET not in json.dumps(eve.events)
        presence = await owner.request("presence", {"channel": "$vault"})
        assert eve.client_id not in json.dumps(presence)  # gone from presence while suspended

        # A refresh for another user, or with an expired token, changes nothing.
        for other in (token("mallory", channels=["$vault"]), token("eve", ttl=-5, channels=["$vault"])):
            assert (await eve.request("connect", {"token": other}))["payload"]["code"] == "invalid_token"
        # A refresh without the grant: the subscription ends, and nothing of the gap is replayed.
        started = time.monotonic()
        ack = await eve.request("connect", {"token": token("eve", ttl=SHORT_TTL)})
        assert ack["type"] == "ack"
        events = await eve.until(lambda e: e["type"] == "unsubscribed")
        assert [(e["type"], e["payload"].get("reason")) for e in events] == [("unsubscribed", FORBIDDEN)]
        assert SECRET not in json.dumps(eve.events)
        # And with no refresh at all within the grace, the connection is closed with 4006.
        assert await eve.closed() == CloseCode.TOKEN_EXPIRED
        assert time.monotonic() - started < SHORT_TTL + GRACE + 5.0  # expiry + grace + slack for a loaded machine


async def test_a_refresh_with_the_grant_resumes_with_exactly_what_was_missed(server):
    """The other side of the expiry test: the same gap is replayed, once, when the grant is kept."""
    async with Client.connect(server, token("owner", **OWNER)) as owner, \
            Client.connect(server, token("eve", ttl=SHORT_TTL, channels=["$vault"])) as eve:
        await owner.request("subscribe", {"channel": "$vault"})
        await eve.request("subscribe", {"channel": "$vault"})
        assert (await eve.next())["payload"]["code"] == "token_expired"
        for i in range(3):
            await owner.request("publish", {"channel": "$vault", "data": i})
        assert (await eve.request("connect", {"token": token("eve", channels=["$vault"])}))["type"] == "ack"
        await owner.request("publish", {"channel": "$vault", "data": 3})
        messages = [e for e in await eve.until(lambda e: e["type"] == "message" and e["payload"]["data"] == 3)
                    if e["type"] == "message"]
        assert [m["payload"]["data"] for m in messages] == [0, 1, 2, 3]
        assert [m["payload"]["offset"] for m in messages] == [1, 2, 3, 4]
