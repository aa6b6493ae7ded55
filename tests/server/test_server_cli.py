"""`python -m instrumented_server` and `python -m instrumented_server.loadgen` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from instrumented_server.config import ConfigError, parse_args
from instrumented_server.loadgen import LatencyHistogram, parse_faults
from instrumented_server.ratelimit import Rate
from tests.conftest import free_port, stop_process, wait_for_port
from tests.server.server_support import SECRET


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "jwt-secret"
    path.write_text(SECRET + "\n")
    return str(path)


def test_argument_beats_environment_beats_default(secret_file):
    env = {"OBSGEN_JWT_SECRET_FILE": secret_file, "OBSGEN_PORT": "9001", "OBSGEN_MESSAGE_RATE": "7/9"}
    config = parse_args([], env)
    assert (config.port, config.message_rate, config.host) == (9001, Rate(7, 9), "127.0.0.1")
    assert config.jwt_secret == SECRET
    config = parse_args(["--port", "9002", "--history-size", "5"], env)
    assert (config.port, config.history_size) == (9002, 5)
    assert parse_args(["--max-message-size", "1000"], env).max_frame_size == 4000


@pytest.mark.parametrize("argv, env, message", [
    ([], {}, "--jwt-secret-file"),
    (["--jwt-secret-file", "/nonexistent/secret"], {}, "cannot read the JWT secret file"),
    (["--port", "eighty"], {}, "--port='eighty'"),
    ([], {"OBSGEN_PING_INTERVAL": "-3"}, "OBSGEN_PING_INTERVAL='-3'"),
    (["--broker", "kafka"], {}, "broker 'kafka'"),
    (["--message-rate", "fast"], {}, "expected RATE or RATE/BURST"),
    (["--max-message-size", "100", "--max-frame-size", "10"], {}, "at least --max-message-size"),
])
def test_bad_settings_name_what_is_wrong(secret_file, argv, env, message):
    if "--jwt-secret-file" not in argv and message != "--jwt-secret-file":
        argv = ["--jwt-secret-file", secret_file, *argv]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_args(argv, env)


def test_namespaces_file_is_loaded_and_checked(secret_file, tmp_path):
    good = tmp_path / "ns.yaml"
    good.write_text("namespaces:\n  chat: {publish: subscribers}\n  '': {}\n")
    assert set(parse_args(["--jwt-secret-file", secret_file, "--namespaces-file", str(good)], {}).namespaces) == {"", "chat"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespaces:\n  chat: {publish: maybe}\n")
    with pytest.raises(ConfigError, match="publish must be one of"):
        parse_args(["--jwt-secret-file", secret_file, "--namespaces-file", str(bad)], {})


def test_help_documents_flags_and_their_environment_variables():
    out = subprocess.run([sys.executable, "-m", "instrumented_server", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag, env in (("--jwt-secret-file", "OBSGEN_JWT_SECRET_FILE"), ("--broker", "OBSGEN_BROKER"),
                      ("--max-outgoing-buffer", "OBSGEN_MAX_OUTGOING_BUFFER"), ("--no-telemetry", "")):
        assert flag in out and env in out


def test_missing_secret_is_a_clear_error_not_a_traceback():
    result = subprocess.run([sys.executable, "-m", "instrumented_server"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "--jwt-secret-file" in result.stderr and "Traceback" not in result.stderr


def test_latency_histogram_quantiles_within_two_percent():
    histogram = LatencyHistogram()
    for ms in range(1, 1001):
        histogram.add(ms / 1000)
    for q, expected in ((0.5, 0.5), (0.99, 0.99), (1.0, 1.0)):
        assert expected <= histogram.quantile(q) <= expected * 1.021
    merged = LatencyHistogram()
    merged.merge(histogram)
    merged.merge(histogram)
    assert merged.total == 2000 and merged.quantile(0.5) == histogram.quantile(0.5)


def test_fault_specs():
    assert parse_faults(["flood=2", "no-token"]) == {"flood": 2.0, "no-token": 1.0}
    assert len(parse_faults(["all=0.5"])) >= 14
    for bad in ("nuke", "flood=x", "flood=0"):
        with pytest.raises(ValueError):
            parse_faults([bad])


def test_server_and_loadgen_processes_with_every_fault(processes, secret_file):
    port = free_port()
    server = processes.start([sys.executable, "-m", "instrumented_server", "--port", str(port),
                              "--jwt-secret-file", secret_file, "--drain-timeout", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_port(port, proc=server)
    result = subprocess.run(
        [sys.executable, "-m", "instrumented_server.loadgen", "--url", f"ws://127.0.0.1:{port}/",
         "--jwt-secret-file", secret_file, "--subscribers", "20", "--channels", "2", "--rate", "40",
         "--duration", "2", "--settle", "0.5", "--surge-size", "20", "--fault", "all=0.6", "--json", "--fail-on-loss"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["published"] == 80 and report["missing"] == 0 and report["out_of_order"] == 0
    outcomes = report["faults"]
    expected = {
        "no-token": "close 4001", "bad-token": "close 4002", "expired-token": "close 4002",
        "bad-origin": "close 4003", "flood": "close 4004", "oversized": "close 4005", "huge-frame": "close 1009",
        "invalid-utf8": "close 1007", "binary": "close 1003", "malformed": "error malformed",
        "unknown-type": "error unknown_type", "forbidden": "error forbidden", "slow-consumer": "close 4008",
        "disconnect": "reset", "surge": "held 20/20",
    }
    for fault, outcome in expected.items():
        assert any(key.startswith(f"{fault} -> {outcome}") for key in outcomes), (fault, outcomes)
    assert report["reconnects"] >= 1  # the reset subscribers came back

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in ('websocket_connections_total{status="auth_missing",transport="websocket"}',
                 'websocket_disconnections_total{code="4008",transport="websocket"}',
                 'websocket_rate_limited_total{scope="connection"}', 'websocket_reconnects_total{outcome="replayed"}',
                 'websocket_errors_total{reason="invalid_utf8"}'):
        value = next(l for l in metrics.splitlines() if l.startswith(line)).split()[-1]
        assert float(value) > 0, line

    stop_process(server)
    assert server.returncode == 0
    assert "draining" in server.stdout.read()


def test_docs_cover_every_flag_close_code_error_code_and_fault():
    from pathlib import Path

    from instrumented_server.config import build_parser
    from instrumented_server.loadgen import FAULTS
    from instrumented_server.protocol import CloseCode, ErrorCode

    docs = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()
    flags = [o for action in build_parser()._actions for o in action.option_strings if o.startswith("--") and o != "--help"]
    assert [f for f in flags if f"`{f}`" not in docs] == []
    assert [c for c in CloseCode if f"| {int(c)} |" not in docs] == []
    assert [e.value for e in ErrorCode if f"`{e.value}`" not in docs] == []
    assert [f for f in FAULTS if f"`{f}`" not in docs] == []
