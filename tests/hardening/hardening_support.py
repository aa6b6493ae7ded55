"""Helpers for the hardening tests: server processes on 127.0.0.1, raw WebSocket frames over bare
sockets, a well-behaved client that measures publish->deliver latency, /metrics reading, RSS sampling.

Servers run as real processes (``python -m instrumented_server``) so their memory can be measured
on its own and they can be killed; each is stopped by its own pid (``tests.conftest.stop_process``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from websockets.frames import Frame, Opcode

from instrumented_server.auth import Authenticator
from tests.conftest import free_port, stop_process, wait_for_port

REPO = Path(__file__).resolve().parents[2]
SECRET = "hardening-secret-" + "h" * 32
AUTH = Authenticator(SECRET)


def token(user: str = "alice", ttl: float = 3600, **claims: Any) -> str:
    return AUTH.mint(user, ttl=ttl, **claims)


# ---------------------------------------------------------------------------------------
# Server processes
# ---------------------------------------------------------------------------------------


# A Python process importing the server on a loaded 2-core machine can take many seconds to listen.
START_TIMEOUT = 60.0


class ServerProcess:
    """``python -m instrumented_server`` on a free 127.0.0.1 port, stopped by its own pid."""

    def __init__(self, directory: Path, *flags: str, port: int | None = None,
                 env: dict[str, str] | None = None, capture: bool = False) -> None:
        self.secret_file = directory / "jwt-secret"
        self.secret_file.write_text(SECRET)
        self.port = port or free_port()
        self.flags = flags
        self.env = {**os.environ, **(env or {})}
        self.capture = capture
        self.proc: subprocess.Popen | None = None
        self.output: str = ""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> "ServerProcess":
        argv = [sys.executable, "-m", "instrumented_server", "--port", str(self.port),
                "--jwt-secret-file", str(self.secret_file), "--drain-timeout", "2", *self.flags]
        out = subprocess.PIPE if self.capture else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if self.capture else subprocess.DEVNULL,
                                     text=True, cwd=REPO, env=self.env)
        wait_for_port(self.port, timeout=START_TIMEOUT, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            if self.capture and self.proc.stdout is not None:
                self.output += self.proc.stdout.read()
                self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL: a crash, no drain, no close frames."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    @property
    def rss(self) -> int:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.port)


def read_metrics(port: int) -> dict[str, float]:
    """Series -> value from /metrics, e.g. ``websocket_disconnections_total{code="1009"}``."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread: before, peak, last."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append((time.monotonic(), self.process.memory_info().rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------
# Raw frames over bare sockets (for what a polite client library refuses to send)
# ---------------------------------------------------------------------------------------


def upgrade_request(bearer: str | None = None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    return (f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}{extra}\r\n").encode()


def frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True)


class RawConnection:
    """An upgraded WebSocket over asyncio streams: writes any bytes, reads server frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, bearer: str | None = None, receive_buffer: int | None = None) -> "RawConnection":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)  # reads ahead at most 128 KiB: a non-reader stays one
        writer.write(upgrade_request(bearer if bearer is not None else token()))
        await writer.drain()
        status = await reader.readline()
        if b" 101 " not in status:
            raise ConnectionError(f"upgrade refused: {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        return cls(reader, writer)

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; raises IncompleteReadError at EOF."""
        head = await self.reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return head[0] & 0x0F, await self.reader.readexactly(length)

    async def close_code(self, timeout: float) -> int | None:
        """Read until the server's close frame (its code) or EOF (None), within ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    opcode, payload = await self.read_frame()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return None
                if opcode == Opcode.CLOSE:
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.transport.abort()


async def eof_within(reader: asyncio.StreamReader, timeout: float) -> float:
    """Seconds until the server closes the TCP connection (reading and discarding whatever comes)."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while await reader.read(65536):
            pass
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------
# A well-behaved client pair: publish at a steady rate, measure publish->deliver latency
# ---------------------------------------------------------------------------------------


@dataclass
class LatencyProbe:
    """One publisher and one subscriber on ``channel``: every publish carries its send time."""

    url: str
    channel: str = "probe"
    rate: float = 50.0
    latencies: list[float] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)  # offsets acknowledged to the publisher
    delivered: list[int] = field(default_factory=list)  # offsets seen by the subscriber

    async def run(self, seconds: float) -> None:
        from instrumented_server.client import Client

        def on_event(event: dict) -> None:
            if event["type"] == "message" and event["payload"]["channel"] == self.channel:
                self.delivered.append(event["payload"]["offset"])
                self.latencies.append(time.monotonic() - event["payload"]["data"]["t"])

        async with Client(self.url, token("probe-sub"), on_event=on_event) as subscriber, \
                Client(self.url, token("probe-pub"), request_timeout=30) as publisher:
            await subscriber.subscribe(self.channel)
            deadline = time.monotonic() + seconds
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            while time.monotonic() < deadline:
                ack = await publisher.publish(self.channel, {"t": time.monotonic()})
                self.acked.append(ack["offset"])
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            end = time.monotonic() + 30  # every acked publication delivered, loaded machine or not
            while len(self.delivered) < len(self.acked) and time.monotonic() < end:
                await asyncio.sleep(0.02)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        if not ordered:
            return {"count": 0}

        def quantile(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {"count": len(ordered), "p50_ms": quantile(0.5) * 1000, "p99_ms": quantile(0.99) * 1000,
                "max_ms": ordered[-1] * 1000, "mean_ms": statistics.fmean(ordered) * 1000}


def json_command(type_: str, payload: dict[str, Any], message_id: str | None = None) -> str:
    metadata = {"message_id": message_id} if message_id else {}
    return json.dumps({"type": type_, "payload": payload, "metadata": metadata})


# ---------------------------------------------------------------------------------------
# Hostile clients, run in a process of their own (python -m tests.hardening.hardening_support)
# so that their CPU is not charged to the well-behaved client measuring latency
# ---------------------------------------------------------------------------------------

# name -> (what it does, what it must get: close codes (None: the TCP connection dropped with no
# close frame), "eof" when the server drops a connection before any WebSocket exists, or "pongs")
ATTACKS = {
    "half-open": ("TCP connect, never send the upgrade", "eof"),
    "half-upgrade": ("send half the upgrade request, then nothing", "eof"),
    "slowloris": ("trickle the upgrade request one byte every 0.3 s", "eof"),
    "malformed": ("invalid JSON, wrong types, unknown and event types, as fast as possible", (1008,)),
    "oversized-message": ("a text message above --max-message-size", (4005,)),
    "oversized-frame": ("a frame header announcing more than --max-frame-size", (1009,)),
    "fragmented-flood": ("a text message in 512-byte fragments that never ends", (1009,)),
    "binary": ("a binary frame", (1003,)),
    "invalid-utf8": ("a text frame that is not UTF-8", (1007,)),
    # The close frame waits behind the pongs it never reads; after --close-timeout the TCP
    # connection is dropped, which discards it: a reader that never reads may only see EOF.
    "ping-flood-no-read": ("pings as fast as possible, never reading the pongs", (4008, None)),
    "ping-flood": ("pings as fast as possible, reading the pongs", "pongs"),
}
MALFORMED = [b"{not json", b"[]", b'"text"', b"null", b'{"type": 1}', b'{"type": "ping", "metadata": []}',
             b'{"type": "nope", "payload": {}}', b'{"type": "message", "payload": {}}',
             b'{"type": "subscribe", "payload": {"channel": 5}}', b'{"type": "publish", "payload": []}']


async def _timed_eof(port: int, prelude: bytes, trickle: bool, deadline: float) -> float | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        if trickle:
            for byte in upgrade_request(token())[:-2]:  # never the final blank line
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    async with asyncio.timeout(0.3):
                        if not await reader.read(65536):
                            return time.monotonic() - started
                except TimeoutError:
                    continue
        elif prelude:
            writer.write(prelude)
            await writer.drain()
        await eof_within(reader, max(0.1, deadline - time.monotonic()))
        return time.monotonic() - started
    except ConnectionError:  # a reset (the server aborted) is a drop too
        return time.monotonic() - started
    except TimeoutError:
        return None
    finally:
        writer.transport.abort()


async def _repeat(port: int, name: str, until: float, outcomes: dict[str, list]) -> None:
    """Connect and offend again and again until ``until``; record each close code (or error)."""
    while time.monotonic() < until:
        try:
            outcomes[name].append(await _offend_once(port, name))
        except Exception as exc:  # recorded, and judged by the test
            outcomes[name].append(f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(0.02)  # about 400 hostile connections a second over all kinds, not a pure SYN flood


async def _offend_once(port: int, name: str, max_message: int = 4096, max_frame: int = 16384) -> Any:
    receive_buffer = 4096 if name == "ping-flood-no-read" else None
    connection = await RawConnection.open(port, receive_buffer=receive_buffer)
    started = time.monotonic()
    try:
        if name == "malformed":
            for index in range(40):
                connection.send(frame(Opcode.TEXT, MALFORMED[index % len(MALFORMED)]))
            await connection.writer.drain()
        elif name == "oversized-message":
            connection.send(frame(Opcode.TEXT, b'"' + b"x" * (max_message + 10) + b'"'))
        elif name == "oversized-frame":
            with contextlib.suppress(ConnectionError):
                connection.send(frame(Opcode.TEXT, b"x" * (max_frame * 4)))
                await connection.writer.drain()
        elif name == "fragmented-flood":
            connection.send(frame(Opcode.TEXT, b"[", fin=False))
            with contextlib.suppress(ConnectionError):
                for _ in range(2 * max_frame // 512):
                    connection.send(frame(Opcode.CONT, b"1," * 256, fin=False))
                    await connection.writer.drain()
        elif name == "binary":
            connection.send(frame(Opcode.BINARY, b'{"type": "ping"}'))
        elif name == "invalid-utf8":
            connection.send(frame(Opcode.TEXT, b'{"type": "ping", "x": "\xff\xfe"}'))
        elif name == "ping-flood-no-read":
            ping = frame(Opcode.PING, b"p" * 125) * 250
            with contextlib.suppress(ConnectionError):
                for _ in range(400):  # up to 100,000 pings; the server cuts us off long before
                    connection.send(ping)
                    await connection.writer.drain()
        elif name == "ping-flood":
            for _ in range(50):
                connection.send(frame(Opcode.PING, b"p" * 16) * 20)
                await connection.writer.drain()
                pongs = 0
                while pongs < 20:
                    opcode, _ = await connection.read_frame()
                    pongs += opcode == Opcode.PONG
            return "pongs"
        flooded = time.monotonic()
        code = await connection.close_code(timeout=20)
        return [code, round(flooded - started, 3), round(time.monotonic() - flooded, 3)]
    finally:
        connection.close()


async def attack(port: int, seconds: float, open_timeout: float) -> dict[str, list]:
    outcomes: dict[str, list] = {name: [] for name in ATTACKS}
    until = time.monotonic() + seconds
    deadline = time.monotonic() + seconds + open_timeout + 5

    async def eofs(name: str, count: int, prelude: bytes = b"", trickle: bool = False) -> None:
        results = await asyncio.gather(*(_timed_eof(port, prelude, trickle, deadline) for _ in range(count)))
        outcomes[name].extend(results)

    half = upgrade_request(token())[:60]
    await asyncio.gather(
        eofs("half-open", 100), eofs("half-upgrade", 50, prelude=half), eofs("slowloris", 20, trickle=True),
        *(_repeat(port, name, until, outcomes) for name in ATTACKS if name not in ("half-open", "half-upgrade", "slowloris")),
    )
    return outcomes


if __name__ == "__main__":  # python -m tests.hardening.hardening_support attack PORT SECONDS OPEN_TIMEOUT
    _, command, port_text, seconds_text, open_timeout_text = sys.argv
    assert command == "attack"
    print(json.dumps(asyncio.run(attack(int(port_text), float(seconds_text), float(open_timeout_text)))))
