"""The in-memory broker's pure parts (no event loop) and what only the memory broker does.

Behaviour every broker shares is in test_broker_contract.py.
"""

from __future__ import annotations

import pytest

from instrumented_server.broker.base import Publication, select_history
from instrumented_server.broker.memory import ChannelLog, MemoryBroker, PresenceTable


def make_log(size: int = 3, ttl: float = 10.0) -> ChannelLog:
    return ChannelLog("news", history_size=size, history_ttl=ttl, epoch="e1", now=0.0)


def offsets(result) -> list[int]:
    return [p.offset for p in result.publications]


def test_offsets_start_at_one_and_have_no_gaps():
    log = make_log(size=2)
    assert [log.append(b"{}", {}, now=float(i)).offset for i in range(5)] == [1, 2, 3, 4, 5]
    assert log.latest_offset == 5


def test_history_is_bounded_by_count():
    log = make_log(size=3)
    for i in range(5):
        log.append(b'"%d"' % i, {}, now=0.0)
    assert [p.offset for p in log.held()] == [3, 4, 5]
    assert offsets(log.history(2, "e1", limit=10, now=0.0)) == [3, 4, 5]
    failed = log.history(1, "e1", limit=10, now=0.0)
    assert failed.recover_failed and failed.publications == () and failed.latest_offset == 5


def test_history_is_bounded_by_age():
    log = make_log(size=10, ttl=10.0)
    log.append(b"1", {}, now=0.0)
    log.append(b"2", {}, now=5.0)
    log.append(b"3", {}, now=9.0)
    assert offsets(log.history(0, "e1", limit=10, now=9.0)) == [1, 2, 3]
    # At t=12 the first publication is 12s old: a client at offset 0 has lost it, one at 1 has not.
    assert log.history(0, "e1", limit=10, now=12.0).recover_failed
    assert offsets(log.history(1, "e1", limit=10, now=12.0)) == [2, 3]
    assert [p.offset for p in log.held()] == [2, 3]


def test_history_honours_limit_and_position_only_requests():
    log = make_log(size=10)
    for _ in range(6):
        log.append(b"x", {}, now=0.0)
    assert offsets(log.history(1, "e1", limit=2, now=0.0)) == [2, 3]
    position = log.history(0, None, limit=0, now=0.0)
    assert (position.publications, position.epoch, position.latest_offset) == ((), "e1", 6)


def test_history_refuses_another_epoch_and_a_position_from_the_future():
    log = make_log()
    log.append(b"x", {}, now=0.0)
    assert log.history(0, "other", limit=10, now=0.0).recover_failed
    assert log.history(7, "e1", limit=10, now=0.0).recover_failed
    assert not log.history(1, "e1", limit=10, now=0.0).recover_failed  # up to date: nothing to replay


def test_select_history_needs_the_very_next_offset():
    held = (Publication("c", 5, "e", b"x", 0.0), Publication("c", 6, "e", b"y", 0.0))
    common = dict(channel_epoch="e", latest_offset=6, epoch="e", limit=10, history_size=100, history_ttl=60.0, now=1.0)
    assert select_history(candidates=held, since_offset=4, **common).publications == held
    # Offset 4 is gone (a deleted Redis stream, say): replaying 5, 6 to a client at 3 would skip it.
    assert select_history(candidates=held, since_offset=3, **common).recover_failed
    assert select_history(candidates=(), since_offset=3, **common).recover_failed
    with pytest.raises(ValueError, match="since_offset"):
        select_history(candidates=held, since_offset=-1, **common)


def test_presence_table():
    table = PresenceTable()
    table.add("room", "c1", {"user": "ann"})
    table.add("room", "c2", {"user": "bob"})
    table.add("room", "c1", {"user": "ann", "device": "phone"})  # an update, not a second entry
    assert table.get("room") == {"c1": {"user": "ann", "device": "phone"}, "c2": {"user": "bob"}}
    table.remove("room", "c1")
    table.remove("room", "c2")
    table.remove("room", "nobody")
    table.remove("elsewhere", "c1")
    assert table.get("room") == {} and len(table) == 0


def test_limits_are_checked():
    with pytest.raises(ValueError, match="history_size"):
        MemoryBroker(history_size=0)
    with pytest.raises(ValueError, match="history_ttl"):
        MemoryBroker(history_ttl=0)
    with pytest.raises(ValueError, match="idle_ttl"):
        MemoryBroker(history_ttl=10, idle_ttl=5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_idle_channels_are_forgotten_but_subscribed_ones_keep_their_epoch():
    clock = FakeClock()
    broker = MemoryBroker(history_size=5, history_ttl=10.0, clock=clock)
    await broker.start(lambda publication: None)
    await broker.subscribe("kept")
    kept = await broker.publish("kept", b"1", {})
    first_one_off = await broker.publish("one-off-0", b"x", {})
    for i in range(1, 100):
        await broker.publish(f"one-off-{i}", b"x", {})
    assert broker.channel_count == 101
    clock.now += 11.0
    later = await broker.publish("kept", b"2", {})
    assert broker.channel_count == 1  # the one-off channels are gone
    assert (later.epoch, later.offset) == (kept.epoch, 2)
    # A forgotten channel that comes back starts a new epoch: old positions in it must resync.
    back = await broker.history("one-off-0", 1, first_one_off.epoch, 10)
    assert back.recover_failed and back.epoch != first_one_off.epoch and back.latest_offset == 0


async def test_a_failing_callback_does_not_fail_the_publisher(caplog):
    broker = MemoryBroker()

    def broken(publication):
        raise RuntimeError("hub bug")

    await broker.start(broken)
    await broker.subscribe("c")
    publication = await broker.publish("c", b"1", {})
    assert publication.offset == 1
    assert "on_publication failed" in caplog.text


async def test_a_restarted_memory_broker_forces_resync():
    first, second = MemoryBroker(), MemoryBroker()
    for broker in (first, second):
        await broker.start(lambda publication: None)
    before = await first.publish("c", b"1", {})
    await second.publish("c", b"1", {})
    result = await second.history("c", 0, before.epoch, 10)
    assert result.recover_failed
