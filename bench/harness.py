"""What every benchmark script shares: processes, servers, the client pool, the publisher, tables.

- Servers (the bare baseline, instrumented_server in its variants, Centrifugo, otelcol,
  redis-server) run as separate processes on 127.0.0.1, on free ports, each stopped by its own pid
  when the run ends.
- Subscribers live in separate client processes, ``bench/wsclient.py`` (Python) or
  ``bench/goclient`` (Go, built into ``.cache/bench`` on first use) workers, one core each; the
  driver process only publishes. CPU is read per process from the OS (psutil), so the server's figure
  is the server's and the report can say whether a client process was saturated.
- Progress goes to stderr; the table, the figures and the machine they came from go to stdout last.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import mmap
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# This checkout's packages first (not whichever checkout `pip install -e` last pointed at), then bench/.
sys.path[:0] = [str(REPO), str(BENCH)]

import wsclient  # noqa: E402  (bench/ is not a package: scripts run as `python bench/x.py`)

CLIENT_BOUND = 90.0  # % of one core: above it a client process, not the server, may set the pace


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def which(name: str) -> str | None:
    """obsgen's own tool lookup ($OBSGEN_TOOLS/bin, the install script's cache, then PATH)."""
    from stack.tools import find_executable

    return find_executable([name])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- processes


class Process:
    """A child process with its output in a log file, stopped by its own pid."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name.replace(' ', '_').replace('/', '_')}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                      env={**os.environ, **(env or {})}, start_new_session=True)
        self.ps = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        """User + system CPU seconds so far."""
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.log_path.read_text(errors="replace"))
            if match:
                return match
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not print {pattern!r} within {timeout:g}s:\n{self.tail()}")

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {port} within {timeout:g}s:\n{self.tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        self._log.close()


class Workdir:
    """A temporary directory for configs, secrets and logs; processes started here are stopped on exit."""

    def __init__(self, keep: bool = False) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="obsgen-bench-"))
        self.keep = keep
        self.processes: list[Process] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, self.path, env)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self.processes:
            self.processes.remove(process)

    def __enter__(self) -> "Workdir":
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.keep:
            log(f"logs and configs kept in {self.path}")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


# ------------------------------------------------------------------------------------- servers


@dataclass
class Target:
    """A server under test, with the processes whose CPU belongs to it or beside it."""

    key: str  # a, b, c, d, e
    label: str
    process: Process
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    helpers: dict[str, Process] = field(default_factory=dict)  # otelcol, redis-server
    protocol: str = wsclient.OBSGEN  # or wsclient.CENTRIFUGO
    path: str = "/"  # the WebSocket endpoint
    token: str | None = None  # Centrifugo: the connection JWT, sent in the connect command


# The servers by key, for the tables.
LABELS = {"a": "a bare", "b": "b no-telemetry", "c": "c otelcol", "d": "d otelcol+redis", "e": "e centrifugo"}


def start_baseline(work: Workdir, ping_interval: float = 20.0) -> Target:
    process = work.start("baseline", [sys.executable, str(BENCH / "baseline_server.py"), "--port", "0",
                                      "--ping-interval", str(ping_interval), "--ping-timeout", "20"])
    port = int(process.wait_for_line(r"listening on ws://[^:]+:(\d+)/").group(1))
    return Target("a", "bare websockets.broadcast", process, port)


def jwt_secret_file(work: Workdir) -> Path:
    path = work.path / "jwt-secret"
    if not path.exists():
        path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        path.chmod(0o600)
    return path


def bearer(secret_file: Path) -> dict[str, str]:
    from instrumented_server.auth import Authenticator
    from instrumented_server.config import read_secret_file

    token = Authenticator(read_secret_file(str(secret_file))).mint("bench", ttl=6 * 3600)
    return {"Authorization": f"Bearer {token}"}


def start_otelcol(work: Workdir) -> tuple[Process, str]:
    """A collector that takes OTLP/HTTP spans and logs and drops them after the batch processor."""
    binary = which("otelcol")
    if binary is None:
        from stack.tools import not_found_message

        raise RuntimeError(not_found_message(["otelcol"]))
    import yaml

    port = free_port()
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{port}"}}}},
        "processors": {"batch": {}},
        "exporters": {"debug": {"verbosity": "basic"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["debug"]},
                "logs": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["debug"]},
            },
        },
    }
    path = work.path / "otelcol.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    process = work.start("otelcol", [binary, "--config", str(path)])
    process.wait_for_port(port)
    return process, f"http://127.0.0.1:{port}"


