"""The broker contract: the same tests against the memory broker and the Redis broker (real redis-server).

What a broker promises is written in instrumented_server/broker/base.py; each test here checks one
promise, through the public interface only.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from instrumented_server.broker.base import Broker, Publication
from instrumented_server.broker.memory import MemoryBroker
from instrumented_server.broker.redis import RedisBroker


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An on_publication callback that keeps what it got."""

    def __init__(self) -> None:
        self.got: list[Publication] = []

    def __call__(self, publication: Publication) -> None:
        self.got.append(publication)

    def offsets(self, channel: str | None = None) -> list[int]:
        return [p.offset for p in self.got if channel is None or p.channel == channel]

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` publications arrived, then a little longer so extras would show."""
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)


async def eventually(predicate, timeout: float = 30.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request):
    """``await make_broker(history_size=..., history_ttl=..., clock=..., callback=...)`` -> (broker, recorder)."""
    kind = request.param
    server = request.getfixturevalue("redis_server") if kind == "redis" else None
    started: list[Broker] = []

    async def make(history_size: int = 100, history_ttl: float = 300.0, clock=time.time, callback=None):
        if server is None:
            broker: Broker = MemoryBroker(history_size=history_size, history_ttl=history_ttl, clock=clock)
        else:
            # A generous command timeout: 0.5 s timed out connecting under load (CI, load ~10).
            broker = RedisBroker(server.url, history_size=history_size, history_ttl=history_ttl, clock=clock,
                                 timeout=3.0, liveness_interval=0.2, backoff_max=0.2)
        recorder = Recorder()
        await broker.start(callback or recorder)
        started.append(broker)
        return broker, recorder

    make.kind = kind
    yield make
    for broker in started:
        await broker.close()


async def test_offsets_are_monotonic_gap_free_from_one_and_per_channel(make_broker):
    broker, _ = await make_broker()
    assert broker.healthy
    a = [(await broker.publish("a", b"{}", {})).offset for _ in range(5)]
    b = [(await broker.publish("b", b"{}", {})).offset for _ in range(3)]
    assert (a, b) == ([1, 2, 3, 4, 5], [1, 2, 3])


async def test_concurrent_publishes_get_distinct_offsets_and_arrive_in_order(make_broker):
    broker, recorder = await make_broker()
    await broker.subscribe("c")
    publications = await asyncio.gather(*(broker.publish("c", b'"%d"' % i, {}) for i in range(50)))
    assert sorted(p.offset for p in publications) == list(range(1, 51))
    await recorder.wait_for(50)
    assert recorder.offsets() == list(range(1, 51))


async def test_data_and_metadata_come_back_byte_for_byte(make_broker):
    broker, recorder = await make_broker()
    await broker.subscribe("c")
    data = '{"text":"line one\\nline two","emoji":"ü ✓"}'.encode() + b"\n"
    metadata = {"message_id": "m-1", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    published = await broker.publish("c", data, metadata)
    await recorder.wait_for(1)
    delivered = recorder.got[0]
    replayed = (await broker.history("c", 0, published.epoch, 10)).publications[0]
    for publication in (delivered, replayed):
        assert (publication.channel, publication.offset, publication.epoch) == ("c", 1, published.epoch)
        assert (publication.data, dict(publication.metadata)) == (data, metadata)
        assert publication.published_at == pytest.approx(published.published_at)


async def test_history_keeps_the_last_n(make_broker):
    broker, _ = await make_broker(history_size=3)
    for i in range(5):
        last = await broker.publish("c", b'"%d"' % i, {})
    replay = await broker.history("c", 2, last.epoch, 10)
    assert [p.offset for p in replay.publications] == [3, 4, 5]
    assert [p.data for p in replay.publications] == [b'"2"', b'"3"', b'"4"']
    assert (replay.latest_offset, replay.recover_failed) == (5, False)
    too_old = await broker.history("c", 1, last.epoch, 10)
    assert too_old.recover_failed and too_old.publications == ()


async def test_history_keeps_nothing_older_than_ttl(make_broker):
    clock = FakeClock()
    broker, _ = await make_broker(history_ttl=30.0, clock=clock)
    first = await broker.publish("c", b"1", {})
    clock.now += 20
    await broker.publish("c", b"2", {})
    clock.now += 15  # the first is now 35s old, the second 15s
    assert (await broker.history("c", 0, first.epoch, 10)).recover_failed
    replay = await broker.history("c", 1, first.epoch, 10)
    assert [p.offset for p in replay.publications] == [2] and not replay.recover_failed


async def test_history_limit_and_position(make_broker):
    broker, _ = await make_broker()
    position = await broker.history("fresh", 0, None, 0)
    assert (position.latest_offset, position.publications, position.recover_failed) == (0, (), False)
    assert position.epoch  # a channel gets its epoch before its first publication...
    for _ in range(6):
        last = await broker.publish("fresh", b"x", {})
    assert last.epoch == position.epoch  # ...and keeps it, so that first position stays valid
    page = await broker.history("fresh", 0, position.epoch, 4)
    assert [p.offset for p in page.publications] == [1, 2, 3, 4]
    rest = await broker.history("fresh", 4, position.epoch, 4)
    assert [p.offset for p in rest.publications] == [5, 6]
    assert (await broker.history("fresh", 6, position.epoch, 4)).publications == ()


async def test_history_refuses_another_epoch_and_positions_from_the_future(make_broker):
    broker, _ = await make_broker()
    last = await broker.publish("c", b"x", {})
    assert (await broker.history("c", 0, "not-" + last.epoch, 10)).recover_failed
    assert (await broker.history("c", 5, last.epoch, 10)).recover_failed
    assert not (await broker.history("c", 0, None, 10)).recover_failed  # no epoch claimed, none checked
    with pytest.raises(ValueError):
        await broker.history("c", -1, None, 10)


async def test_a_new_broker_lifetime_forces_resync(make_broker, request):
    broker, _ = await make_broker()
    before = await broker.publish("c", b"x", {})
    if make_broker.kind == "memory":
        broker, _ = await make_broker()  # a restarted process
    else:
        server = request.getfixturevalue("redis_server")
        server.kill()  # no persistence: all history is gone
        server.start()
        await eventually(lambda: broker.outages == 1 and broker.healthy)
    after = await broker.publish("c", b"y", {})
    assert after.epoch != before.epoch and after.offset == 1
    assert (await broker.history("c", 1, before.epoch, 10)).recover_failed


async def test_presence(make_broker):
    broker, _ = await make_broker()
    await broker.presence_add("room", "c1", {"user": "ann"})
    await broker.presence_add("room", "c2", {"user": "bob"})
    await broker.presence_add("other", "c3", {"user": "cid"})
    await broker.presence_add("room", "c1", {"user": "ann", "device": "phone"})
    assert await broker.presence("room") == {"c1": {"user": "ann", "device": "phone"}, "c2": {"user": "bob"}}
    await broker.presence_remove("room", "c1")
    await broker.presence_remove("room", "never-there")
    assert await broker.presence("room") == {"c2": {"user": "bob"}}
    assert await broker.presence("other") == {"c3": {"user": "cid"}}
    assert await broker.presence("empty") == {}


async def test_delivery_only_for_subscribed_channels_exactly_once(make_broker):
    broker, recorder = await make_broker()
    await broker.subscribe("wanted")
    await broker.subscribe("wanted")  # a second call changes nothing
    await broker.publish("unwanted", b"x", {})
    for _ in range(3):
        await broker.publish("wanted", b"x", {})
    await recorder.wait_for(3)
    assert [(p.channel, p.offset) for p in recorder.got] == [("wanted", 1), ("wanted", 2), ("wanted", 3)]
    await broker.unsubscribe("wanted")
    await broker.unsubscribe("wanted")
    await broker.publish("wanted", b"x", {})
    await recorder.wait_for(4, timeout=0.2)
    assert len(recorder.got) == 3


async def test_subscribe_delivers_everything_after_the_position_it_returns_at(make_broker):
    broker, recorder = await make_broker()
    await broker.publish("c", b"before", {})
    await broker.subscribe("c")
    position = await broker.history("c", 0, None, 0)
    await broker.publish("c", b"after", {})
    await recorder.wait_for(1)
    assert [(p.offset, p.data) for p in recorder.got] == [(position.latest_offset + 1, b"after")]


async def test_an_async_callback_is_awaited_serially_in_order(make_broker):
    seen: list[int] = []
    active = 0

    async def slow(publication: Publication) -> None:
        nonlocal active
        active += 1
        assert active == 1, "on_publication must never run concurrently"
        await asyncio.sleep(0.002)
        seen.append(publication.offset)
        active -= 1

    broker, _ = await make_broker(callback=slow)
    await broker.subscribe("c")
    await asyncio.gather(*(broker.publish("c", b"x", {}) for _ in range(10)))
    await eventually(lambda: len(seen) == 10)
    assert seen == list(range(1, 11))
