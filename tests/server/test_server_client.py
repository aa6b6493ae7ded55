"""The Python client against a real server: reconnects, resumes, refreshes, stops on auth failures."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from instrumented_server.client import AuthenticationFailed, Backoff, Client, ClientError
from tests.server.server_support import AUTH, DEADLINE, eventually, make_config, running_server, token


def url(server) -> str:
    return f"ws://127.0.0.1:{server.port}/"


def fast_backoff() -> Backoff:
    return Backoff(initial=0.02, cap=0.1)


async def drain_events(client: Client, seconds: float = 0.2) -> list[dict]:
    events = []
    try:
        while True:
            events.append(await client.next_event(seconds))
    except asyncio.TimeoutError:
        return events


def test_backoff_is_full_jitter_and_capped():
    backoff = Backoff(initial=0.5, factor=2, cap=8)
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(8, 0.5 * 2 ** attempt)
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not clustered
    assert backoff.delay(10_000, rng) <= 8


async def test_subscribe_publish_receive():
    async with running_server() as server:
        async with Client(url(server), token("alice")) as alice, Client(url(server), token("bob")) as bob:
            await alice.subscribe("room")
            ack = await bob.publish("room", {"text": "hi"})
            assert ack["offset"] == 1
            event = await alice.next_event(DEADLINE)
            assert event["type"] == "message" and event["payload"]["data"] == {"text": "hi"}
            assert (await alice.presence("room")) and (await alice.history("room"))["publications"]
            with pytest.raises(ClientError) as info:
                await bob.subscribe("secure:vault")
            assert info.value.code == "forbidden"


async def test_auth_failure_stops_without_retrying():
    async with running_server() as server:
        client = Client(url(server), "garbage", backoff=fast_backoff())
        with pytest.raises(AuthenticationFailed) as info:
            await client.start()
        assert info.value.close_code == 4002
        await asyncio.sleep(0.2)
        assert client.stats.connects == 0 and client.stats.close_codes == {4002: 1}
        await client.close()


async def test_abrupt_drop_reconnects_and_resumes_exactly_once():
    async with running_server() as server:
        async with Client(url(server), token("pub")) as publisher, \
                Client(url(server), token("sub"), backoff=fast_backoff()) as subscriber:
            await subscriber.subscribe("room")
            for i in range(5):
                await publisher.publish("room", i)
            await eventually(lambda: subscriber.stats.delivered == 5)
            session = next(s for s in server.hub.sessions.values() if s.user == "sub")
            session.peer.transport.abort()  # the network drops: no close frame (1006)

            async def publish_more():
                for i in range(5, 30):
                    await publisher.publish("room", i)
                    await asyncio.sleep(0.003)

            await publish_more()
            await eventually(lambda: subscriber.stats.delivered == 30)
            offsets = [e["payload"]["offset"] for e in await drain_events(subscriber) if e["type"] == "message"]
            assert offsets == list(range(1, 31))
            assert subscriber.stats.reconnects == 1
            assert subscriber.stats.close_codes.get(1006) == 1


async def test_server_drain_1001_then_a_new_server_gives_resync():
    config = make_config()
    async with running_server(config) as server:
        port = server.port
        client = Client(f"ws://127.0.0.1:{port}/", token(), backoff=fast_backoff())
        await client.start()
        await client.subscribe("room")
        await client.publish("room", "before")
    # the server drained (1001); a fresh one (a new memory broker: history lost) takes its port
    async with running_server(make_config(port=port)) as server:
        await eventually(lambda: client.connected and client.stats.reconnects == 1)
        # The message before the drain, then the resync; then nothing more.
        events = [await client.next_event(DEADLINE), await client.next_event(DEADLINE)]
        events += await drain_events(client, 0.3)
        assert [e["type"] for e in events] == ["message", "resync"]
        assert client.stats.close_codes.get(1001) == 1
        await client.publish("room", "after")
        event = await client.next_event(DEADLINE)
        assert event["payload"]["data"] == "after" and event["payload"]["offset"] == 1
        await client.close()


async def test_token_is_refreshed_before_it_expires():
    # exp is whole seconds, so a 4 s token lives 3 to 4 s; refreshed at half its life, it leaves
    # the refresh 1.5 s or more of slack on a loaded machine.
    async with running_server() as server:
        client = Client(url(server), lambda: AUTH.mint("alice", ttl=4), refresh_margin=0.5)
        await client.start()
        first_expired_by = time.time() + 4  # the first token was minted before this
        await client.subscribe("room")
        await asyncio.sleep(first_expired_by - time.time() + 0.5)  # past the first token's expiry
        await client.publish("room", "still here")
        assert (await client.next_event(DEADLINE))["payload"]["data"] == "still here"
        assert client.stats.connects == 1  # never dropped
        await client.close()


async def test_gap_in_offsets_is_filled_from_history():
    async with running_server() as server:
        async with Client(url(server), token("pub")) as publisher, Client(url(server), token("sub")) as subscriber:
            await subscriber.subscribe("room")
            for i in range(3):
                await publisher.publish("room", i)
            await eventually(lambda: subscriber.stats.delivered == 3)
            await drain_events(subscriber, 0.05)
            subscriber.positions["room"].offset = 1  # pretend offsets 2 and 3 never arrived
            await publisher.publish("room", 3)
            await eventually(lambda: subscriber.stats.delivered == 6)
            offsets = [e["payload"]["offset"] for e in await drain_events(subscriber) if e["type"] == "message"]
            assert offsets == [2, 3, 4]
            assert subscriber.stats.gaps_recovered == 1