def start_redis(work: Workdir) -> tuple[Process, str]:
    binary = which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found on PATH (Debian package redis-server)")
    port = free_port()
    process = work.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(work.path)])
    process.wait_for_port(port)
    return process, f"redis://127.0.0.1:{port}/0"


def start_instrumented(work: Workdir, key: str, *, telemetry: bool = True, collector: bool = False,
                       redis: bool = False, ping_interval: float = 20.0, extra: Sequence[str] = (),
                       python: Sequence[str] = ()) -> Target:
    """instrumented_server: (b) --no-telemetry, (c) exporting to a collector, (d) the same on Redis.
    ``python`` replaces the interpreter command (e.g. ``python -m cProfile -o FILE``)."""
    secret = jwt_secret_file(work)
    helpers: dict[str, Process] = {}
    argv = [*(python or [sys.executable]), "-m", "instrumented_server", "--host", "127.0.0.1", "--port", "0",
            "--jwt-secret-file", str(secret), "--message-rate", "0", "--ping-interval", str(ping_interval),
            *extra]
    label = "instrumented_server"
    if not telemetry:
        argv.append("--no-telemetry")
        label += " --no-telemetry"
    if collector:
        helpers["otelcol"], endpoint = start_otelcol(work)
        argv += ["--otlp-endpoint", endpoint, "--service-name", "bench-server"]
        label += ", spans+logs to otelcol"
    if redis:
        helpers["redis"], url = start_redis(work)
        argv += ["--broker", "redis", "--redis-url", url]
        label += ", redis broker"
    process = work.start(f"server-{key}", argv)
    port = int(process.wait_for_line(r"listening on ws://[^:]+:(\d+)/").group(1))
    return Target(key, label, process, port, bearer(secret), helpers)


def centrifugo_config(port: int, hmac_secret: str, ping_interval: float) -> dict[str, Any]:
    """A Centrifugo v6 config set up like instrumented_server's defaults (see docs/performance.md).

    Connections need a JWT (HS256, per-run secret); no anonymous access anywhere. Channels without
    a namespace behave like instrumented_server's default namespace: any authenticated client may
    subscribe and publish, subscribers may read presence and history; history keeps 100
    publications for 300 s (so publications carry offsets, as ours do); no join/leave events. The
    other limits are Centrifugo's defaults, which equal ours: 1 MiB queued per client, 128
    channels per client, 64 KiB per message.
    """
    # Centrifugo wants the ping interval above the pong timeout (its defaults: 25 s and 8 s).
    pong_timeout = min(8.0, 0.8 * ping_interval)
    return {
        "usage_stats": {"disabled": True},
        "log": {"level": "warn"},
        "http_server": {"address": "127.0.0.1", "port": port},
        "http_api": {"key": secrets.token_urlsafe(24)},  # not used: publishing goes through clients
        "client": {
            "token": {"hmac_secret_key": hmac_secret},
            "ping_interval": f"{round(ping_interval * 1000)}ms",
            "pong_timeout": f"{round(pong_timeout * 1000)}ms",
        },
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                "allow_publish_for_client": True,
                "allow_presence_for_subscriber": True,
                "allow_history_for_subscriber": True,
                "presence": True,
                "history_size": 100,
                "history_ttl": "300s",
            },
        },
    }


def start_centrifugo(work: Workdir, ping_interval: float = 20.0) -> Target:
    """(e) Centrifugo, the peer, from the install script's build, with a generated config and secret."""
    import jwt
    import yaml

    binary = which("centrifugo")
    if binary is None:
        from stack.tools import not_found_message

        raise RuntimeError(not_found_message(["centrifugo"]))
    port = free_port()
    secret = secrets.token_urlsafe(32)
    path = work.path / "centrifugo.yaml"
    path.write_text(yaml.safe_dump(centrifugo_config(port, secret, ping_interval), sort_keys=True))
    path.chmod(0o600)  # it holds the secret (the work directory is private too)
    process = work.start("centrifugo", [binary, "--config", str(path)])
    process.wait_for_port(port)
    # Centrifugo only warns about a key it does not know (at startup, before it listens): a typo
    # would silently leave a default in place (usage stats sent, no history), so refuse it here.
    unknown = re.findall(r'"key":"([^"]+)"[^\n]*unknown key in configuration', process.log_path.read_text())
    if unknown:
        raise RuntimeError(f"centrifugo does not know these keys of {path}: {', '.join(unknown)}")
    version = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30).stdout.split()
    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 6 * 3600}, secret, algorithm="HS256")
    return Target("e", " ".join(version[:2]) or "centrifugo", process, port, protocol=wsclient.CENTRIFUGO,
                  path="/connection/websocket", token=token)


