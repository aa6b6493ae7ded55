"""What only the Redis broker does: several processes, outages, lost Redis data (real redis-server).

Two RedisBroker instances in one event loop stand in for two server processes: they share nothing
but Redis, exactly like two processes would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis

from instrumented_server.broker.base import LOCAL_ONLY_OFFSET, BrokerUnavailable, Publication
from instrumented_server.broker.redis import RedisBroker, decode_message

# The brokers' command timeout in these tests: it bounds connecting, waiting for a pooled
# connection and each reply. 0.5 s failed a CI run under load (load average ~10 on 2 cores:
# "Timeout connecting to server" while 80 concurrent publishes queued for 32 pooled connections);
# the outage tests below measure against it, so a generous value only makes them slower.
TIMEOUT = 3.0
DEADLINE = 30.0  # waits for something that should happen end as soon as it does


class Recorder:
    def __init__(self) -> None:
        self.got: list[Publication] = []

    def __call__(self, publication: Publication) -> None:
        self.got.append(publication)

    def offsets(self) -> list[int]:
        return [p.offset for p in self.got]


async def eventually(predicate, timeout: float = DEADLINE, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


@pytest.fixture
async def brokers(redis_server):
    """``await brokers(**options)`` -> (broker, recorder), started against the test's redis-server."""
    started: list[RedisBroker] = []

    async def make(**options) -> tuple[RedisBroker, Recorder]:
        options = {"timeout": TIMEOUT, "liveness_interval": 0.2, "backoff_max": 0.2, **options}
        broker = RedisBroker(redis_server.url, **options)
        recorder = Recorder()
        await broker.start(recorder)
        started.append(broker)
        return broker, recorder

    yield make
    for broker in started:
        await broker.close()


