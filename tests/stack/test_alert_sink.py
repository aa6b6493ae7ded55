"""The alert sink (instrumented_server/alert_sink.py): its record of a notification by value, the
real process on 127.0.0.1 fed good and bad requests, and the real Alertmanager delivering to it
through a bundle rendered from a spec whose webhook names the sink."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from instrumented_server.alert_sink import MAX_BODY_BYTES, NotANotification, summarize
from stack.render import render_bundle
from stack.spec import Spec
from stack.write import write_bundle
from tests.conftest import REPO, free_port, require_binary, stop_process

# What Alertmanager 0.31 posts (webhook payload version 4), trimmed to the fields that matter.
NOTIFICATION = {
    "version": "4",
    "groupKey": '{}/{severity="critical"}:{alertname="WebSocketHighErrorRate"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "oncall",
    "groupLabels": {"alertname": "WebSocketHighErrorRate"},
    "commonLabels": {"alertname": "WebSocketHighErrorRate", "severity": "critical", "service": "ws"},
    "commonAnnotations": {"summary": "A WebSocket service fails to handle many of the messages it receives."},
    "externalURL": "http://alertmanager:9093",
    "alerts": [{
        "status": "firing",
        "labels": {"alertname": "WebSocketHighErrorRate", "severity": "critical", "service": "ws"},
        "annotations": {"summary": "A WebSocket service fails to handle many of the messages it receives.",
                        "runbook_url": "http://localhost:3000/public/runbooks/WebSocketHighErrorRate.md"},
        "startsAt": "2026-12-06T07:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "a1b2c3",
    }],
}


# ---------------------------------------------------------------------------------------
# The record, by value
# ---------------------------------------------------------------------------------------


def test_a_notification_becomes_one_record_with_what_the_on_call_reads():
    record = summarize(NOTIFICATION, "/alerts/oncall")
    assert record == {
        "event": "notification",
        "path": "/alerts/oncall",
        "receiver": "oncall",
        "status": "firing",
        "alertname": "WebSocketHighErrorRate",
        "severity": "critical",
        "summary": "A WebSocket service fails to handle many of the messages it receives.",
        "firing": 1,
        "resolved": 0,
        "alerts": [{
            "status": "firing", "alertname": "WebSocketHighErrorRate", "severity": "critical", "service": "ws",
            "summary": "A WebSocket service fails to handle many of the messages it receives.",
            "starts_at": "2026-12-06T07:00:00Z",
            "runbook_url": "http://localhost:3000/public/runbooks/WebSocketHighErrorRate.md",
        }],
    }


def test_a_mixed_group_lists_its_names_severities_and_summaries():
    alerts = [
        {"status": "firing", "labels": {"alertname": "B", "severity": "warning"}, "annotations": {"summary": "b."}},
        {"status": "resolved", "labels": {"alertname": "A", "severity": "critical"}, "annotations": {"summary": "a."}},
    ]
    record = summarize({"status": "firing", "receiver": "team", "alerts": alerts, "truncatedAlerts": 3}, "/x")
    assert (record["alertname"], record["severity"], record["summary"]) == ("A,B", "critical,warning", "a. | b.")
    assert (record["firing"], record["resolved"], record["truncated_alerts"]) == (1, 1, 3)


@pytest.mark.parametrize("payload, message", [
    ([], "expected a JSON object, got list"),
    ("text", "expected a JSON object, got str"),
    ({"status": "firing"}, "non-empty list under 'alerts'"),
    ({"alerts": []}, "non-empty list under 'alerts'"),
    ({"alerts": "x"}, "non-empty list under 'alerts'"),
    ({"alerts": [1]}, "every item of 'alerts' must be an object"),
])
def test_what_is_not_a_notification_is_refused(payload, message):
    with pytest.raises(NotANotification, match=message):
        summarize(payload, "/")


def test_fields_of_the_wrong_type_are_left_out_not_fatal():
    record = summarize({"status": 3, "alerts": [{"labels": "x", "annotations": None, "status": ["firing"]}]}, "/")
    assert record["alerts"] == [{}] and "status" not in record and record["firing"] == 0


# ---------------------------------------------------------------------------------------
# How a spec names the sink, on each target (by value)
# ---------------------------------------------------------------------------------------


def sink_spec(target: str, **notifications) -> Spec:
    receivers = [{"type": "webhook", "name": "oncall", "url": "http://alert-sink:5001/alerts/oncall"},
                 {"type": "webhook", "name": "other", "url": "http://hooks.example.com:8080/x"}]
    return Spec.model_validate({"version": 1, "project": "demo", "target": target, "services": [{"name": "api"}],
                                "notifications": {"receivers": receivers, **notifications}})


@pytest.mark.parametrize("target, url", [
    ("compose", "http://alert-sink:5001/alerts/oncall"),  # the sink's service name on the stack's network
    ("local", "http://127.0.0.1:5001/alerts/oncall"),     # the process `obsgen up` starts
])
def test_a_webhook_naming_the_sink_reaches_it_on_either_target(target, url):
    from stack.renderers import alertmanager
    from stack.topology import Topology

    spec = sink_spec(target)
    config = yaml.safe_load(alertmanager.render(spec, Topology(spec))["alertmanager/alertmanager.yml"])
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert urls == {"oncall": url, "other": "http://hooks.example.com:8080/x"}


def test_obsgen_up_starts_the_sink_first_when_a_receiver_names_it():
    from stack.renderers import processes
    from stack.topology import Topology

    spec = sink_spec("local")
    entries = processes.processes(spec, Topology(spec))["processes"]
    assert entries[0] == {
        "name": "alert-sink",
        "binary": ["{python}"],
        "args": ["-m", "instrumented_server.alert_sink", "--host", "127.0.0.1", "--port", "5001"],
        "ready": {"http": "http://127.0.0.1:5001/healthz"},
        "listens": ["http://127.0.0.1:5001"],
    }
    unused = spec.model_copy(update={"notifications": sink_spec("local").notifications.model_copy(
        update={"receivers": sink_spec("local").notifications.receivers[1:]})})
    assert "alert-sink" not in [e["name"] for e in processes.processes(unused, Topology(unused))["processes"]]


# ---------------------------------------------------------------------------------------
# The real process on 127.0.0.1
# ---------------------------------------------------------------------------------------


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``condition`` until it returns something truthy; generous deadlines for a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, data = error.code, error.read()
    return status, json.loads(data) if data.strip() else {}


def raw_request(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Bytes in, whatever the server answers before it closes (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and not half_close:
                    break
        except TimeoutError:
            pass
    return b"".join(chunks)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def sink(tmp_path, processes):
    """The sink as `obsgen up` and compose start it, on a free port; stdout and stderr in files."""
    port = free_port()
    out, err = tmp_path / "sink.out", tmp_path / "sink.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = processes.start([sys.executable, "-m", "instrumented_server.alert_sink", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=REPO, stdout=stdout, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: get(f"{base}/healthz")[0] == 200, 30, "the sink's /healthz", proc)
    return proc, port, base, out, err


def test_the_sink_logs_a_notification_as_one_json_line_and_answers_200(sink):
    proc, _port, base, out, _err = sink
    assert get(f"{base}/healthz") == (200, b'{"status": "ok"}\n')
    status, body = post(f"{base}/alerts/oncall", json.dumps(NOTIFICATION).encode())
    assert (status, body) == (200, {"status": "logged"})
    records = wait_until(lambda: [r for r in lines(out) if r["event"] == "notification"], 10, "the logged line")
    assert len(records) == 1
    record = records[0]
    assert (record["path"], record["receiver"], record["status"], record["alertname"], record["severity"]) == (
        "/alerts/oncall", "oncall", "firing", "WebSocketHighErrorRate", "critical")
    assert record["summary"].startswith("A WebSocket service fails")
    assert datetime.fromisoformat(record["time"]).tzinfo is not None
    assert lines(out)[0]["event"] == "listening"  # the first line says where it listens


def test_the_sink_refuses_bad_requests_with_a_status_and_keeps_serving(sink):
    proc, port, base, out, err = sink
    assert post(f"{base}/alerts", b"{not json")[0] == 400
    assert post(f"{base}/alerts", b"\xff\xfe\x00garbage")[0] == 400
    assert post(f"{base}/alerts", b"[1, 2]") == (400, {"error": "not an Alertmanager notification: expected a JSON object, got list"})
    assert post(f"{base}/alerts", json.dumps({"alerts": []}).encode())[0] == 400
    assert post(f"{base}/alerts", b"[" * 100_000 + b"]" * 100_000)[0] == 400  # nesting deeper than the parser goes
    assert get(f"{base}/elsewhere")[0] == 404

    no_length = raw_request(port, b"POST /alerts HTTP/1.1\r\nHost: x\r\n\r\n")
    assert no_length.startswith(b"HTTP/1.1 411 ")
    chunked = raw_request(port, b"POST /alerts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    bad_length = raw_request(port, b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert bad_length.startswith(b"HTTP/1.1 400 ")
    too_large = raw_request(port, f"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode())
    assert too_large.startswith(b"HTTP/1.1 413 ")
    # A client that promises 100 bytes, sends 10 and goes away: nothing to answer, nothing broken.
    raw_request(port, b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"alerts\":", half_close=True)
    raw_request(port, b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n")

    # Still serving, and still logging good notifications.
    assert proc.poll() is None
    assert post(f"{base}/alerts/team", json.dumps(NOTIFICATION).encode())[0] == 200
    wait_until(lambda: any(r["event"] == "notification" for r in lines(out)), 10, "the good notification")
    assert [r["event"] for r in lines(out)] == ["listening", "notification"]  # rejections are not notifications
    rejected = wait_until(lambda: [r for r in lines(err) if r["event"] == "rejected"], 10, "the rejections")
    assert {r.get("status_code") for r in rejected} >= {400, 411, 413}
    assert "Traceback" not in err.read_text()


def test_the_sink_stops_promptly_on_sigterm(sink):
    proc, *_ = sink
    started = time.monotonic()
    stop_process(proc, timeout=15)
    assert proc.returncode == 0
    assert time.monotonic() - started < 10


def test_a_port_already_taken_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "instrumented_server.alert_sink", "--port", str(port)],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_the_port_comes_from_the_environment_when_no_argument_gives_it(tmp_path):
    result = subprocess.run([sys.executable, "-m", "instrumented_server.alert_sink"], cwd=REPO,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OBSGEN_ALERT_SINK_PORT": "x"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "OBSGEN_ALERT_SINK_PORT='x' is not a port number" in result.stderr


# ---------------------------------------------------------------------------------------
# The real Alertmanager delivers to the sink, from a rendered bundle
# ---------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_alertmanager_delivers_firing_and_resolved_to_the_sink_the_spec_names(tmp_path, processes):
    binary = require_binary("alertmanager")
    am_port, sink_port = free_port(), free_port()
    spec = Spec.model_validate({
        "version": 1, "project": "sinktest", "target": "local",
        "services": [{"name": "api", "metrics": {"port": free_port()}}],
        "components": {"alertmanager": {"ports": {"http": am_port}}, "alert_sink": {"ports": {"http": sink_port}},
                       "redis": {"enabled": False}},
        "notifications": {
            "receivers": [{"type": "webhook", "name": "oncall", "url": f"http://alert-sink:{sink_port}/alerts/oncall"}],
            "group_wait": "1s", "group_interval": "1s", "resolve_timeout": "1m",
        },
    })
    bundle = tmp_path / "bundle"
    write_bundle(render_bundle(spec), bundle)
    config = yaml.safe_load((bundle / "alertmanager/alertmanager.yml").read_text())
    assert config["receivers"][0]["webhook_configs"][0]["url"] == f"http://127.0.0.1:{sink_port}/alerts/oncall"

    # Start both as `obsgen up` would: the arguments from local/processes.yaml, the bundle as cwd.
    entries = {e["name"]: e for e in yaml.safe_load((bundle / "local/processes.yaml").read_text())["processes"]}
    out = tmp_path / "sink.out"
    with open(out, "wb") as stdout:
        sink = processes.start([sys.executable, *entries["alert-sink"]["args"]], cwd=bundle, stdout=stdout)
    am = processes.start([binary, *entries["alertmanager"]["args"]], cwd=bundle)
    wait_until(lambda: get(entries["alert-sink"]["ready"]["http"])[0] == 200, 30, "the sink", sink)
    wait_until(lambda: get(entries["alertmanager"]["ready"]["http"])[0] == 200, 60, "Alertmanager", am)

    now = datetime.now(timezone.utc)
    alert = {"labels": {"alertname": "SinkDeliveryTest", "severity": "critical", "service": "api"},
             "annotations": {"summary": "The sink test alert fired."},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()}
    alerts_url = f"http://127.0.0.1:{am_port}/api/v2/alerts"
    assert post(alerts_url, json.dumps([alert]).encode())[0] == 200

    def notified(status):
        return [r for r in lines(out) if r["event"] == "notification" and r["status"] == status]

    firing = wait_until(lambda: notified("firing"), 60, "a firing notification at the sink", sink)[0]
    assert (firing["path"], firing["receiver"], firing["alertname"], firing["severity"], firing["summary"]) == (
        "/alerts/oncall", "oncall", "SinkDeliveryTest", "critical", "The sink test alert fired.")

    alert["endsAt"] = datetime.now(timezone.utc).isoformat()
    assert post(alerts_url, json.dumps([alert]).encode())[0] == 200
    resolved = wait_until(lambda: notified("resolved"), 60, "a resolved notification at the sink", sink)[0]
    assert resolved["alerts"][0]["status"] == "resolved" and resolved["alertname"] == "SinkDeliveryTest"
    assert sink.poll() is None and am.poll() is None
