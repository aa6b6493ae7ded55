"""Telemetry for `websockets` services: Prometheus metrics, OpenTelemetry spans, structured logs.

Importing this package is cheap: the SDKs load only when ``instrument()`` is called, so the
generator can read ``exporter.catalog`` without them.
"""

from exporter.hooks import NoopTelemetry, Span

__all__ = ["NoopTelemetry", "Span", "instrument"]


def __getattr__(name: str):
    if name == "instrument":
        from exporter.instrument import instrument

        return instrument
    raise AttributeError(name)
