"""Prometheus durations ("30s", "1h30m", "7d"): the one parser the spec model and the component
data loaders (alerts/pack.py) share, below both so neither imports the other for it. Pure."""

from __future__ import annotations

import re

_DURATION_RE = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
_UNIT_SECONDS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration ("30s", "1h30m", "500ms"); ValueError when malformed."""
    match = _DURATION_RE.match(text) if isinstance(text, str) else None
    if not text or match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration: expected a Prometheus duration such as 30s, 5m, 1h30m, 7d")
    seconds = 0.0
    for unit, group in zip(("y", "w", "d", "h", "m", "s", "ms"), (2, 4, 6, 8, 10, 12, 14)):
        value = match.group(group)
        if value:
            seconds += int(value) * (0.001 if unit == "ms" else _UNIT_SECONDS[unit])
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds
