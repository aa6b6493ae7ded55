"""``python -m instrumented_server``: run the pub/sub server until SIGTERM or SIGINT, then drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any, Sequence

from exporter.hooks import NoopTelemetry
from instrumented_server.broker.base import Broker
from instrumented_server.config import ConfigError, ServerConfig, parse_args

log = logging.getLogger("instrumented_server")


def make_broker(config: ServerConfig) -> Broker:
    if config.broker == "redis":
        from instrumented_server.broker.redis import RedisBroker

        return RedisBroker(url=config.redis_url, history_size=config.history_size, history_ttl=config.history_ttl)
    from instrumented_server.broker.memory import MemoryBroker

    return MemoryBroker(history_size=config.history_size, history_ttl=config.history_ttl)


def make_telemetry(config: ServerConfig) -> Any:
    """exporter.instrument(...) when telemetry is on; imported only then, so --no-telemetry loads no SDK."""
    if not config.telemetry:
        return NoopTelemetry(logging.getLogger("instrumented_server"))
    from exporter.instrument import instrument

    # Argument > OTEL_SERVICE_NAME > this server's own name (exporter's default is the SDK's generic one).
    service_name = config.service_name or os.environ.get("OTEL_SERVICE_NAME") or "instrumented-server"
    return instrument(
        service_name,
        otlp_endpoint=config.otlp_endpoint,
        sampler_ratio=config.trace_sample_ratio,
        logs=config.logs,
        loki_url=config.loki_url,
        logger="instrumented_server",
        log_level=config.log_level.upper(),
    )


async def run(config: ServerConfig) -> None:
    from instrumented_server.server import PubSubServer

    telemetry = make_telemetry(config)
    server = PubSubServer(config, make_broker(config), telemetry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        print(f"instrumented_server listening on ws://{config.host}:{server.port}/ "
              f"(metrics on http://{config.host}:{server.port}/metrics)", flush=True)
        await stop.wait()
        log.info("draining: closing connections with 1001")
        await server.shutdown()
    finally:
        telemetry.shutdown(5.0)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"instrumented_server: {exc}", file=sys.stderr)
        return 2
    if not config.telemetry:
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if config.log_level != "debug":
        # websockets logs every connection at INFO: noise at thousands of connections.
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        asyncio.run(run(config))
    except ValueError as exc:  # a telemetry argument refused by exporter.instrument
        print(f"instrumented_server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"instrumented_server: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
