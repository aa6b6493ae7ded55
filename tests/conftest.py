"""Shared test helpers: required binaries, free ports, processes stopped by their own pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Tools built by scripts/install-tools.sh land here; put them first on PATH for every test.
TOOLS_BIN = Path(os.environ.get("OBSGEN_TOOLS", REPO / ".tools")) / "bin"
if TOOLS_BIN.is_dir():
    os.environ["PATH"] = f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str) -> str:
    """Path of ``name`` on PATH; skip the test when absent, but fail under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found on PATH (install it with scripts/install-tools.sh)"
    if IN_CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


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
