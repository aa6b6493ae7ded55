"""Server-side dry run of a kubernetes bundle on a real kube-apiserver (I/O: processes, HTTP).

etcd and kube-apiserver (built from Go modules by scripts/install-tools.sh, tools/kube-apiserver)
start on 127.0.0.1, on free ports, with a scratch directory; the Prometheus Operator CRDs the
install script generated are applied; the bundle's Namespace is created; then every other object
is POSTed with ``?dryRun=All&fieldValidation=Strict``. The API server then decodes it strictly
(unknown and duplicate fields are errors), defaults it, runs the built-in types' validation, the
CRDs' OpenAPI schemas and CEL rules, and the default admission plugins, and stores nothing.
What it does not run: the Operator's own admission webhook (it also parses PromQL; promtool does
that here) and any controller. Both processes are stopped by their own pids.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OPERATOR_GROUP = "monitoring.coreos.com"
CRDS_SHARED = "prometheus-operator-crds"  # $OBSGEN_TOOLS/share/prometheus-operator-crds/v<version>/
READY_TIMEOUT = 180.0  # generous: a loaded machine (load 10 on 2 cores) starts it in tens of seconds
REQUEST_TIMEOUT = 120.0


class DryRunError(RuntimeError):
    """The API server could not be started or stopped answering: the check cannot say anything."""


class _CrdLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """The generated CRDs hold an unquoted `=` (an enum value), which YAML 1.1 tags as a `value`."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Response:
    status: int
    body: dict
    warnings: list[str]


