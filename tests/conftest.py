"""Shared test helpers: required binaries, free ports, processes stopped by their own pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from stack import tools

REPO = Path(__file__).resolve().parent.parent
# obsgen's tool lookup order (stack/tools.py: $OBSGEN_TOOLS/bin, the default install dir, PATH),
# made the PATH of the tests and of every process they start, so a test, `obsgen check` and
# `obsgen up` all run the same binary.
os.environ["PATH"] = os.pathsep.join(
    [*(str(d) for d in tools.tool_dirs()), os.environ.get("PATH", "")]
)
# Where scripts/install-tools.sh put its binaries ($OBSGEN_TOOLS/bin, else the default dir).
TOOLS_BIN = tools.tool_dirs()[0]
TOOLS_STATE = TOOLS_BIN.parent / "state"

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


BUILD_STEP = {"promtool": "prometheus"}


def build_failure(name: str) -> str | None:
    """Why scripts/install-tools.sh could not build ``name`` on this machine, if it tried and failed.

    The script records a failed build with its last log lines in $OBSGEN_TOOLS/state/<step>.failed
    (one step builds both prometheus and promtool).
    """
    failed = TOOLS_STATE / f"{BUILD_STEP.get(name, name)}.failed"
    if not failed.is_file():
        return None
    lines = [line.strip() for line in failed.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return " ".join(lines[-2:])[-400:] if lines else "no reason recorded"


def missing_tool(message: str) -> None:
    """Skip the test for want of a tool; under CI=true that is a failure (CI installs every tool)."""
    if IN_CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Path of ``name`` in obsgen's tool lookup order; skip the test when absent, but fail under CI=true."""
    path = tools.find_executable([name])
    if path:
        return path
    message = tools.not_found_message([name])
    failure = build_failure(name)
    if failure is not None:
        message += f" (scripts/install-tools.sh tried and failed: {failure})"
    missing_tool(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop ``proc`` (and its process group when it leads one) by its own pid."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@pytest.fixture
def processes():
    """Start processes with ``processes.start(argv, **popen_kwargs)``; all stop when the test ends."""

    class _Processes:
        def __init__(self) -> None:
            self.started: list[subprocess.Popen] = []

        def start(self, argv, **kwargs) -> subprocess.Popen:
            kwargs.setdefault("stdout", subprocess.DEVNULL)
            kwargs.setdefault("stderr", subprocess.DEVNULL)
            proc = subprocess.Popen(argv, **kwargs)
            self.started.append(proc)
            return proc

    registry = _Processes()
    try:
        yield registry
    finally:
        for proc in reversed(registry.started):
            stop_process(proc)


class RedisServer:
    """A throwaway ``redis-server`` on 127.0.0.1 (no persistence), which a test may kill and restart."""

    def __init__(self, processes, directory: Path) -> None:
        self._processes = processes
        self._directory = directory
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self._directory)]
        self.proc = self._processes.start(argv)
        wait_for_port(self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL, like a crash: no goodbye to clients, and (without persistence) all data gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(processes, tmp_path) -> RedisServer:
    """A running ``redis-server`` on a free port; skipped (failed under CI=true) when not installed."""
    return RedisServer(processes, tmp_path).start()