TARGETS = {
    "a": lambda work, **kw: start_baseline(work, **kw),
    "b": lambda work, **kw: start_instrumented(work, "b", telemetry=False, **kw),
    "c": lambda work, **kw: start_instrumented(work, "c", collector=True, **kw),
    "d": lambda work, **kw: start_instrumented(work, "d", collector=True, redis=True, **kw),
    "e": lambda work, **kw: start_centrifugo(work, **kw),
}


# ------------------------------------------------------------------------------------- clients


def go_client() -> str | None:
    """The Go receiving client (bench/goclient), built into .cache/bench on first use; None without Go."""
    go = shutil.which("go")
    source = BENCH / "goclient"
    if go is None or not source.is_dir():
        return None
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(source.glob("*")) if p.is_file())).hexdigest()
    binary = REPO / ".cache" / "bench" / f"wsclient-go-{digest[:12]}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        log(f"building the Go client: go build -o {os.path.relpath(binary, REPO)} ./bench/goclient")
        proc = subprocess.run([go, "build", "-o", str(binary), "."], cwd=source, capture_output=True, text=True,
                              env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"})
        if proc.returncode != 0:
            log(f"the Go client did not build, using the Python one: {proc.stderr.strip()[-300:]}")
            return None
    return str(binary)


def client_command(kind: str) -> tuple[list[str], str]:
    """The worker command for ``kind`` (go, python or auto) and the kind actually used."""
    if kind in ("go", "auto"):
        binary = go_client()
        if binary is not None:
            return [binary], "go"
        if kind == "go":
            raise RuntimeError("--client go: Go is not installed or bench/goclient does not build")
    return [sys.executable, str(BENCH / "wsclient.py")], "python"


def add_client_arguments(parser: Any, workers: int = 2, default: str = "python") -> None:
    parser.add_argument("--client", choices=("auto", "go", "python"), default=default,
                        help="receiving client: bench/goclient (Go, built on first use) or bench/wsclient.py; "
                             f"auto: Go when installed (default {default})")
    parser.add_argument("--workers", type=int, default=workers, help="client processes for the subscribers")


class ClientPool:
    """Client worker processes (one core each); connections are spread over them round-robin."""

    def __init__(self, work: Workdir, workers: int, kind: str = "auto") -> None:
        self.work = work
        self.command, self.kind = client_command(kind)
        self.count = max(1, workers)
        self.counter_path = work.path / f"counters-{id(self)}"
        self.counter_path.write_bytes(b"\0" * 8 * self.count)
        self._file = open(self.counter_path, "r+b")
        self.counters = mmap.mmap(self._file.fileno(), 0)
        self.procs: list[asyncio.subprocess.Process] = []
        self.ps: list[psutil.Process] = []

    async def start(self) -> "ClientPool":
        for slot in range(self.count):
            proc = await asyncio.create_subprocess_exec(
                *self.command, "--worker", str(slot), "--counters", str(self.counter_path),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
                env={**os.environ, "GOMAXPROCS": "1"})  # one core per worker, as a Python worker has
            self.procs.append(proc)
            self.ps.append(psutil.Process(proc.pid))
        return self

    async def _ask(self, proc: asyncio.subprocess.Process, request: dict[str, Any], timeout: float = 300) -> Any:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(request) + "\n").encode())
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"client worker {proc.pid} exited (code {proc.returncode})")
        return json.loads(line)

    async def ask_all(self, request: dict[str, Any], timeout: float = 300) -> list[Any]:
        return await asyncio.gather(*(self._ask(p, dict(request), timeout) for p in self.procs))

    async def open(self, target: Target, per_channel: dict[str, int], latency_every: int = 0,
                   concurrency: int = 64) -> dict[str, Any]:
        """``per_channel[name]`` subscribers on each channel, spread over the workers round-robin;
        every ``latency_every``-th connection of a worker reads timestamps (0: none).
        Returns how many opened, and why the others did not."""
        jobs: list[list[str]] = [[] for _ in self.procs]
        i = 0
        for channel, count in per_channel.items():
            for _ in range(count):
                jobs[i % self.count].append(channel)
                i += 1
        requests = []
        for proc, channels in zip(self.procs, jobs):
            if not channels:
                continue
            # One open per worker: ``channels`` lists the channel of each connection it opens.
            requests.append(self._ask(proc, {"cmd": "open", "host": "127.0.0.1", "port": target.port,
                                             "count": len(channels), "channels": channels, "headers": target.headers,
                                             "latency_every": latency_every, "concurrency": concurrency,
                                             "protocol": target.protocol, "path": target.path,
                                             "token": target.token}))
        replies = await asyncio.gather(*requests)
        opened = sum(r["opened"] for r in replies)
        failed: dict[str, int] = {}
        for reply in replies:
            for reason, n in reply["failed"].items():
                failed[reason] = failed.get(reason, 0) + n
        return {"opened": opened, "failed": failed}

    def delivered(self) -> int:
        return sum(struct.unpack_from("q", self.counters, 8 * i)[0] for i in range(self.count))

    def cpu(self) -> list[float]:
        out = []
        for ps in self.ps:
            times = ps.cpu_times()
            out.append(times.user + times.system)
        return out

    async def stats(self) -> dict[str, Any]:
        replies = await self.ask_all({"cmd": "stats"})
        histogram = wsclient.Histogram()
        closes: dict[str, int] = {}
        for reply in replies:
            histogram.merge(reply["latency"], reply["max"])
            for code, n in reply["closes"].items():
                closes[code] = closes.get(code, 0) + n
        return {"delivered": sum(r["delivered"] for r in replies), "open": sum(r["open"] for r in replies),
                "histogram": histogram, "closes": closes}

    async def reset(self) -> None:
        await self.ask_all({"cmd": "reset"})

    async def close_connections(self) -> None:
        await self.ask_all({"cmd": "close"}, timeout=60)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.write(b'{"cmd": "quit"}\n')
                    await proc.stdin.drain()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        self.counters.close()
        self._file.close()

    async def __aenter__(self) -> "ClientPool":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Publisher:
    """Publishing connections in the driver process. A burst is split over them round-robin and
    written to each in one write, back to back, so the server reads it all in one loop iteration.

    Centrifugo is published to the same way: a client-side ``publish`` command on an authenticated
    WebSocket connection, answered once the broker (its memory engine, with history) has it, as
    instrumented_server's ``publish`` is (docs/performance.md says why not its server API)."""

    def __init__(self, pad: int = 100, connections: int = 1) -> None:
        self.pad = "x" * pad
        self.count = max(1, connections)
        self.sent = 0
        self.acks = 0
        self.errors: dict[str, int] = {}
        self.connections: list[wsclient.RawConnection] = []
        self.centrifugo = False
        self._ack_event = asyncio.Event()
        self._ack_target = 0

    def _on_control(self, payload: bytes) -> None:
        head = payload[:20]
        if b'"ack"' in head:
            self.acks += 1
        elif b'"error"' in head:
            self.acks += 1
            code = json.loads(payload).get("payload", {}).get("code", "?")
            self.errors[code] = self.errors.get(code, 0) + 1
        else:
            return
        if self.acks >= self._ack_target:
            self._ack_event.set()

    def _on_centrifugo_control(self, payload: bytes) -> None:
        """Centrifugo batches replies into one frame, one a line: ``{"id":N,"publish":{}}`` or an error."""
        for line in payload.split(b"\n"):
            head = line[:32]
            if b'"publish"' in head:
                self.acks += 1
            elif b'"error"' in head:
                self.acks += 1
                code = str(json.loads(line).get("error", {}).get("code", "?"))
                self.errors[code] = self.errors.get(code, 0) + 1
        if self.acks >= self._ack_target:
            self._ack_event.set()

    async def connect(self, target: Target) -> "Publisher":
        self.centrifugo = target.protocol == wsclient.CENTRIFUGO
        for _ in range(self.count):
            if self.centrifugo:
                commander = wsclient.CentrifugoCommander()
                connection = await wsclient.connect("127.0.0.1", target.port, target.path, target.headers,
                                                    on_control=commander.on_control, centrifugo=True)
                await commander.request(connection, "connect", {"token": target.token or ""})
                connection.on_control = self._on_centrifugo_control
            else:
                connection = await wsclient.connect("127.0.0.1", target.port, target.path, target.headers,
                                                    on_control=self._on_control)
            self.connections.append(connection)
        return self

    def burst(self, channel: str, count: int) -> None:
        if self.centrifugo:  # command ids after the connect command's
            frames = [wsclient.centrifugo_publish_frame(channel, self.sent + i, self.pad, self.sent + i + 2)
                      for i in range(count)]
        else:
            frames = [wsclient.publish_frame(channel, self.sent + i, self.pad, f"p{self.sent + i}")
                      for i in range(count)]
        for index, connection in enumerate(self.connections):
            mine = frames[index::self.count]
            if mine:
                connection.send_raw(b"".join(mine))
        self.sent += count

    async def wait_acks(self, timeout: float = 30.0) -> None:
        """Until every publish sent so far is answered."""
        self._ack_target = self.sent
        while self.acks < self.sent:
            self._ack_event.clear()
            await asyncio.wait_for(self._ack_event.wait(), timeout)

    async def close(self) -> None:
        await asyncio.gather(*(connection.aclose() for connection in self.connections))


