"""blackbox/blackbox.yml: the probe modules blackbox_exporter runs against the WebSocket services.

Pure: ``render(spec, topology)`` builds the config as a dict. Two kinds of module:

- ``websocket_upgrade[_tls][_<path>]`` (TCP prober): sends an HTTP/1.1 WebSocket upgrade request
  and expects the status line ``HTTP/1.1 101 Switching Protocols``. The HTTP prober cannot check a
  101: Go's client hands the upgraded connection back as the body and the probe would wait on it
  until its timeout. Over TLS (wss://) the TCP prober also exports the certificate's expiry
  (probe_ssl_earliest_cert_expiry).
- ``http_ready`` (HTTP prober): GET of the service's ready path, 2xx expected.

The TCP prober writes each ``send`` followed by a single "\\n", so the request's last line is
written as "\\r" and the prober's "\\n" completes the CRLF that ends the headers (an HTTP server
such as websockets refuses a bare LF). No file when blackbox is turned off or nothing is probed.
"""

from __future__ import annotations

from stack.promtext import dump_yaml
from stack.renderers.wiring import READY_MODULE, probes, upgrade_module
from stack.spec import Spec
from stack.topology import Topology

PATH = "blackbox/blackbox.yml"
HEADER = "blackbox_exporter modules rendered by obsgen from the project spec; edit the spec, not this file."
# A fixed key is fine: the probe checks that the server upgrades, not the accept hash.
WEBSOCKET_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE_STATUS = r"^HTTP/1\.1 101 "


def upgrade_request(path: str) -> str:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: blackbox-probe",
        "User-Agent: obsgen-blackbox-probe",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {WEBSOCKET_KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    # The prober appends "\n" to what it sends: end with "\r" so the blank line is "\r\n".
    return "\r\n".join(lines) + "\r\n\r"


def upgrade_module_config(path: str, tls: bool, timeout: str) -> dict:
    tcp: dict = {
        "preferred_ip_protocol": "ip4",
        "query_response": [{"send": upgrade_request(path)}, {"expect": UPGRADE_STATUS}],
    }
    if tls:
        tcp["tls"] = True
        tcp["tls_config"] = {"insecure_skip_verify": False}
    return {"prober": "tcp", "timeout": timeout, "tcp": tcp}


def config(spec: Spec, topology: Topology) -> dict:
    timeout = spec.components.blackbox.timeout
    modules: dict[str, dict] = {}
    for service in spec.services:
        settings = service.probe
        name = upgrade_module(settings.path, settings.tls)
        modules.setdefault(name, upgrade_module_config(settings.path, settings.tls, timeout))
    modules[READY_MODULE] = {
        "prober": "http",
        "timeout": timeout,
        "http": {"method": "GET", "preferred_ip_protocol": "ip4", "valid_status_codes": [200, 204],
                 "follow_redirects": False},
    }
    used = {probe.module for probe in probes(spec, topology)}
    return {"modules": {name: module for name, module in sorted(modules.items()) if name in used}}


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    if topology.kubernetes or not probes(spec, topology):
        return {}
    return {PATH: dump_yaml(config(spec, topology), header=HEADER)}
