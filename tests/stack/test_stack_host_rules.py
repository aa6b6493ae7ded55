"""Host, process and probe alerts: their expressions by value, and their generated promtool tests
passing (and failing when the rule is wrong) with the pack's thresholds and with a spec's overrides."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stack.renderers import rules
from stack.spec import Spec
from stack.topology import Topology
from tests.conftest import require_binary

FILES = ("host.yml", "process.yml", "probe.yml")


def make_spec(**fields) -> Spec:
    return Spec.model_validate({"version": 1, "project": "demo",
                                "services": [{"name": "ws", "builtin": True, "metrics": {"port": 9000}}], **fields})


def write(spec: Spec, root: Path) -> Path:
    for path, text in rules.render(spec, Topology(spec)).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return root


def promtool_test(root: Path) -> subprocess.CompletedProcess:
    tool = require_binary("promtool")
    return subprocess.run([tool, "test", "rules", *(f"prometheus/tests/{f}" for f in FILES)], cwd=root,
                          capture_output=True, text=True, timeout=300)


def exprs(spec: Spec, file: str) -> dict[str, list[str]]:
    groups = yaml.safe_load(rules.render(spec, Topology(spec))[f"prometheus/rules/{file}"])["groups"]
    found: dict[str, list[str]] = {}
    for rule in groups[0]["rules"]:
        found.setdefault(rule["alert"], []).append(rule["expr"])
    return found


def test_expressions():
    spec = make_spec()
    host = exprs(spec, "host.yml")
    assert host["HostHighCpuUsage"] == ['1 - avg by (job, instance) (rate(node_cpu_seconds_total{mode="idle"}[5m])) > 0.8']
    assert host["HostLowMemory"][0].endswith("< 0.1")
    assert host["HostFilesystemFillingUp"] == [
        'predict_linear(node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs|overlay|squashfs"}[1h], 14400) < 0']
    process = exprs(spec, "process.yml")
    assert process["ProcessRestarted"] == ["changes(process_start_time_seconds[15m]) > 0"]
    assert "process_open_fds" in process["ProcessNearFileDescriptorLimit"][0]
    probe = exprs(spec, "probe.yml")
    assert probe["WebSocketProbeFailing"] == [
        'probe_success{job="blackbox"} == 0\nunless on (service, instance)\n  up{service!=""} == 0']


def test_generated_tests_pass_with_the_pack_defaults(tmp_path):
    result = promtool_test(write(make_spec(), tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_tests_follow_the_spec_overrides(tmp_path):
    spec = make_spec(alerts={"thresholds": {
        "host_cpu": {"threshold": 0.5, "for": "10m"},
        "host_memory": {"threshold": 0.25},
        "host_disk_fill": {"threshold": 86400},  # a day
        "process_fds": {"threshold": 0.5, "severity": "critical"},
        "process_restarted": {"for": "5m"},
        "probe_failing": {"for": "30s"},
        "probe_latency": {"threshold": 0.25},
    }})
    assert 'predict_linear(node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs|overlay|squashfs"}[1h], 86400) < 0' \
        in exprs(spec, "host.yml")["HostFilesystemFillingUp"]
    result = promtool_test(write(spec, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_rule_fails_its_generated_tests(tmp_path):
    """A CPU rule that reads the idle share instead of the busy one must fail its own tests."""
    root = write(make_spec(), tmp_path)
    path = root / "prometheus" / "rules" / "host.yml"
    text = path.read_text(encoding="utf-8")
    wrong = text.replace("1 - avg by (job, instance)", "avg by (job, instance)")
    assert wrong != text
    path.write_text(wrong, encoding="utf-8")
    result = promtool_test(root)
    assert result.returncode != 0 and "HostHighCpuUsage" in result.stdout + result.stderr


@pytest.mark.parametrize("override, message", [
    ({"host_memory": {"critical": 0.05}}, "single level"),
    ({"process_restarted": {"threshold": 1}}, "fixed condition"),
    ({"probe_failing": {"threshold": 0}}, "fixed condition"),
    ({"process_restarted": {"for": "15m"}}, "looks back 15m"),
])
def test_overrides_that_do_not_apply_are_refused(override, message):
    with pytest.raises(ValidationError, match=message):
        make_spec(alerts={"thresholds": override})
