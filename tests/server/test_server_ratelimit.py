"""Token buckets with an explicit clock."""

from __future__ import annotations

import pytest

from instrumented_server.ratelimit import KeyedBuckets, Rate, TokenBucket


def test_rate_parsing():
    assert Rate.parse("50/200") == Rate(50, 200)
    assert Rate.parse("10") == Rate(10, 10)
    assert Rate.parse("0").unlimited
    assert str(Rate.parse("2.5/5")) == "2.5/5"
    for bad in ("x", "-1", "5/0", "5/a"):
        with pytest.raises(ValueError):
            Rate.parse(bad)


def test_bucket_allows_burst_then_refills():
    bucket = TokenBucket(Rate(10, 3), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert bucket.take(10.0) and bucket.take(10.0) and bucket.take(10.0) and not bucket.take(10.0)  # capped at burst


def test_unlimited_bucket():
    bucket = TokenBucket(Rate(0, 0), now=0.0)
    assert all(bucket.take(0.0) for _ in range(1000))


def test_keyed_buckets_are_per_key_and_bounded():
    buckets = KeyedBuckets(Rate(1, 1), spare=2)
    assert buckets.take("a", 0.0) and not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)
    for key in "cdefg":
        buckets.take(key, 0.0)
    assert len(buckets) <= 2  # idle keys beyond `spare` are forgotten


def test_held_keys_are_never_forgotten():
    buckets = KeyedBuckets(Rate(1, 1), spare=0)
    assert buckets.acquire("a") == 1
    assert buckets.acquire("a") == 2
    assert buckets.take("a", 0.0)
    for key in "bcdef":
        buckets.take(key, 0.0)
    assert not buckets.take("a", 0.0)  # still the same, spent bucket
    buckets.release("a")
    assert buckets.holders("a") == 1
    buckets.release("a")
    assert buckets.holders("a") == 0
    assert len(buckets) == 0
