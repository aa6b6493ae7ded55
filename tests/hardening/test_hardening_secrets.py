"""Secrets: no secret value ever reaches a rendered file, a log line, an error message or the output
of `obsgen render`, `render --check` or `obsgen check`; an inline secret (or one disguised as a
file path or a variable name) is refused with exit 2 without being echoed; the places where values
do land (`obsgen up`'s secrets/) are private; Grafana needs its admin password from a secret and
lets nobody in anonymously; published ports bind to 127.0.0.1 unless the spec says otherwise.

Every value below carries one marker, unique to the run, so a leak anywhere is found by a grep.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from stack.cli import main
from stack.up import materialise_secrets
from tests.conftest import free_port, require_binary, wait_for_port

REPO = Path(__file__).resolve().parents[2]
SEEDS = sorted((REPO / "tests" / "stack" / "specs").glob("*.yaml"))
MARKER = f"LEAK{uuid.uuid4().hex}"  # one marker per run: a leak cannot be an accident of the text

# Every secret-bearing field of the spec, each with its own value; files next to the spec, and
# environment variables set for the test.
FILE_SECRETS = {"slack-url": f"https://hooks.slack.com/services/T0/B0/{MARKER}slack",
                "smtp-password": f"{MARKER}smtp", "grafana-password": f"{MARKER}grafana"}
ENV_SECRETS = {"OBSGEN_TEST_PAGERDUTY_KEY": f"{MARKER}pagerduty", "OBSGEN_TEST_HOOK_URL": f"https://h.example/{MARKER}hook"}
SPEC = """\
version: 1
project: secrets-test
services:
  - name: ws-server
    builtin: true
    port: 8765
    metrics: {port: 8765}
alerts: {pack: false}
components:
  grafana:
    admin_password: {file: secrets/grafana-password}
notifications:
  receivers:
    - {type: slack, name: team-slack, channel: "#alerts", api_url: {file: secrets/slack-url}}
    - {type: pagerduty, name: pager, routing_key: {env: OBSGEN_TEST_PAGERDUTY_KEY}}
    - {type: webhook, name: hook, url_secret: {env: OBSGEN_TEST_HOOK_URL}}
    - type: email
      name: mail
      to: oncall@example.com
      from: am@example.com
      smarthost: smtp.example.com:587
      auth_username: am@example.com
      auth_password: {file: secrets/smtp-password}