@pytest.fixture
async def raw(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def test_pubsub_payload_round_trip():
    payload = b'7\nab12cd34\n1700000000.25\n{"message_id":"m"}\n{"a":"x\\ny"}\nraw newline'
    publication = decode_message("room", payload)
    assert publication == Publication("room", 7, "ab12cd34", b'{"a":"x\\ny"}\nraw newline', 1700000000.25,
                                      {"message_id": "m"})
    assert decode_message("room", b"1\ne\n0.5\n\n{}").metadata == {}


async def test_two_processes_share_offsets_history_presence_and_delivery(brokers):
    (a, got_a), (b, got_b) = await brokers(), await brokers()
    await a.subscribe("room")
    await b.subscribe("room")
    # Interleaved publishes from both processes: one gap-free sequence.
    published = await asyncio.gather(*(broker.publish("room", b'"%d"' % i, {"from": broker is a and "a" or "b"})
                                       for i in range(40) for broker in (a, b)))
    assert sorted(p.offset for p in published) == list(range(1, 81))
    await eventually(lambda: len(got_a.got) >= 80 and len(got_b.got) >= 80)
    await asyncio.sleep(0.05)
    # Each process got every publication (its own and the other's) once, in offset order.
    assert got_a.offsets() == got_b.offsets() == list(range(1, 81))
    # History written by one is read by the other.
    replay = await b.history("room", 70, published[0].epoch, 100)
    assert [p.offset for p in replay.publications] == list(range(71, 81))
    assert {p.data for p in replay.publications} == {p.data for p in published if p.offset > 70}
    await a.presence_add("room", "alice", {"user": "alice"})
    await b.presence_add("room", "bob", {"user": "bob"})
    assert await a.presence("room") == await b.presence("room") == {"alice": {"user": "alice"}, "bob": {"user": "bob"}}


async def test_publish_reaches_a_process_subscribed_elsewhere_only(brokers):
    (a, got_a), (b, got_b) = await brokers(), await brokers()
    await b.subscribe("only-b")
    await a.publish("only-b", b"1", {})
    await eventually(lambda: len(got_b.got) == 1)
    await asyncio.sleep(0.05)
    assert got_a.got == [] and got_b.offsets() == [1]


async def test_a_dropped_pubsub_connection_loses_nothing(brokers, raw):
    """Redis stays up but kills the subscriber connections: catch-up from the stream fills the gap."""
    # The publisher subscribes to nothing, so CLIENT KILL TYPE pubsub leaves its connections alone.
    (publisher, _), (subscriber, got) = await brokers(), await brokers()
    await subscriber.subscribe("c")
    acknowledged: list[int] = []

    async def publish_steadily() -> None:
        for i in range(60):
            acknowledged.append((await publisher.publish("c", b'"%d"' % i, {})).offset)
            await asyncio.sleep(0.003)

    task = asyncio.create_task(publish_steadily())
    await asyncio.sleep(0.05)
    killed = await raw.client_kill_filter(_type="pubsub")
    await task
    assert killed >= 1
    await eventually(lambda: len(got.got) >= 60)
    await asyncio.sleep(0.05)
    assert got.offsets() == acknowledged == list(range(1, 61))  # none lost, none twice, in order


async def test_publications_made_while_the_subscriber_reconnects_are_caught_up(brokers, raw):
    """Nothing follows them live, so only the catch-up after resubscribing can deliver them."""
    # The publisher subscribes to nothing, so CLIENT KILL TYPE pubsub leaves its connections alone.
    (publisher, _), (subscriber, got) = await brokers(), await brokers()
    await subscriber.subscribe("c")
    await publisher.publish("c", b'"1"', {})
    await eventually(lambda: len(got.got) == 1)
    assert await raw.client_kill_filter(_type="pubsub") >= 1
    for i in range(2, 6):  # the subscriber is still backing off before reconnecting
        await publisher.publish("c", b'"%d"' % i, {})
    await eventually(lambda: len(got.got) >= 5)
    await asyncio.sleep(0.05)
    assert got.offsets() == [1, 2, 3, 4, 5] and subscriber.outages == 1


async def test_a_pubsub_message_seen_twice_is_delivered_once(brokers, raw):
    (broker, got) = await brokers()
    await broker.subscribe("c")
    first = await broker.publish("c", b'"1"', {})
    await eventually(lambda: len(got.got) == 1)
    replayed = b"1\n" + first.epoch.encode() + b"\n" + repr(first.published_at).encode() + b"\n\n" + b'"1"'
    await raw.publish("obsgen:pub:c", replayed)
    await broker.publish("c", b'"2"', {})
    await eventually(lambda: len(got.got) >= 2)
    await asyncio.sleep(0.05)
    assert got.offsets() == [1, 2]


async def test_a_missed_pubsub_message_is_filled_from_the_stream(brokers, raw):
    """A publication stored without its Pub/Sub message (as if lost) is delivered before the next one."""
    (broker, got) = await brokers()
    await broker.subscribe("c")
    first = await broker.publish("c", b'"1"', {})
    # Store offset 2 the way the publish script does, minus the PUBLISH.
    await raw.xadd("obsgen:stream:c", {"d": b'"2"', "m": b"", "t": repr(time.time())}, id="2-0")
    await raw.hset("obsgen:meta:c", "offset", 2)
    await broker.publish("c", b'"3"', {})
    await eventually(lambda: len(got.got) >= 3)
    await asyncio.sleep(0.05)
    assert [(p.offset, p.data, p.epoch) for p in got.got] == [
        (1, b'"1"', first.epoch), (2, b'"2"', first.epoch), (3, b'"3"', first.epoch)]


async def test_redis_killed_and_restarted_mid_stream(brokers, redis_server):
    (a, got_a), (b, got_b) = await brokers(), await brokers()
    await a.subscribe("c")
    await b.subscribe("c")
    # Concurrent publishes leave several pooled connections, all dead once Redis restarts.
    acknowledged = sorted(await asyncio.gather(*(a.publish("c", b'"before-%d"' % i, {}) for i in range(10))),
                          key=lambda p: p.offset)
    await eventually(lambda: len(got_b.got) == 10)

    redis_server.kill()
    outcomes = []
    for i in range(20):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as failure:
            await a.publish("c", b'"during-%d"' % i, {"message_id": f"during-{i}"})
        outcomes.append((time.monotonic() - started, failure.value.publication))
        await asyncio.sleep(0.01)
    # Never a hang: each failure comes within the command timeout (and at once once known down).
    assert max(elapsed for elapsed, _ in outcomes) < 2 * TIMEOUT + 1.0
    assert not a.healthy
    await eventually(lambda: not b.healthy)  # b learns it from its own connections
    # Once the broker knows Redis is down, it hands back a local-only copy for this process.
    local = [publication for _, publication in outcomes if publication is not None]
    assert local and all(p.offset == LOCAL_ONLY_OFFSET and p.epoch == "" for p in local)
    assert local[-1].data == b'"during-19"' and local[-1].metadata == {"message_id": "during-19"}
    with pytest.raises(BrokerUnavailable):
        await b.history("c", 0, None, 10)
    with pytest.raises(BrokerUnavailable):
        await b.presence("c")
    await b.presence_add("c", "bob", {"user": "bob"})  # remembered, never raises

    redis_server.start()  # same port, empty: all history is gone
    await eventually(lambda: a.healthy and b.healthy)
    after = sorted(await asyncio.gather(*(a.publish("c", b'"after-%d"' % i, {}) for i in range(5))),
                   key=lambda p: p.offset)
    assert [p.offset for p in after] == [1, 2, 3, 4, 5]
    assert after[0].epoch != acknowledged[0].epoch  # clients positioned before the outage must resync
    await eventually(lambda: len(got_b.got) >= 15)
    await asyncio.sleep(0.05)
    # Every acknowledged publication reached the other process exactly once, in order, and the
    # subscription resumed by itself; nothing published during the outage leaked through Redis.
    assert [(p.epoch, p.offset) for p in got_b.got] == [(p.epoch, p.offset) for p in acknowledged + after]
    assert [(p.epoch, p.offset) for p in got_a.got] == [(p.epoch, p.offset) for p in acknowledged + after]
    assert await a.presence("c") == {"bob": {"user": "bob"}}  # re-registered on reconnect
    assert (await b.history("c", 0, after[0].epoch, 10)).latest_offset == 5


async def test_an_unresponsive_redis_does_not_hang_publish(brokers, redis_server):
    (broker, got) = await brokers()
    await broker.subscribe("c")
    await broker.publish("c", b"1", {})
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as failure:
            await broker.publish("c", b"2", {})
        assert time.monotonic() - started < 2 * TIMEOUT + 1.0
        assert failure.value.publication is None  # in doubt: it may still be stored when Redis wakes
        assert not broker.healthy
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await broker.publish("c", b"3", {})
        assert time.monotonic() - started < TIMEOUT / 3  # known down: fails at once, no timeout waited
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    await eventually(lambda: broker.healthy)
    fourth = await broker.publish("c", b"4", {})
    await eventually(lambda: got.got and got.got[-1].offset == fourth.offset)
    offsets = got.offsets()
    assert offsets == sorted(set(offsets)) and offsets[0] == 1  # in order, no duplicates


async def test_a_deleted_stream_or_channel_forces_resync(brokers, raw):
    (a, _), (b, got_b) = await brokers(), await brokers()
    await b.subscribe("c")
    for i in range(5):
        last = await a.publish("c", b"x", {})
    await raw.delete("obsgen:stream:c")  # the history is gone, the position is not
    assert (await b.history("c", 2, last.epoch, 10)).recover_failed  # missed 3..5: resync
    up_to_date = await b.history("c", 5, last.epoch, 10)  # missed nothing: nothing to do
    assert not up_to_date.recover_failed and up_to_date.publications == ()
    assert (await a.publish("c", b"x", {})).offset == 6

    await raw.delete("obsgen:stream:c", "obsgen:meta:c")  # the whole channel, as after FLUSHALL
    fresh = await a.publish("c", b"fresh", {})
    assert fresh.offset == 1 and fresh.epoch != last.epoch
    assert (await b.history("c", 6, last.epoch, 10)).recover_failed
    # The subscriber gets the new epoch's first publication (not mistaken for a duplicate of 1).
    await eventually(lambda: len(got_b.got) >= 7)
    assert [(p.offset, p.epoch == fresh.epoch) for p in got_b.got[-2:]] == [(6, False), (1, True)]


async def test_started_while_redis_is_down_then_recovers(redis_server):
    server = redis_server
    server.kill()
    broker = RedisBroker(server.url, timeout=TIMEOUT, liveness_interval=0.2, backoff_max=0.2)
    got = Recorder()
    try:
        started = time.monotonic()
        await broker.start(got)
        assert time.monotonic() - started < 3 * TIMEOUT + 1.0 and not broker.healthy
        await broker.subscribe("c")  # remembered
        await broker.presence_add("c", "ann", {"user": "ann"})
        with pytest.raises(BrokerUnavailable) as failure:
            await broker.publish("c", b"x", {})
        assert failure.value.publication is not None
        server.start()
        await eventually(lambda: broker.healthy)
        await broker.publish("c", b"y", {})
        await eventually(lambda: len(got.got) == 1)
        assert got.got[0].data == b"y"
        assert await broker.presence("c") == {"ann": {"user": "ann"}}
    finally:
        await broker.close()


async def test_presence_of_a_crashed_process_expires_and_a_live_one_stays(brokers):
    # A TTL of 2 s: refreshed every 2/3 s, "stays" outlives a refresh delayed by a loaded machine.
    ttl = 2.0
    (alive, _), (crashing, _), (observer, _) = await brokers(presence_ttl=ttl), await brokers(presence_ttl=ttl), \
        await brokers()
    await alive.presence_add("room", "stays", {"user": "a"})
    await crashing.presence_add("room", "goes", {"user": "b"})
    assert set(await observer.presence("room")) == {"stays", "goes"}
    await crashing.close()  # stops refreshing without removing anything, like a crash
    closed = time.monotonic()
    seen: list[dict] = []

    async def goes_gone() -> bool:
        seen.append(await observer.presence("room"))
        return "goes" not in seen[-1]

    while not await goes_gone():
        assert time.monotonic() - closed < DEADLINE, seen[-1]
        await asyncio.sleep(0.1)
    # "stays" was there at every look, well past the crashed one's TTL.
    await asyncio.sleep(max(0.0, closed + 2 * ttl - time.monotonic()))
    seen.append(await observer.presence("room"))
    assert all("stays" in presence for presence in seen), seen
    assert seen[-1] == {"stays": {"user": "a"}}
    await alive.presence_remove("room", "stays")
    assert await observer.presence("room") == {}


def test_settings_are_checked():
    with pytest.raises(ValueError, match="meta_ttl"):
        RedisBroker(history_ttl=100, meta_ttl=10)
    with pytest.raises(ValueError, match="timeout"):
        RedisBroker(timeout=0)
    with pytest.raises(ValueError, match="history_size"):
        RedisBroker(history_size=0)
