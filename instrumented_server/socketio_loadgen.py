"""``python -m instrumented_server.socketio_loadgen``: traffic, and faults on purpose, against the Socket.IO chat.

The Socket.IO mode of the load generator (``instrumented_server.loadgen`` speaks this project's
WebSocket protocol; this one drives ``instrumented_server.socketio_chat`` with python-socketio's
AsyncClient). ``--clients`` connections to ``/chat`` join ``--rooms`` rooms round-robin; for
``--duration`` seconds they ``say`` ``--rate`` messages per second in total, each carrying W3C trace
context in its data (so the server's spans join the client's trace) and its send time in its text.
Faults, ``--fault NAME[=PER_SECOND]``: ``bad-say`` (a say without text: a handler error),
``no-auth`` (a connect without ``auth.user``: refused), ``drop`` (a client's WebSocket closed
without a goodbye: a ``transport close``, code 1006; the client reconnects and rejoins).

It prints what was said (acknowledged), delivered against expected, the say→delivery latency, and
what each fault got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import socketio

from instrumented_server import loadgen
from instrumented_server.loadgen import LatencyHistogram

FAULTS = {
    "bad-say": "say without text (the server's handler raises: websocket_errors_total{reason=internal})",
    "no-auth": "connect to /chat without auth.user (refused: websocket_connections_total{status=auth_missing})",
    "drop": "close a client's WebSocket without a goodbye (transport close, code 1006); it reconnects",
}
NAMESPACE = "/chat"


@dataclass
class SocketIOLoad:
    url: str = "http://127.0.0.1:8780"
    clients: int = 20
    rooms: int = 4
    rate: float = 20.0
    duration: float = 10.0
    message_size: int = 100
    settle: float = 2.0
    faults: dict[str, float] = field(default_factory=dict)


@dataclass
class Results:
    said: int = 0
    expected: int = 0
    delivered: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    faults: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        q = {f"p{int(p * 100)}_ms": _ms(self.latency.quantile(p)) for p in (0.5, 0.95, 0.99)}
        return {"said": self.said, "expected": self.expected, "delivered": self.delivered,
                "missing": max(0, self.expected - self.delivered), "latency": q, "faults": dict(self.faults)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def traceparent() -> str:
    return f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-01"


class Run:
    def __init__(self, config: SocketIOLoad) -> None:
        self.config = config
        self.results = Results()
        self.members: Counter[str] = Counter()  # room -> clients in it
        self.clients: list[tuple[socketio.AsyncClient, str]] = []
        self._tasks: set[asyncio.Task] = set()

    def room(self, index: int) -> str:
        return f"load-{index % self.config.rooms}"

    async def connect(self, index: int) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.2, reconnection_delay_max=1)
        room = self.room(index)

        def on_message(data: dict) -> None:
            try:
                sent_at = float(data["text"].split(" ", 1)[0])
            except (KeyError, ValueError, AttributeError):
                return
            self.results.delivered += 1
            self.results.latency.add(max(0.0, time.time() - sent_at))

        joined = asyncio.Event()

        async def join() -> None:
            await client.call("join", {"room": room}, namespace=NAMESPACE, timeout=30)
            joined.set()

        def on_connect() -> None:  # also after a reconnect: python-socketio has no state recovery, rooms are gone
            task = asyncio.get_running_loop().create_task(join())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        client.on("chat_message", on_message, namespace=NAMESPACE)
        client.on("connect", on_connect, namespace=NAMESPACE)
        await client.connect(self.config.url, namespaces=[NAMESPACE], auth={"user": f"load-{index}"},
                             transports=["websocket"], wait_timeout=30)
        await asyncio.wait_for(joined.wait(), 30)
        return client

    async def start(self) -> None:
        for index in range(self.config.clients):
            client = await self.connect(index)
            self.clients.append((client, self.room(index)))
            self.members[self.room(index)] += 1

    async def say(self, client: socketio.AsyncClient, room: str) -> None:
        padding = "x" * self.config.message_size
        try:
            await client.call("say", {"room": room, "text": f"{time.time():.6f} {padding}", "traceparent": traceparent()},
                              namespace=NAMESPACE, timeout=10)
        except Exception:  # a dropped client may miss its ack: not said, not expected
            return
        self.results.said += 1
        self.results.expected += self.members[room]

    async def publish(self) -> None:
        if self.config.rate <= 0 or not self.clients:
            return
        interval = 1.0 / self.config.rate
        deadline = time.monotonic() + self.config.duration
        pending: set[asyncio.Task] = set()
        next_at = time.monotonic()
        while next_at < deadline:
            client, room = random.choice(self.clients)
            task = asyncio.create_task(self.say(client, room))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*pending)

    async def fault(self, name: str, rate: float) -> None:
        deadline = time.monotonic() + self.config.duration
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0 / rate)
            try:
                self.results.faults[f"{name}: {await getattr(self, 'fault_' + name.replace('-', '_'))()}"] += 1
            except Exception as exc:
                self.results.faults[f"{name}: {type(exc).__name__}"] += 1

    async def fault_bad_say(self) -> str:
        client, room = random.choice(self.clients)
        await client.emit("say", {"room": room}, namespace=NAMESPACE)
        return "sent"

    async def fault_no_auth(self) -> str:
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(self.config.url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=10)
            return "accepted"
        except socketio.exceptions.ConnectionError:
            return "refused"
        finally:
            await client.disconnect()

    async def fault_drop(self) -> str:
        client, _ = random.choice(self.clients)
        ws = getattr(client.eio, "ws", None)
        if ws is None:
            return "not connected"
        await ws.close()
        return "dropped"

    async def run(self) -> Results:
        await self.start()
        try:
            faults = [self.fault(name, rate) for name, rate in self.config.faults.items()]
            await asyncio.gather(self.publish(), *faults)
            deadline = time.monotonic() + self.config.settle
            while self.results.delivered < self.results.expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await asyncio.gather(*(client.disconnect() for client, _ in self.clients), return_exceptions=True)
        return self.results


def summary(results: Results) -> str:
    d = results.to_dict()
    lines = [f"said {d['said']}, delivered {d['delivered']} of {d['expected']} expected (missing {d['missing']})",
             "say→delivery latency ms: " + ", ".join(f"{k[:-3]} {v}" for k, v in d["latency"].items())]
    lines += [f"fault {k}: {v}" for k, v in sorted(d["faults"].items())]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = SocketIOLoad()
    parser = argparse.ArgumentParser(prog="python -m instrumented_server.socketio_loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("OBSGEN_SOCKETIO_URL", d.url), help=f"chat server URL (default {d.url})")
    parser.add_argument("--clients", type=int, default=d.clients, help=f"Socket.IO clients (default {d.clients})")
    parser.add_argument("--rooms", type=int, default=d.rooms, help=f"rooms the clients join round-robin (default {d.rooms})")
    parser.add_argument("--rate", type=float, default=d.rate, help=f"says per second in total (default {d.rate:g})")
    parser.add_argument("--duration", type=float, default=d.duration, help=f"seconds of saying (default {d.duration:g})")
    parser.add_argument("--message-size", type=int, default=d.message_size, help="padding characters per message")
    parser.add_argument("--settle", type=float, default=d.settle, help="seconds to wait for deliveries after the last say")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME[=PER_SECOND]",
                        help="inject a fault: " + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--fail-on-loss", action="store_true", help="exit 1 if any expected delivery is missing")
    return parser


def parse_faults(specs: Sequence[str]) -> dict[str, float]:
    return loadgen.parse_faults(specs, tuple(FAULTS))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        faults = parse_faults(args.fault)
        if args.clients < 1 or args.rooms < 1:
            raise ValueError("--clients and --rooms must be at least 1")
    except ValueError as exc:
        print(f"socketio_loadgen: {exc}", file=sys.stderr)
        return 2
    config = SocketIOLoad(url=args.url, clients=args.clients, rooms=args.rooms, rate=args.rate, duration=args.duration,
                          message_size=args.message_size, settle=args.settle, faults=faults)
    try:
        results = asyncio.run(Run(config).run())
    except (OSError, socketio.exceptions.ConnectionError) as exc:
        print(f"socketio_loadgen: cannot reach {config.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(results.to_dict(), indent=2, sort_keys=True) if args.json else summary(results))
    return 1 if args.fail_on_loss and results.expected > results.delivered else 0


if __name__ == "__main__":
    sys.exit(main())
