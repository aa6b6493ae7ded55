"""Telemetry for `websockets` and python-socketio services: Prometheus metrics, OpenTelemetry spans, structured logs.

Importing this package is cheap: the SDKs load only when ``instrument()`` (or
``instrument_server()``) is called, so the generator can read ``exporter.catalog`` without them.
"""

from exporter.hooks import NoopTelemetry, Span

__all__ = ["NoopTelemetry", "Span", "broadcast", "instrument", "instrument_server", "instrument_socketio"]

_LAZY = {
    "instrument": ("exporter.instrument", "instrument"),
    "instrument_server": ("exporter.server", "instrument_server"),
    "broadcast": ("exporter.server", "broadcast"),
    "instrument_socketio": ("exporter.socketio", "instrument_socketio"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(name)
