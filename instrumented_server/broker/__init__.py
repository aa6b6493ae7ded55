"""Brokers: where channel publications get their offsets, history and cross-process fan-out."""

from instrumented_server.broker.base import Broker, HistoryResult, Publication

__all__ = ["Broker", "HistoryResult", "Publication"]