async def wait_delivered(pool: ClientPool, expected: int, timeout: float) -> int:
    """Poll the shared counters until ``expected`` deliveries (or the timeout); the count reached."""
    deadline = time.monotonic() + timeout
    delivered = pool.delivered()
    while delivered < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
        delivered = pool.delivered()
    return delivered


# ------------------------------------------------------------------------------------- measuring


class CpuWindow:
    """CPU seconds of named processes between ``start()`` and ``stop()``, with the wall time."""

    def __init__(self, processes: dict[str, Any], pool: ClientPool | None = None) -> None:
        self.processes = processes  # name -> Process (or psutil.Process)
        self.pool = pool

    def _read(self) -> tuple[float, dict[str, float], list[float], float]:
        cpu = {name: _cpu(p) for name, p in self.processes.items()}
        me = psutil.Process().cpu_times()
        return time.monotonic(), cpu, self.pool.cpu() if self.pool else [], me.user + me.system

    def start(self) -> "CpuWindow":
        self._t0, self._cpu0, self._clients0, self._me0 = self._read()
        return self

    def stop(self) -> "CpuWindow":
        t1, cpu1, clients1, me1 = self._read()
        self.wall = t1 - self._t0
        self.cpu = {name: cpu1[name] - self._cpu0[name] for name in cpu1}
        self.clients = [b - a for a, b in zip(self._clients0, clients1)]
        self.driver = me1 - self._me0
        return self

    def percent(self, seconds: float) -> float:
        return 100.0 * seconds / self.wall if self.wall > 0 else 0.0

    @property
    def client_max_percent(self) -> float:
        return max([self.percent(c) for c in self.clients] + [self.percent(self.driver)])

    @property
    def client_bound(self) -> bool:
        return self.client_max_percent > CLIENT_BOUND

    @property
    def machine_percent(self) -> float:
        """Every process of the run together, in % of all cores."""
        total = sum(self.cpu.values()) + sum(self.clients) + self.driver
        return self.percent(total) / (os.cpu_count() or 1)


def _cpu(process: Any) -> float:
    if isinstance(process, Process):
        return process.cpu()
    times = process.cpu_times()
    return times.user + times.system


# ------------------------------------------------------------------------------------- reporting


def machine() -> dict[str, str]:
    import websockets

    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print()
    print(title)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)) + " |")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.,]+(e[-+]?\d+)?[%x]?|-", text))


def print_machine(started: dict[str, str], command: str) -> None:
    print()
    print(f"command: {command}")
    print(f"machine: {started['nproc']} cores, {started['cpu']}; Python {started['python']}, "
          f"websockets {started['websockets']}")
    print(f"loadavg (1/5/15 min): {started['loadavg']} at start, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
