"""Token buckets: per connection, and per client IP address shared by its connections.

Pure logic: the caller passes the current monotonic time, so tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` tokens refill continuously, up to ``burst``. A rate of 0 means unlimited."""

    per_second: float
    burst: float

    @property
    def unlimited(self) -> bool:
        return self.per_second <= 0

    @classmethod
    def parse(cls, text: str) -> "Rate":
        """``"50"`` (burst = rate) or ``"50/200"`` (rate 50 per second, burst 200); ``"0"`` is unlimited."""
        rate_text, _, burst_text = text.partition("/")
        try:
            per_second = float(rate_text)
            burst = float(burst_text) if burst_text else max(per_second, 1.0)
        except ValueError:
            raise ValueError(f"rate {text!r}: expected RATE or RATE/BURST, e.g. 50/200") from None
        if per_second < 0 or (per_second > 0 and burst < 1):
            raise ValueError(f"rate {text!r}: rate must be >= 0 and burst >= 1")
        return cls(per_second, burst)

    def __str__(self) -> str:
        return "0" if self.unlimited else f"{self.per_second:g}/{self.burst:g}"


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate.per_second
        self.burst = rate.burst
        self.tokens = rate.burst
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; False (and nothing spent) otherwise."""
        if self.rate <= 0:
            return True
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class KeyedBuckets:
    """One bucket per key (a client IP), kept while any holder uses it.

    Holders ``acquire`` a key when a connection opens and ``release`` it when it closes, so the
    table never grows beyond the addresses currently connected (plus ``spare`` recently idle
    ones, which keeps a reconnect storm from resetting its bucket).
    """

    def __init__(self, rate: Rate, spare: int = 1024) -> None:
        self.rate = rate
        self.spare = spare
        self._buckets: dict[str, TokenBucket] = {}
        self._holders: dict[str, int] = {}
        self._idle: dict[str, None] = {}  # insertion-ordered: oldest idle key first

    def bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, now)
            self._mark_idle(key)
        return bucket

    def take(self, key: str, now: float, cost: float = 1.0) -> bool:
        if self.rate.unlimited:
            return True
        return self.bucket(key, now).take(now, cost)

    def acquire(self, key: str) -> int:
        """Count a holder of ``key``; returns how many hold it now."""
        count = self._holders.get(key, 0) + 1
        self._holders[key] = count
        self._idle.pop(key, None)
        return count

    def release(self, key: str) -> None:
        count = self._holders.get(key, 0) - 1
        if count > 0:
            self._holders[key] = count
            return
        self._holders.pop(key, None)
        if key in self._buckets:
            self._mark_idle(key)

    def holders(self, key: str) -> int:
        return self._holders.get(key, 0)

    def _mark_idle(self, key: str) -> None:
        if self._holders.get(key):
            return
        self._idle[key] = None
        while len(self._idle) > self.spare:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            self._buckets.pop(oldest, None)

    def __len__(self) -> int:
        return len(self._buckets)
