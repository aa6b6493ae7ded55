"""The bare baseline: a `websockets` server that fans out with `websockets.broadcast` and nothing else.

    python bench/baseline_server.py [--port 8766] [--ping-interval 20]

It speaks the subset of instrumented_server's protocol the benchmark clients use, so the same
client drives both: a ``connected`` event after the upgrade, then ``subscribe``, ``publish`` and
``ping`` commands answered with ``ack`` events (``correlation_id`` = the command's
``message_id``), and ``message`` events ``{channel, offset, epoch, data}`` for publications.
Each publish is encoded once (``json.dumps``) and handed to ``websockets.broadcast``, which
writes it to every subscriber's transport right away: one system call per message per
connection, the cost the design note measures. No authentication (the ``Authorization`` header
is ignored), no limits, no history, no telemetry: the floor an instrumented server is compared to.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import signal
import time

import websockets
from websockets.asyncio.server import ServerConnection, serve

EPOCH = "baseline"
_ids = itertools.count(1)


def event(type_: str, payload: dict, correlation_id: str | None = None) -> str:
    metadata: dict = {"message_id": f"b-{next(_ids)}", "timestamp": int(time.time() * 1000)}
    if correlation_id is not None:
        metadata["correlation_id"] = correlation_id
    return json.dumps({"type": type_, "payload": payload, "metadata": metadata}, separators=(",", ":"))


class Baseline:
    def __init__(self) -> None:
        self.channels: dict[str, set[ServerConnection]] = {}
        self.offsets: dict[str, int] = {}

    async def handle(self, connection: ServerConnection) -> None:
        mine: set[str] = set()
        await connection.send(event("connected", {"client": str(id(connection))}))
        try:
            async for text in connection:
                try:
                    command = json.loads(text)
                    type_, payload = command["type"], command.get("payload") or {}
                    mid = (command.get("metadata") or {}).get("message_id")
                    channel = payload.get("channel")
                except (ValueError, TypeError, KeyError, AttributeError):
                    await connection.send(event("error", {"code": "malformed", "message": "bad command"}))
                    continue
                if type_ == "subscribe":
                    self.channels.setdefault(channel, set()).add(connection)
                    mine.add(channel)
                    await connection.send(event("ack", {"channel": channel, "epoch": EPOCH,
                                                        "offset": self.offsets.get(channel, 0)}, mid))
                elif type_ == "publish":
                    offset = self.offsets[channel] = self.offsets.get(channel, 0) + 1
                    message = event("message", {"channel": channel, "offset": offset, "epoch": EPOCH,
                                                "data": payload.get("data")})
                    websockets.broadcast(self.channels.get(channel, ()), message)
                    await connection.send(event("ack", {"channel": channel, "offset": offset, "epoch": EPOCH}, mid))
                elif type_ == "unsubscribe":
                    self.channels.get(channel, set()).discard(connection)
                    mine.discard(channel)
                    await connection.send(event("ack", {"channel": channel}, mid))
                else:  # ping, and anything else: acknowledged, nothing done
                    await connection.send(event("ack", {}, mid))
        except websockets.ConnectionClosed:
            pass
        finally:
            for channel in mine:
                self.channels.get(channel, set()).discard(connection)


async def run(host: str, port: int, ping_interval: float | None, ping_timeout: float | None) -> None:
    baseline = Baseline()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(baseline.handle, host, port, ping_interval=ping_interval, ping_timeout=ping_timeout) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"baseline listening on ws://{host}:{bound}/", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766, help="0: any free port (printed)")
    parser.add_argument("--ping-interval", type=float, default=20.0, help="seconds between heartbeats (0: off)")
    parser.add_argument("--ping-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        asyncio.run(run(args.host, args.port, args.ping_interval or None, args.ping_timeout or None))
    except OSError as exc:
        print(f"baseline_server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
