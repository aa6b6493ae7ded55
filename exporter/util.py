"""Small helpers shared by the signal modules: rate-limited warnings and timed calls."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable


class RateLimitedLog:
    """Log a recurring failure at most once per ``interval`` seconds (a down backend fails every batch)."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._next = 0.0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self._logger.warning(message, *args)


def run_in_daemon(fn: Callable[[], Any], name: str) -> threading.Event:
    """Start ``fn`` in a daemon thread; the returned event is set when it has finished.

    SDK shutdowns wait on exporters that may be stuck on a dead backend; the caller's
    deadline matters more than their completion, and a daemon thread cannot hold up exit.
    """
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception:  # a failing shutdown must not raise into the service
            logging.getLogger("exporter").warning("%s failed during shutdown", name, exc_info=True)
        finally:
            done.set()

    threading.Thread(target=run, name=f"exporter-{name}", daemon=True).start()
    return done


def call_with_timeout(fn: Callable[[], Any], timeout: float, name: str) -> bool:
    """Run ``fn`` in a daemon thread and wait at most ``timeout`` seconds; True if it finished."""
    return run_in_daemon(fn, name).wait(max(0.0, timeout))