"""


def run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue() + err.getvalue()


def files_under(root: Path, skip_top: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip_top}


NUMBER = "31415926535897932384"


def leaks(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        return MARKER.encode() in text or NUMBER.encode() in text
    return MARKER in text or NUMBER in text


@pytest.fixture
def spec_dir(tmp_path, monkeypatch) -> Path:
    secrets = tmp_path / "spec" / "secrets"
    secrets.mkdir(parents=True)
    for name, value in FILE_SECRETS.items():
        (secrets / name).write_text(value + "\n")
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "spec" / "obsgen.yaml").write_text(SPEC)
    return tmp_path / "spec"


# ---------------------------------------------------------------------------------------
# Nothing leaks
# ---------------------------------------------------------------------------------------


def test_secret_values_reach_no_file_log_line_or_output(spec_dir, tmp_path, caplog):
    require_binary("promtool"), require_binary("amtool")
    caplog.set_level(logging.DEBUG)
    spec = str(spec_dir / "obsgen.yaml")
    outputs: dict[str, str] = {}
    bundles = {"compose": tmp_path / "compose", "local": tmp_path / "local"}
    for target, out_dir in bundles.items():
        code, outputs[f"render {target}"] = run("render", spec, "--target", target, "--out", str(out_dir))
        assert code == 0, outputs[f"render {target}"]
        assert run("render", spec, "--target", target, "--out", str(out_dir), "--check")[0] == 0
        code, outputs[f"check {target}"] = run("check", str(out_dir))
        assert code == 0, outputs[f"check {target}"]  # every validator installed accepts it, secrets included

    # What `obsgen up` does before it starts anything: the values land in secrets/, owner-only.
    local = bundles["local"]
    manifest = yaml.safe_load((local / "local" / "processes.yaml").read_text())
    materialise_secrets(local, manifest["secrets"], {"alertmanager", "grafana", "server"})
    staged = files_under(local / "secrets")
    assert sorted(staged) == sorted(s["name"] for s in manifest["secrets"])
    assert all(leaks(value) for name, value in staged.items() if name != "server_jwt_secret")
    assert stat.S_IMODE((local / "secrets").stat().st_mode) == 0o700
    assert {stat.S_IMODE((local / "secrets" / name).stat().st_mode) for name in staged} == {0o600}

    # A re-render and a drift report over a bundle that now holds them, and a drifted bundle.
    (local / "alertmanager" / "alertmanager.yml").write_text("tampered\n")
    code, outputs["check drifted"] = run("render", spec, "--target", "local", "--out", str(local), "--check")
    assert code == 1 and "alertmanager/alertmanager.yml" in outputs["check drifted"]
    code, outputs["render over staged"] = run("render", spec, "--target", "local", "--out", str(local))
    assert code == 0 and files_under(local / "secrets") == staged  # carried over, not rendered

    for name, text in outputs.items():
        assert not leaks(text), f"a secret value in the output of {name}"
    assert not [r.getMessage() for r in caplog.records if leaks(r.getMessage())]
    for target, out_dir in bundles.items():
        rendered = files_under(out_dir, skip_top=("secrets",))
        assert [path for path, data in rendered.items() if leaks(data)] == [], f"{target} bundle"
        # The references are there instead, as files the tools read at run time.
        alertmanager = (out_dir / "alertmanager" / "alertmanager.yml").read_text()
        for key in ("api_url_file", "routing_key_file", "url_file", "auth_password_file"):
            assert key in alertmanager, key


@pytest.mark.parametrize("field, value, path", [
    ("api_url", f'"{MARKER}"', "api_url"),
    ("api_url", f'"https://hooks.slack.com/services/T0/B0/{MARKER}"', "api_url"),
    ("api_url", f"[{MARKER}]", "api_url"),
    ("api_url", f"{{value: {MARKER}}}", "api_url"),
    ("api_url", f'{{file: "https://hooks.slack.com/services/T0/B0/{MARKER}"}}', "api_url.file"),  # a URL as "file"
    ("api_url", f'{{env: "xoxb-{MARKER}-1"}}', "api_url.env"),  # the value where the variable's name goes
    ("routing_key", "31415926535897932384", "routing_key"),  # a number: inline too (grepped as NUMBER below)
    ("url", f'"https://ops:{MARKER}@hooks.example.com/x"', "url"),
    ("url", f'"https://hooks.example.com/x?token={MARKER}"', "url"),
    ("admin_password", f'"{MARKER}"', "components.grafana.admin_password"),
    ("auth_password", f'"{MARKER}"', "auth_password"),
])
def test_inline_or_disguised_secrets_are_refused_without_being_echoed(tmp_path, field, value, path):
    receivers = {
        "api_url": f'{{type: slack, name: s, channel: "#a", api_url: {value}}}',
        "routing_key": f"{{type: pagerduty, name: p, routing_key: {value}}}",
        "url": f"{{type: webhook, name: w, url: {value}}}",
        "auth_password": ("{type: email, name: m, to: a@example.com, from: b@example.com, "
                          f"smarthost: 'smtp.example.com:25', auth_password: {value}}}"),
        "admin_password": "{type: webhook, name: w, url: 'http://127.0.0.1:5001/'}",
    }
    text = f"version: 1\nproject: p\nservices: [{{name: api}}]\nnotifications:\n  receivers:\n    - {receivers[field]}\n"
    if field == "admin_password":
        text += f"components:\n  grafana:\n    admin_password: {value}\n"
    spec = tmp_path / "obsgen.yaml"
    spec.write_text(text)
    out_dir = tmp_path / "out"
    for argv in (["render", str(spec), "--out", str(out_dir)], ["render", str(spec), "--out", str(out_dir), "--check"]):
        code, output = run(*argv)
        assert code == 2, output
        assert f"{spec}:" in output and path in output, output
        assert not leaks(output), output
    assert not out_dir.exists()
    if field != "api_url" or "file:" not in value:
        return
    # The same through stdin and the module entry point: no traceback either.
    proc = subprocess.run([sys.executable, "-m", "stack", "render", "-", "--out", str(out_dir)], input=text,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and not leaks(proc.stdout + proc.stderr) and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------
# Grafana, published ports, listen addresses
# ---------------------------------------------------------------------------------------


def compose_of(spec_text: str, tmp_path: Path, name: str) -> dict:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(spec_text)
    out_dir = tmp_path / f"{name}-bundle"
    code, output = run("render", str(spec), "--target", "compose", "--out", str(out_dir))
    assert code == 0, output
    return yaml.safe_load((out_dir / "docker-compose.yml").read_text())


@pytest.mark.parametrize("seed", [path.name for path in SEEDS] + ["default"])
def test_grafana_login_from_a_secret_no_anonymous_access_and_ports_on_loopback(seed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (REPO / "stack" / "data" / "default.yaml").read_text() if seed == "default" else \
        (REPO / "tests" / "stack" / "specs" / seed).read_text()
    (tmp_path / "secrets").symlink_to(REPO / "tests" / "stack" / "specs" / "secrets")
    document = compose_of(text, tmp_path, "spec")
    grafana = document["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana  # never a password in the environment
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    published = {name: service.get("ports", []) for name, service in document["services"].items()}
    assert any(published.values())
    for name, ports in published.items():
        assert all(str(port).startswith("127.0.0.1:") for port in ports), (name, ports)
    assert all(service.get("network_mode") in (None, "none") or service["network_mode"].startswith("service:")
               for service in document["services"].values())

    # Exposing them is the spec's explicit choice, and then it is the only change.
    exposed = compose_of(text + "publish: {bind: 0.0.0.0}\n" if "publish:" not in text else
                         text.replace("bind: 127.0.0.1", "bind: 0.0.0.0"), tmp_path, "exposed")
    for name, service in exposed["services"].items():
        assert [str(p).replace("0.0.0.0:", "127.0.0.1:", 1) for p in service.get("ports", [])] == published[name]


@pytest.mark.parametrize("seed", [path.name for path in SEEDS])
def test_the_local_target_listens_on_loopback_only(seed, tmp_path):
    out_dir = tmp_path / "bundle"
    code, output = run("render", str(REPO / "tests" / "stack" / "specs" / seed), "--target", "local",
                       "--out", str(out_dir))
    assert code == 0, output
    # local/spec.yaml is the spec as written, kept for `obsgen up` to re-render from: an image
    # service's container command in it (socketio-chat.yaml binds 0.0.0.0 inside its container) is
    # not something the local target starts.
    wildcard = [path for path, data in files_under(out_dir).items()
                if path != "local/spec.yaml" and (b"0.0.0.0" in data or b"[::]" in data)]
    assert wildcard == []
    grafana = next(p for p in yaml.safe_load((out_dir / "local" / "processes.yaml").read_text())["processes"]
                   if p["name"] == "grafana")
    assert grafana["env"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["env"]["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("secrets/")


# ---------------------------------------------------------------------------------------
# The server: its token key and client tokens stay out of its logs, close reasons and /metrics
# ---------------------------------------------------------------------------------------


def test_the_servers_key_and_tokens_stay_out_of_its_output(tmp_path, processes):
    short = tmp_path / "short-key"
    short.write_text(MARKER[:20])
    proc = subprocess.run([sys.executable, "-m", "instrumented_server", "--jwt-secret-file", str(short)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "shorter than 32 bytes" in proc.stderr and not leaks(proc.stderr + proc.stdout)

    import asyncio
    import urllib.request

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from instrumented_server.auth import Authenticator

    key = tmp_path / "key"
    key.write_text(MARKER + "-server-key")
    port = free_port()
    server = processes.start([sys.executable, "-m", "instrumented_server", "--port", str(port), "--jwt-secret-file",
                              str(key), "--log-level", "debug", "--drain-timeout", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_port(port, proc=server)
    forged = Authenticator(f"{MARKER}-another-key-that-is-long-enough").mint("mallory")
    garbage = f"{MARKER}.{MARKER}.{MARKER}"
    good = Authenticator(MARKER + "-server-key").mint("alice", ttl=60)

    async def attempts() -> list[str]:
        reasons = []
        for token in (forged, garbage, good):
            async with connect(f"ws://127.0.0.1:{port}/", additional_headers={"Authorization": f"Bearer {token}"},
                               open_timeout=5) as connection:
                try:
                    reasons.append(await asyncio.wait_for(connection.recv(), 5))
                    await connection.send(json.dumps({"type": "subscribe", "payload": {"channel": "$x"},
                                                      "metadata": {"message_id": "m1"}}))
                    reasons.append(await asyncio.wait_for(connection.recv(), 5))
                except ConnectionClosed:
                    pass
                reasons.append(f"{connection.close_code} {connection.close_reason}")
        return reasons

    replies = asyncio.run(attempts())
    assert replies[0].startswith("4002") and replies[1].startswith("4002")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    server.terminate()
    log = server.communicate(timeout=30)[0]
    assert log.strip() and "websocket_connections_total" in metrics  # there was output to search
    assert [r for r in replies if leaks(r)] == []
    assert not leaks(metrics) and not leaks(log)
