"""SLO rules through the real tools: promtool computes the budget exactly under uneven traffic, the
generated detection tests pass and catch broken rules, pint finds nothing, and Prometheus' own
query statistics confirm what each rule reads per evaluation.

Run with whichever promtool is first on PATH (OBSGEN_TOOLS puts the built 3.x first; Debian's is
2.42); both must pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from stack import slos
from stack.load import load_default_spec
from stack.renderers import rules
from stack.renderers import slo as slo_rules
from stack.spec import Spec
from stack.topology import Topology
from tests.conftest import free_port, require_binary, stop_process, wait_for_port

SPEC = {
    "version": 1,
    "project": "shop",
    "services": [{"name": "checkout", "metrics": {"port": 9100}}],
    "alerts": {"pack": False},
    "dashboards": {"builtin": False},
    "slos": [
        {"name": "checkout-availability", "objective": 99.9, "window": "30d",
         "events": {"error_query": 'sum(rate(http_requests_total{job="checkout",code=~"5.."}[$window]))',
                    "total_query": 'sum(rate(http_requests_total{job="checkout"}[$window]))'}},
        {"name": "checkout-latency", "objective": 99, "window": "28d",
         "latency": {"metric": "http_request_duration_seconds", "threshold_seconds": 0.3,
                     "selector": 'job="checkout",handler="/pay"'}},
    ],
}


def shop() -> Spec:
    return Spec.model_validate(SPEC)


def write_bundle(spec: Spec, root: Path) -> Path:
    for path, text in rules.render(spec, Topology(spec)).items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return root


def promtool(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout)


def values(segments: list[tuple[int, float]]) -> str:
    """A counter from (minutes, increase per minute) segments."""
    return slo_rules.counter_values([(minutes, per_minute) for minutes, per_minute in segments])


# ---------------------------------------------------------------------------------------
# The budget is a ratio of sums: uneven traffic, idle hours
# ---------------------------------------------------------------------------------------

# (hours, requests per second, error ratio); the case, and the same with idle hours between.
UNEVEN = [(20, 100, 0.0005), (4, 1, 0.01)]
WITH_IDLE = [(10, 100, 0.0005), (8, 0, 0), (4, 1, 0.01)]


def uneven_test(profile: list[tuple[int, float, float]], budget: float, window_seconds: float) -> tuple[dict, dict]:
    """A promtool test group over ``profile``, then idle; and the exact figures it must find."""
    bad = sum(h * 3600 * rps * ratio for h, rps, ratio in profile)
    total = sum(h * 3600 * rps for h, rps, _ in profile)
    exact_ratio = bad / total
    remaining = 1 - exact_ratio / budget
    end_of_data = sum(h for h, _, _ in profile) * 60
    settled = end_of_data + 60 + 10  # every hourly sum holding the data written, and a 5m rate on
    last_burn = profile[-1][2] / budget
    minutes = [(h * 60, rps * 60, ratio) for h, rps, ratio in profile] + [(settled - end_of_data, 0, 0)]
    labels = 'job="checkout",instance="checkout:9100",service="checkout"'
    series = [
        {"series": f'http_requests_total{{{labels},code="500"}}',
         "values": values([(m, per * ratio) for m, per, ratio in minutes])},
        {"series": f'http_requests_total{{{labels},code="200"}}',
         "values": values([(m, per * (1 - ratio)) for m, per, ratio in minutes])},
    ]

    def near(expr: str, value: float, at: int) -> dict:
        return {"expr": f"abs({expr} - {value!r}) <= bool {abs(value) * 0.01!r}", "eval_time": f"{at}m",
                "exp_samples": [{"labels": '{slo="checkout-availability"}', "value": 1}]}

    selector = '{slo="checkout-availability"}'
    checks = [
        near(f"slo:sli_error:ratio_rate30d{selector}", exact_ratio, settled),
        near(f"{slos.BUDGET_REMAINING}{selector}", remaining, settled),
        near(f"{slos.BUDGET_CONSUMED}{selector}", 1 - remaining, settled),
        # When the data ends, the last hour burns at the quiet hours' rate: the time left is what
        # remains over that burn. (What remains then still lacks up to an hour of data: see above.)
        {"expr": f"abs({slos.TIME_TO_EXHAUSTION}{selector} - {slos.BUDGET_REMAINING}{selector} * "
                 f"{window_seconds!r} / {last_burn!r}) <= bool 0.01 * {slos.TIME_TO_EXHAUSTION}{selector}",
         "eval_time": f"{end_of_data}m", "exp_samples": [{"labels": '{slo="checkout-availability"}', "value": 1}]},
    ]
    group = {"name": f"uneven traffic {profile}", "interval": "1m", "input_series": series,
             "promql_expr_test": checks}
    return group, {"ratio": exact_ratio, "remaining": remaining}


@pytest.mark.parametrize(("profile", "exact_remaining"), [(UNEVEN, 0.481038), (WITH_IDLE, 0.462151)])
def test_budget_remaining_is_within_1_percent_of_the_exact_figure_under_uneven_traffic(profile, exact_remaining,
                                                                                      tmp_path):
    root = write_bundle(shop(), tmp_path)
    group, exact = uneven_test(profile, 0.001, 30 * 86400)
    assert exact["remaining"] == pytest.approx(exact_remaining, abs=1e-6)
    test = {"rule_files": ["prometheus/rules/slo-checkout-availability-recording.yml"],
            "evaluation_interval": "1m",
            "group_eval_order": ["slo-checkout-availability-recording", "slo-checkout-availability-hourly"],
            "tests": [group]}
    (root / "uneven.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    started = time.monotonic()
    result = promtool(root, "test", "rules", "uneven.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"promtool: {time.monotonic() - started:.1f} s for {group['name']}")

    # The same test against the mean of 5m ratios this replaced (every 5 minutes weighing the
    # same, idle ones as perfect) must fail: the test can tell the two apart.
    path = root / "prometheus/rules/slo-checkout-availability-recording.yml"
    groups = yaml.safe_load(path.read_text())
    for rule in groups["groups"][0]["rules"]:
        if rule["record"] == "slo:sli_error:ratio_rate30d":
            rule["expr"] = 'avg_over_time(slo:sli_error:ratio_rate5m{slo="checkout-availability"}[30d])'
    path.write_text(yaml.safe_dump(groups))
    broken = promtool(root, "test", "rules", "uneven.yml")
    assert broken.returncode != 0 and "slo:error_budget_remaining:ratio" in broken.stdout + broken.stderr


# ---------------------------------------------------------------------------------------
# The generated tests: pass on the rules as rendered, fail on broken ones
# ---------------------------------------------------------------------------------------


def test_every_generated_slo_test_passes_and_each_slo_costs_seconds_not_minutes(tmp_path):
    root = write_bundle(shop(), tmp_path)
    rule_files = sorted(str(p.relative_to(root)) for p in (root / "prometheus/rules").glob("*.yml"))
    checked = promtool(root, "check", "rules", *rule_files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    timings = {}
    for slo in shop().slos:
        files = sorted(str(p.relative_to(root)) for p in (root / "prometheus/tests").glob(f"slo-{slo.name}-*.yml"))
        assert {Path(f).name for f in files} >= {f"slo-{slo.name}-{k}.yml" for k in ("alerts", "detection",
                                                                                      "detection-long")}
        started = time.monotonic()
        tested = promtool(root, "test", "rules", *files)
        timings[slo.name] = time.monotonic() - started
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert tested.stdout.count("SUCCESS") == len(files)
    print("promtool test rules, seconds per SLO:", {k: round(v, 1) for k, v in timings.items()})


def only_test(root: Path, file: str, title: str) -> str:
    """A copy of a generated test file holding only the test group whose name contains ``title``."""
    data = yaml.safe_load((root / "prometheus/tests" / file).read_text())
    data["tests"] = [t for t in data["tests"] if title in t["name"]]
    assert len(data["tests"]) == 1, [t["name"] for t in yaml.safe_load((root / "prometheus/tests" / file).read_text())["tests"]]
    name = f"prometheus/tests/only-{len(list((root / 'prometheus/tests').glob('only-*')))}.yml"
    (root / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return name


@pytest.mark.parametrize(
    ("rule_file", "old", "new", "test_file", "title"),
    [
        # Waits longer than it says: the outage does not page by its bound.
        ("alerts", "for: 2m", "for: 20m", "detection", "100% error outage"),
        # A page threshold below its words: the 18x burn pages before its lower edge.
        ("alerts", "/ 0.001 > 14.4", "/ 0.001 > 10", "detection", "steady 18x burn"),
        # The 3d window reading 2d: a 1.25x burn tickets before its lower edge.
        ("recording", "slo:sli_total:rate5m_sum1h{slo=\"checkout-availability\"}[3d]) > 0)",
         "slo:sli_total:rate5m_sum1h{slo=\"checkout-availability\"}[2d]) > 0)", "detection-long", "1.25x burn"),
        # Errors that stop counting after the burn: the page never resolves... or a resolve bound too
        # tight: the page's short window twice as long resolves late.
        ("alerts", "slo:sli_error:ratio_rate30m{slo=\"checkout-availability\"}",
         "slo:sli_error:ratio_rate1h{slo=\"checkout-availability\"}", "detection", "100% error outage"),
        # The SLI reading the wrong series: not a 5xx but every request counts as bad.
        ("recording", 'code=~"5.."', 'code=~".*"', "detection", "steady 18x burn"),
    ],
)
def test_generated_detection_tests_catch_a_broken_rule(rule_file, old, new, test_file, title, tmp_path):
    root = write_bundle(shop(), tmp_path)
    name = "checkout-availability"
    test = only_test(root, f"slo-{name}-{test_file}.yml", title)
    passing = promtool(root, "test", "rules", test)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    path = root / "prometheus/rules" / f"slo-{name}-{rule_file}.yml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    failing = promtool(root, "test", "rules", test)
    assert failing.returncode != 0, f"{old} -> {new} went unnoticed by {title}"


# ---------------------------------------------------------------------------------------
# pint
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "shop"])
def test_pint_finds_no_problem_in_the_rendered_rules(which, tmp_path):
    pint = require_binary("pint")
    spec = load_default_spec() if which == "default" else shop()
    root = write_bundle(spec, tmp_path)
    result = subprocess.run([pint, "--no-color", "--offline", "lint", "prometheus/rules"], cwd=root,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    problems = re.findall(r"^(Bug|Warning|Information|Fatal|Error): .*$", output, re.MULTILINE)
    assert not problems, output
    assert "Checking Prometheus rules" in output and 'msg="Problems found"' not in output


# ---------------------------------------------------------------------------------------
# What each rule reads, as Prometheus counts it
# ---------------------------------------------------------------------------------------


def openmetrics(spec: Spec, end: int) -> str:
    """A month of the default spec's series as Prometheus would hold them at ``end`` (unix seconds).

    The service's own series for the last hour every 15s (one per catalog label value); what the
    fast group records, every 15s for 7 hours; the hourly sums, every hour for 31 days.
    """
    from exporter.catalog import BY_NAME

    families: dict[str, tuple[str, list[str]]] = {}
    target = 'job="ws-server",instance="ws-server:8765",service="ws-server"'

    def series(name: str, labels: str, start: int, step: int) -> None:
        family = name.removesuffix("_total") if name.endswith("_total") else name
        kind = "counter" if name.endswith("_total") else "gauge"
        lines = families.setdefault(family, (kind, []))[1]
        lines += [f"{name}{{{labels}}} {i} {t}" for i, t in enumerate(range(start, end + 1, step))]

    for kind in BY_NAME["websocket_messages_received_total"].label_values["type"]:
        series("websocket_messages_received_total", f'{target},type="{kind}"', end - 3600, 15)
    for reason in BY_NAME["websocket_errors_total"].label_values["reason"]:
        series("websocket_errors_total", f'{target},reason="{reason}"', end - 3600, 15)
    for slo in spec.slos:
        for kind in ("errors", "total"):
            series(slos.rate_record(kind), f'slo="{slo.name}"', end - 7 * 3600, 15)
            series(slos.sum_record(kind), f'slo="{slo.name}"', end - 31 * 86400, 3600)
        series(slos.record("1h"), f'slo="{slo.name}"', end - 3600, 15)
    text = "".join(f"# TYPE {family} {kind}\n" + "\n".join(lines) + "\n" for family, (kind, lines) in families.items())
    return text + "# EOF\n"


def query(port: int, expr: str, at: int) -> dict:
    arguments = urllib.parse.urlencode({"query": expr, "time": at, "stats": "all"})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{arguments}", timeout=60) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_reads_what_docs_say_each_slo_rule_reads(tmp_path):
    """Backfill a month of series, then ask Prometheus itself (stats=all) what each rule's query reads."""
    prometheus = require_binary("prometheus")
    tool = require_binary("promtool")
    version = subprocess.run([prometheus, "--version"], capture_output=True, text=True).stdout
    if not re.search(r"version 3\.", version):
        pytest.skip(f"query statistics counted as documented need Prometheus 3 (found: {version.splitlines()[0]})")
    spec = load_default_spec()
    end = (int(time.time()) // 86400 - 2) * 86400  # two days back: a whole block, away from the head
    data = tmp_path / "data"
    source = tmp_path / "series.om"
    text = openmetrics(spec, end)
    source.write_text(text)
    created = subprocess.run([tool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
                             capture_output=True, text=True, timeout=600)
    assert created.returncode == 0, created.stdout + created.stderr
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {}\n")
    process = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=90d",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=120, proc=process)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the blocks load after the port opens
            try:
                if query(port, "count(websocket_messages_received_total)", end)["result"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus did not load the backfilled blocks within 120 s")
        files = rules.render(spec, Topology(spec))
        measured = {}
        for path, body in files.items():
            if not re.fullmatch(r"prometheus/rules/slo-message-availability-recording\.yml", path):
                continue
            for group in yaml.safe_load(body)["groups"]:
                for rule in group["rules"]:
                    measured[rule["record"]] = query(port, rule["expr"], end)["stats"]["samples"][
                        "totalQueryableSamples"]
    finally:
        stop_process(process)
    expected = {
        "slo:sli_errors:rate5m": (2 + 14) * 20, "slo:sli_total:rate5m": 14 * 20,
        "slo:sli_error:ratio_rate30m": 3 * 120, "slo:sli_error:ratio_rate1h": 3 * 240,
        "slo:sli_error:ratio_rate2h": 3 * 480, "slo:sli_error:ratio_rate6h": 3 * 1440,
        "slo:sli_error:ratio_rate1d": 3 * 24 + 1, "slo:sli_error:ratio_rate3d": 3 * 72 + 1,
        "slo:sli_error:ratio_rate30d": 3 * 720 + 1,
        "slo:sli_errors:rate5m_sum1h": 240, "slo:sli_total:rate5m_sum1h": 240,
    }
    print("samples per evaluation (Prometheus' totalQueryableSamples):", measured)
    for record, count in expected.items():
        assert measured[record] == count, (record, measured[record], count)
    assert max(measured.values()) <= 10000