class ApiServer:
    """etcd + kube-apiserver in ``workdir``, for one `obsgen check` or one test module.

    Use as a context manager: both processes stop (by pid) when it exits, pass or fail."""

    def __init__(self, kube_apiserver: str, etcd: str, workdir: Path) -> None:
        self.kube_apiserver, self.etcd, self.workdir = kube_apiserver, etcd, workdir
        self.token = secrets.token_hex(16)
        self.etcd_proc: subprocess.Popen | None = None
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._opener: urllib.request.OpenerDirector | None = None
        self._applied_crds: set[str] = set()
        self._namespaces: set[str] = set()
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}
        self._logs: list = []

    def _log(self, name: str):
        handle = open(self.workdir / name, "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(handle)
        return handle

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "ApiServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        client, peer = _free_port(), _free_port()
        self.etcd_proc = subprocess.Popen(
            [self.etcd, f"--data-dir={self.workdir / 'etcd'}", "--name=obsgen-dry-run",
             f"--listen-client-urls=http://127.0.0.1:{client}", f"--advertise-client-urls=http://127.0.0.1:{client}",
             f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-cluster=obsgen-dry-run=http://127.0.0.1:{peer}", "--log-level=warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log("etcd.log"))
        self._wait(lambda: self._etcd_healthy(client), self.etcd_proc, "etcd", self.workdir / "etcd.log")
        # The service-account flags are required even though nothing here runs a pod.
        key = self.workdir / "service-account.key"
        _write_rsa_key(key)
        (self.workdir / "tokens.csv").write_text(f"{self.token},obsgen,obsgen,system:masters\n", encoding="utf-8")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [self.kube_apiserver, f"--etcd-servers=http://127.0.0.1:{client}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
             # A loopback advertise address is refused by the endpoint reconciler; nothing needs it here.
             "--endpoint-reconciler-type=none",
             f"--cert-dir={self.workdir / 'certs'}", f"--token-auth-file={self.workdir / 'tokens.csv'}",
             "--authorization-mode=RBAC", f"--service-account-key-file={key}",
             f"--service-account-signing-key-file={key}", "--service-account-issuer=https://kubernetes.default.svc",
             "--service-cluster-ip-range=10.0.0.0/24"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log("kube-apiserver.log"))
        self._wait(self._ready, self.proc, "kube-apiserver", self.workdir / "kube-apiserver.log")

    def stop(self) -> None:
        _stop(self.proc)
        _stop(self.etcd_proc)
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def _wait(self, ready, proc: subprocess.Popen, name: str, log: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DryRunError(f"{name} exited with {proc.returncode} while starting:\n{_tail(log)}")
            if ready():
                return
            time.sleep(0.2)
        raise DryRunError(f"{name} was not ready within {READY_TIMEOUT:.0f}s:\n{_tail(log)}")

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def _ready(self) -> bool:
        cert = self.workdir / "certs" / "apiserver.crt"
        if not cert.is_file():
            return False
        try:
            return self.request("GET", "/readyz").status == 200
        except OSError:
            return False

    # -- HTTP ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> Response:
        if self._opener is None:
            # The server's own self-signed certificate is the trust anchor; no proxy for loopback.
            context = ssl.create_default_context(cafile=str(self.workdir / "certs" / "apiserver.crt"))
            self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                       urllib.request.HTTPSHandler(context=context))
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with self._opener.open(request, timeout=REQUEST_TIMEOUT) as response:
                return Response(response.status, _json(response.read()), response.headers.get_all("Warning") or [])
        except urllib.error.HTTPError as error:
            return Response(error.code, _json(error.read()), error.headers.get_all("Warning") or [])

    # -- what a check needs ----------------------------------------------------------------

    def apply_crds(self, crd_dir: Path, kinds: set[str]) -> None:
        """The Operator CRDs of ``kinds`` (PrometheusRule, ...), established before returning."""
        for kind in sorted(kinds - self._applied_crds):
            path = crd_dir / f"{OPERATOR_GROUP}_{kind.lower()}s.yaml"
            if not path.is_file():
                raise DryRunError(f"no CRD for {kind} in {crd_dir}")
            crd = yaml.load(path.read_text(encoding="utf-8"), Loader=_CrdLoader)
            response = self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            if response.status not in (201, 409):
                raise DryRunError(f"applying {path.name}: HTTP {response.status}: {response.body.get('message')}")
            name = crd["metadata"]["name"]
            self._wait(lambda: self._established(name), self.proc, f"CRD {name}",
                       self.workdir / "kube-apiserver.log")
            # Discovery lists the new kind a moment after the CRD is established.
            for version in crd["spec"]["versions"]:
                api_version = f"{crd['spec']['group']}/{version['name']}"
                self._wait(lambda: kind in self._discover(api_version), self.proc, f"discovery of {kind}",
                           self.workdir / "kube-apiserver.log")
            self._applied_crds.add(kind)

    def _established(self, name: str) -> bool:
        crd = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").body
        conditions = {c.get("type"): c.get("status") for c in (crd.get("status") or {}).get("conditions") or []}
        return conditions.get("Established") == "True"

    def _discover(self, api_version: str) -> dict[str, tuple[str, bool]]:
        """kind -> (resource name, namespaced), from the API server's discovery of ``api_version``."""
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        response = self.request("GET", path)
        found = {r["kind"]: (r["name"], r["namespaced"]) for r in response.body.get("resources", [])
                 if "/" not in r["name"]} if response.status == 200 else {}
        self._resources[api_version] = found
        return found

    def resources(self, api_version: str) -> dict[str, tuple[str, bool]]:
        return self._resources[api_version] if api_version in self._resources else self._discover(api_version)

    def ensure_namespace(self, namespace: dict) -> str | None:
        """Create the bundle's Namespace (objects in a missing namespace are refused); a problem or None."""
        name = (namespace.get("metadata") or {}).get("name")
        if name in self._namespaces:
            return None
        response = self.request("POST", "/api/v1/namespaces?fieldValidation=Strict", namespace)
        if response.status not in (201, 409):
            return f"Namespace {name}: HTTP {response.status}: {response.body.get('message')}"
        self._namespaces.add(name)
        return None

    def dry_run(self, obj: dict) -> str | None:
        """POST ``obj`` with dryRun=All and strict field validation: a problem or None."""
        api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
        metadata = obj.get("metadata") or {}
        resource = self.resources(api_version).get(kind)
        if resource is None:
            return f"{kind} {metadata.get('name')}: the API server serves no {kind} in {api_version}"
        name, namespaced = resource
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        path = f"{prefix}/namespaces/{metadata.get('namespace')}/{name}" if namespaced else f"{prefix}/{name}"
        response = self.request("POST", f"{path}?dryRun=All&fieldValidation=Strict", obj)
        if response.status not in (200, 201):
            return f"{kind} {metadata.get('name')}: HTTP {response.status}: {response.body.get('message')}"
        if response.warnings:
            return f"{kind} {metadata.get('name')}: warnings: {'; '.join(response.warnings)}"
        return None


def _json(raw: bytes) -> dict:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"message": raw.decode("utf-8", "replace")[:500]}
    return value if isinstance(value, dict) else {"message": str(value)}


def _write_rsa_key(path: Path) -> None:
    """An RSA key for the service-account flags, by the openssl CLI or Python's cryptography."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        subprocess.run(["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True, timeout=60)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    os.chmod(path, 0o600)


def dry_run_bundle(server: ApiServer, objects: dict[str, list[dict]], crd_dir: Path) -> tuple[int, list[str]]:
    """(objects dry-run, problems): every object of the bundle, Namespaces created first."""
    kinds = {str(o.get("kind")) for objs in objects.values() for o in objs
             if str(o.get("apiVersion", "")).startswith(OPERATOR_GROUP + "/")}
    server.apply_crds(crd_dir, kinds)
    problems: list[str] = []
    checked = 0
    for path, objs in objects.items():
        for obj in objs:
            if obj.get("kind") == "Namespace" and obj.get("apiVersion") == "v1":
                checked += 1
                problem = server.ensure_namespace(obj)
                if problem:
                    problems.append(f"{path}: {problem}")
    for path, objs in objects.items():
        for obj in objs:
            if obj.get("kind") == "Namespace" and obj.get("apiVersion") == "v1":
                continue
            checked += 1
            problem = server.dry_run(obj)
            if problem:
                problems.append(f"{path}: {problem}")
    return checked, problems
