"""`obsgen up` / `obsgen down`: run a rendered local bundle on native binaries.

The bundle's ``local/processes.yaml`` (rendered by ``stack.renderers.processes``) says what to
start, in order, with which arguments and how to tell it is ready. This module is the I/O edge:
it finds binaries, starts processes with the bundle root as working directory, waits for
readiness, records their pids in ``.obsgen-up.json`` and stops exactly those processes again.

A component it cannot start because its binary is not installed (Loki, Jaeger or Grafana: the
spec's ``components.<name>.enabled`` switches) is left out of the stack, not merely not started:
`up` re-renders the bundle from the spec it holds (``local/spec.yaml``) with those switched off,
so Prometheus does not scrape them, the collector does not export to them and no alert fires for
them. Each run starts again from that spec, so a component installed later comes back.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stack.errors import SpecError
from stack.load import load_spec
from stack.render import render_bundle
from stack.renderers.processes import SPEC_PATH, processes
from stack.spec import OPTIONAL_BACKENDS
from stack.tools import find_executable, not_found_message
from stack.topology import Topology
from stack.write import BundleWriteError, check_drift, write_bundle

MANIFEST = "local/processes.yaml"
# What `obsgen up` leaves out (re-rendered with enabled: false) when its binary is not installed:
# the local-only backends, and the exporters any target may switch off. Process names use "-".
LEFT_OUT_WHEN_MISSING = (*OPTIONAL_BACKENDS, "node_exporter", "blackbox")
STATE_FILE = ".obsgen-up.json"
LOG_DIR = "logs"


class UpError(Exception):
    """A process could not be started or never became ready."""


@dataclass
class Started:
    name: str
    pid: int
    argv: list[str]
    listens: list[str]
    log: str


@dataclass
class UpReport:
    started: list[Started] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    left_out: list[str] = field(default_factory=list)  # skipped and rendered out of the bundle
    external: list[str] = field(default_factory=list)  # run by someone else where the bundle says


def find_binary(candidates: list[str]) -> str | None:
    if candidates == ["{python}"]:
        return sys.executable  # the server runs on the interpreter that runs obsgen
    return find_executable(candidates)


def load_manifest(bundle: Path) -> dict:
    path = bundle / MANIFEST
    if not path.is_file():
        raise UpError(f"{path} not found: render the bundle with `obsgen render --target local --out {bundle}`")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def materialise_secrets(bundle: Path, secrets: list[dict], readers: set[str]) -> None:
    """Write the secrets of the processes about to start to secrets/<name> (mode 0600).

    The values come from the files or environment variables the spec names (or are generated
    once, for the server's token key); they are written only here, at run time, never into the
    rendered bundle.
    """
    directory = bundle / "secrets"
    directory.mkdir(mode=0o700, exist_ok=True)
    for secret in secrets:
        if secret["for"] not in readers:
            continue
        target = directory / secret["name"]
        if secret.get("generate"):
            if target.exists():
                continue  # kept across runs: clients hold tokens signed with it
            value = base64.b64encode(os.urandom(32))
        elif "file" in secret:
            source = Path(secret["file"])
            if not source.is_file():
                raise UpError(f"secret {secret['name']!r}: file {source} does not exist")
            value = source.read_bytes()
        else:
            variable = secret["env"]
            if variable not in os.environ:
                raise UpError(f"secret {secret['name']!r}: environment variable {variable} is not set")
            value = os.environ[variable].encode()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(value)


def render_without_missing(bundle: Path, external: set[str] = frozenset()) -> list[tuple[str, str]]:
    """Re-render ``bundle`` from its ``local/spec.yaml`` without the optional components whose binary
    is not installed (and not declared ``external``); (name, reason) for each one left out.

    The bundle is rewritten only when a component is left out now or was left out by an earlier
    run (so a bundle nothing is missing from stays as rendered). A bundle without a stored spec
    (rendered by an older obsgen) is run as it is.
    """
    spec_file = bundle / SPEC_PATH
    if not spec_file.is_file():
        return []
    text = spec_file.read_text(encoding="utf-8")
    try:
        spec = load_spec(text, str(spec_file), base_dir=str(bundle))
        optional = [entry for entry in processes(spec, Topology(spec))["processes"]
                    if _component(entry["name"]) in LEFT_OUT_WHEN_MISSING]
        missing = [(entry["name"], f"not installed: {not_found_message(entry['binary'])}") for entry in optional
                   if entry["name"] not in external and find_binary(entry["binary"]) is None]
        listed = {entry["name"] for entry in load_manifest(bundle)["processes"]}
        left_out_before = any(entry["name"] not in listed for entry in optional)
        if not missing and not left_out_before:
            return []
        data = yaml.safe_load(text)
        for name, _ in missing:
            data.setdefault("components", {}).setdefault(_component(name), {})["enabled"] = False
        files = dict(render_bundle(load_spec(yaml.safe_dump(data, sort_keys=False), str(spec_file),
                                             base_dir=str(bundle))))
        files[SPEC_PATH] = text.encode("utf-8")  # the spec as rendered: the next run starts from it again
        if check_drift(files, bundle):
            write_bundle(files, bundle)
    except (SpecError, BundleWriteError) as exc:
        raise UpError(f"cannot re-render {bundle} without what is not installed: {exc}") from None
    return missing


def _component(process_name: str) -> str:
    return process_name.replace("-", "_")  # node-exporter runs components.node_exporter


def is_ready(check: dict) -> bool:
    if "http" in check:
        try:
            with urllib.request.urlopen(check["http"], timeout=1.0) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False
    host, _, port = check["tcp"].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def wait_ready(name: str, proc: subprocess.Popen, check: dict, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UpError(f"{name} exited with code {proc.returncode} before it was ready; see {log}")
        if is_ready(check):
            return
        time.sleep(0.2)
    raise UpError(f"{name} was not ready within {timeout:.0f}s ({check}); see {log}")


def up(bundle: Path, only: set[str] | None = None, out=sys.stdout, timeout: float = 60.0,
       external: set[str] = frozenset()) -> UpReport:
    """Start every installed process of the bundle, in order; stop them all if one fails.

    Optional components that are not installed are rendered out of the bundle first
    (``render_without_missing``); ``external`` names components someone else runs at the bundle's
    addresses: neither started nor left out.
    """
    bundle = bundle.resolve()
    if (bundle / STATE_FILE).exists():
        raise UpError(f"{bundle} already has a running stack ({STATE_FILE}); run `obsgen down {bundle}` first")
    load_manifest(bundle)  # a clear error for a directory that is no local bundle
    report = UpReport()
    for name, reason in render_without_missing(bundle, external):
        report.skipped.append((name, reason))
        report.left_out.append(name)
        print(f"  skipped  {name:<14} {reason}; left out of the stack (not started, scraped or exported to)", file=out)
    manifest = load_manifest(bundle)
    runnable = []
    for entry in manifest["processes"]:
        name = entry["name"]
        if only is not None and name not in only:
            continue
        if name in external:
            report.external.append(name)
            print(f"  external {name:<14} not started: runs outside obsgen up at {' '.join(entry.get('listens', []))}",
                  file=out)
            continue
        binary = find_binary(entry["binary"])
        if binary is None:
            reason = f"not installed: {not_found_message(entry['binary'])}"
            if entry.get("required", False):
                raise UpError(f"{name}: {reason}")
            report.skipped.append((name, reason))
            print(f"  skipped  {name:<14} {reason}", file=out)
            continue
        runnable.append((entry, binary))
    materialise_secrets(bundle, manifest.get("secrets", []), {e["reader"] for e, _ in runnable if "reader" in e})
    (bundle / LOG_DIR).mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        for entry, binary in runnable:
            name = entry["name"]
            for directory in entry.get("dirs", []):
                (bundle / directory).mkdir(parents=True, exist_ok=True)
            argv = [binary, *entry["args"]]
            log = bundle / LOG_DIR / f"{name}.log"
            env = {**os.environ, **entry.get("env", {})}
            with open(log, "ab") as log_handle:
                proc = subprocess.Popen(
                    argv, cwd=bundle, env=env, stdout=log_handle, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            procs.append(proc)
            started = Started(name, proc.pid, argv, entry.get("listens", []), str(log))
            report.started.append(started)
            _write_state(bundle, report)
            wait_ready(name, proc, entry["ready"], entry.get("timeout", timeout), log)
            print(f"  ready    {name:<14} {' '.join(started.listens)}  (pid {proc.pid})", file=out)
    except BaseException:
        down(bundle, out=out)
        raise
    return report


def _write_state(bundle: Path, report: UpReport) -> None:
    state = [
        {"name": s.name, "pid": s.pid, "argv": s.argv, "listens": s.listens, "log": s.log}
        for s in report.started
    ]
    (bundle / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def _same_process(pid: int, argv0: str) -> bool:
    """True when ``pid`` still runs the program we started (not a reused pid).

    Compares executables, not command lines: redis-server, for one, rewrites its process title.
    """
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(argv0)
    except OSError:
        return False


def down(bundle: Path, out=sys.stdout, timeout: float = 15.0) -> list[str]:
    """Stop the processes `up` started for this bundle (and nothing else), newest first."""
    bundle = bundle.resolve()
    state_path = bundle / STATE_FILE
    if not state_path.exists():
        return []
    stopped = []
    for entry in reversed(json.loads(state_path.read_text(encoding="utf-8"))):
        pid = entry["pid"]
        if not _same_process(pid, entry["argv"][0]):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(entry["name"])
        print(f"  stopped  {entry['name']}", file=out)
    state_path.unlink()
    return stopped


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child; otherwise just probe it.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False
