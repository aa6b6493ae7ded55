"""Brokers: where channel publications get their offsets, history and cross-process fan-out."""

from instrumented_server.broker.base import (
    LOCAL_ONLY_OFFSET,
    Broker,
    BrokerUnavailable,
    HistoryResult,
    Publication,
)

__all__ = ["LOCAL_ONLY_OFFSET", "Broker", "BrokerUnavailable", "HistoryResult", "Publication"]
