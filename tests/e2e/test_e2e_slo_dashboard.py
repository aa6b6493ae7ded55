"""The SLO dashboard's numbers, proven on a real Prometheus from counters this test controls.

A spec with two SLOs over a service this test serves itself is rendered through the real CLI
(target local, every port free on 127.0.0.1, 1 s scrape and evaluation intervals). The service is
a small HTTP exposition on 127.0.0.1: each time Prometheus scrapes it, every SLO's request
counter rises by a fixed number (1000; 0 for the idle one) and its error counter by the injected
ratio times that. Any window's rate ratio therefore equals the injected ratio exactly (both
counters move together on the same scrapes, so rate()'s extrapolation is the same for both),
whatever the timing of the scrapes.

Prometheus runs with the rendered config and rules, started as ``obsgen up`` would start it (the
binary found by the project's tool lookup, the arguments of local/processes.yaml). Then every
query of the rendered SLO dashboard is run against it, with Grafana's variables substituted, and:

- every query returns data (a value Grafana would draw, not NaN or Inf);
- each burn-rate panel shows injected ratio / budget, each SLI panel 1 - injected ratio, and the
  budget panels 1 - ratio / budget and ratio / budget, within a relative tolerance of 1e-6 (float
  rounding only: the counters keep the ratio exact);
- time to exhaustion is the remaining budget over the 1h burn, in seconds of the SLO window
  (remaining x window / burn), capped at the window, and 0 once the budget is spent;
- the alert panels show the burning SLO's page and ticket alerts pending or firing, and the
  others' as OK.

Grafana does not run here: its dashboards are read as JSON and their PromQL runs on Prometheus.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import yaml

from stack.check import find_tool
from stack.dashboard_ids import SLO_DASHBOARD_TITLE
from stack.spec import parse_duration
from stack.ports import PORTS
from tests.conftest import require_binary, stop_process
from tests.e2e.e2e_support import (
    PanelQuery,
    Prometheus,
    dashboard_queries,
    free_ports,
    grafana_to_promql,
    has_points,
    http_text,
    render_bundle,
    tail,
    wait_until,
)

pytestmark = pytest.mark.e2e

INTERVAL = "1s"  # scrape and rule evaluation
TOLERANCE = 1e-6  # relative: the injected ratio is exact, only float rounding differs
READY_TIMEOUT = 90.0  # Prometheus answering /-/ready on a loaded machine
WINDOW = "30d"
# Injected error ratios: "burning" spends its 1% budget 20 times too fast (its page fires above
# 14.4x; 1 - 20 of the budget is left, i.e. it is spent), "healthy" spends its 5% budget at 0.4x
# (lasts longer than the window), "slow" its 10% budget at 0.8x (0.2 left, lasting 0.2 / 0.8 of
# 30 days: 7.5 days), "flawless" has traffic and no error, "idle" has no traffic at all (its
# ratios are recorded as 0: nothing may read NaN). None but "burning" raises an alert.
SLOS = {
    "burning": {"objective": 99.0, "ratio": 0.2, "budget": 0.01, "requests": 1000},
    "healthy": {"objective": 95.0, "ratio": 0.02, "budget": 0.05, "requests": 1000},
    "slow": {"objective": 90.0, "ratio": 0.08, "budget": 0.1, "requests": 1000},
    "flawless": {"objective": 99.9, "ratio": 0.0, "budget": 0.001, "requests": 1000},
    "idle": {"objective": 99.9, "ratio": 0.0, "budget": 0.001, "requests": 0},
}


class CounterExposition:
    """/metrics with, per SLO path, requests and errors counters that rise in a fixed ratio per scrape."""

    def __init__(self, paths: dict[str, tuple[int, float]]) -> None:
        self.paths = paths  # path -> (requests per scrape, error ratio)
        self.requests = {path: 0 for path in paths}
        self.errors = {path: 0 for path in paths}
        self.scrapes = 0
        self._lock = threading.Lock()
        exposition = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exposition.scrape().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="exposition", daemon=True)
        self._thread.start()

    def scrape(self) -> str:
        with self._lock:
            self.scrapes += 1
            for path, (requests, ratio) in self.paths.items():
                self.requests[path] += requests
                self.errors[path] += round(ratio * requests)
            lines = ["# TYPE probe_requests_total counter"]
            lines += [f'probe_requests_total{{path="{p}"}} {n}' for p, n in sorted(self.requests.items())]
            lines += ["# TYPE probe_errors_total counter"]
            lines += [f'probe_errors_total{{path="{p}"}} {n}' for p, n in sorted(self.errors.items())]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def slo_spec(service_port: int) -> dict:
    """Every component port on a free port (nothing of another test is scraped or alerted)."""
    names = [(component, name) for component, named in sorted(PORTS.items()) for name in sorted(named)]
    components: dict = {}
    for (component, name), port in zip(names, free_ports(len(names))):
        components.setdefault(component, {}).setdefault("ports", {})[name] = port
    components["prometheus"].update(scrape_interval=INTERVAL, evaluation_interval=INTERVAL)
    return {
        "version": 1,
        "project": "slo-dashboard-e2e",
        "target": "local",
        "services": [{"name": "probe", "otlp": False, "metrics": {"port": service_port, "path": "/metrics"}}],
        "components": components,
        "alerts": {"pack": False},
        "dashboards": {"builtin": False},  # the SLO dashboard only
        "slos": [
            {
                "name": name,
                "objective": slo["objective"],
                "window": WINDOW,
                "events": {
                    "error_query": f'sum(rate(probe_errors_total{{path="/{name}"}}[$window]))',
                    "total_query": f'sum(rate(probe_requests_total{{path="/{name}"}}[$window]))',
                },
            }
            for name, slo in SLOS.items()
        ],
    }


def slowest_rule_interval(bundle: Path) -> float:
    """The longest evaluation interval of any rendered rule group (a group may set its own)."""
    config = yaml.safe_load((bundle / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    default = parse_duration(config.get("global", {}).get("evaluation_interval", "1m"))
    intervals = [default]
    for path in sorted((bundle / "prometheus" / "rules").glob("*.yml")):
        for group in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("groups", []):
            intervals.append(parse_duration(group["interval"]) if "interval" in group else default)
    return max(intervals)


@dataclass
class Run:
    bundle: Path
    prometheus: Prometheus
    exposition: CounterExposition
    queries: list[PanelQuery]
    variables: dict
    started: float
    log: Path

    def promql(self, query: PanelQuery) -> str:
        scrape = int(parse_duration(INTERVAL))
        span = max(1, int(time.time() - self.started))
        interval = max(scrape, span // 1000)
        return grafana_to_promql(query.expr, self.variables[query.dashboard], interval,
                                 max(interval + scrape, 4 * scrape), span)

    def empty_queries(self) -> list[str]:
        """Queries with nothing Grafana would draw over the run so far."""
        empty = []
        end = time.time()
        for query in self.queries:
            expr = self.promql(query)
            if not has_points(self.prometheus.query_range(expr, self.started, end, 1)):
                empty.append(f"{query.panel} [{query.ref}]: {expr}")
        return empty

    def diagnostics(self) -> str:
        return f"Prometheus log ({self.log}):\n{tail(self.log)}\nscrapes served: {self.exposition.scrapes}"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("slo-dashboard")
    exposition = CounterExposition({f"/{name}": (slo["requests"], slo["ratio"]) for name, slo in SLOS.items()})
    proc = None
    try:
        bundle = render_bundle(slo_spec(exposition.port), workdir)
        processes = yaml.safe_load((bundle / "local" / "processes.yaml").read_text(encoding="utf-8"))["processes"]
        (entry,) = [p for p in processes if p["name"] == "prometheus"]
        # As `obsgen up` would run it: the project's tool lookup, the rendered arguments, the bundle as cwd.
        binary = find_tool("prometheus") or require_binary(entry["binary"][0])  # skips, or fails under CI=true
        log = workdir / "prometheus.log"
        with open(log, "wb") as output:
            proc = subprocess.Popen([binary, *entry["args"]], cwd=bundle, stdout=output, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        ready_url = entry["ready"]["http"]
        ready = wait_until(lambda: proc.poll() is None and http_text(ready_url)[0] == 200, READY_TIMEOUT)
        assert ready, f"Prometheus ({binary}) was not ready at {ready_url} within {READY_TIMEOUT:.0f}s:\n{tail(log)}"
        queries, variables = dashboard_queries(bundle)
        queries = [q for q in queries if q.dashboard == SLO_DASHBOARD_TITLE]
        result = Run(bundle, Prometheus(urlsplit(ready_url).port), exposition, queries, variables, time.time(), log)
        # Rules need a few evaluations on scraped data before every query can have data (a rule
        # group may have a slower interval of its own); the test judging the queries reports any
        # still empty after this wait.
        wait_until(lambda: not result.empty_queries(), 60.0 + 3 * slowest_rule_interval(bundle), interval=1.0)
        yield result
    finally:
        if proc is not None:
            stop_process(proc)
        exposition.close()


def test_the_dashboard_has_the_queries_of_every_slo(run: Run):
    assert run.queries and {q.datasource_type for q in run.queries} == {"prometheus"}
    for name in SLOS:
        assert any(f'slo="{name}"' in q.expr for q in run.queries), name


def test_every_slo_dashboard_query_returns_data(run: Run):
    empty = run.empty_queries()
    assert not empty, "SLO dashboard queries with no data:\n  " + "\n  ".join(empty) + "\n" + run.diagnostics()


def assert_close(actual: float, expected: float, what: str) -> None:
    assert math.isclose(actual, expected, rel_tol=TOLERANCE, abs_tol=1e-12), f"{what}: {actual} != {expected}"


def test_burn_rate_panels_show_the_injected_ratio_over_the_budget(run: Run):
    burn_panels = sorted({q.panel for q in run.queries if q.panel.startswith("Burn rate")})
    assert len(burn_panels) == 4, burn_panels  # one per alert condition (1h&5m, 6h&30m, 1d&2h, 3d&6h)
    for name, slo in SLOS.items():
        for title in burn_panels:
            mine = [q for q in run.queries if q.panel == title and f'slo="{name}"' in q.expr]
            assert len(mine) == 2, (title, name)  # the long and the short window
            for query in mine:
                (series,) = run.prometheus.query(run.promql(query))
                assert_close(float(series["value"][1]), slo["ratio"] / slo["budget"], f"{name} {title} [{query.ref}]")


def values_of(run: Run, title: str, name: str) -> list[float]:
    """The current value of each query of ``name``'s panel ``title`` (a title ending in "*": every
    panel whose title starts with the rest)."""
    found = []
    for query in run.queries:
        matches = query.panel.startswith(title[:-1]) if title.endswith("*") else query.panel == title
        if matches and f'slo="{name}"' in query.expr:
            result = run.prometheus.query(run.promql(query))
            assert len(result) == 1, f"{query.panel} [{query.ref}] returned {len(result)} series: {query.expr}"
            found.append(float(result[0]["value"][1]))
    assert found, f"no panel {title!r} for {name}"
    return found


def test_sli_panels_show_one_minus_the_injected_ratio(run: Run):
    for name, slo in SLOS.items():
        over_5m_and_1h = values_of(run, f"SLI against the {slo['objective']:g}% objective", name)
        assert len(over_5m_and_1h) == 2
        for value in over_5m_and_1h:
            assert_close(value, 1 - slo["ratio"], f"{name} SLI")
        sli_over_window, objective = values_of(run, f"SLI over {WINDOW}", name)
        assert_close(sli_over_window, 1 - slo["ratio"], f"{name} SLI over 30d")
        assert_close(objective, slo["objective"] / 100, f"{name} objective")


def test_budget_panels_follow_from_the_injected_ratio(run: Run):
    window = parse_duration(WINDOW)
    for name, slo in SLOS.items():
        burn = slo["ratio"] / slo["budget"]
        for title in ("Error budget remaining", "Error budget remaining over time"):
            (remaining,) = values_of(run, title, name)
            assert_close(remaining, 1 - burn, f"{name} {title}")
        (consumed,) = values_of(run, "Error budget consumed", name)
        assert_close(consumed, burn, f"{name} budget consumed")
        (exhaustion,) = values_of(run, "Time to exhaustion*", name)
        expected = min(window, max(0.0, (1 - burn) * window / burn)) if burn else window
        assert_close(exhaustion, expected, f"{name} time to exhaustion (s)")
    for name in ("healthy", "flawless", "idle"):
        assert values_of(run, "Time to exhaustion*", name) == [window], name  # shown as "more than 30d"
    assert values_of(run, "Time to exhaustion*", "burning") == [0]  # shown as "spent"


def test_alert_panels_show_the_burning_slo_paging_and_the_others_ok(run: Run):
    # page and ticket: pending (1) or firing (2) from the first evaluation on which both windows burn
    burning = wait_until(lambda: (lambda states: states if min(states[:2]) >= 1 else None)(
        values_of(run, "Alerts", "burning")), 30.0)
    assert burning, f"burning: alert states {values_of(run, 'Alerts', 'burning')}: expected page and ticket >= 1"
    assert burning[2] == 0, "the SLI-absent alert fired for an SLI that has data"
    for name in SLOS.keys() - {"burning"}:
        assert values_of(run, "Alerts", name) == [0, 0, 0], name
    # the history lanes read the same queries over the run: the burning page was drawn as pending or firing
    # (the range's 1 s steps start at run.started, so its last point may fall just before the
    # evaluation the instant query saw: wait for the next step rather than race it)
    history = [q for q in run.queries if q.panel == "Alert history" and 'slo="burning"' in q.expr][:1]
    assert history, "no Alert history query for the burning SLO"

    def highest_state() -> float | None:
        series = run.prometheus.query_range(run.promql(history[0]), run.started, time.time(), 1)
        values = [float(v) for s in series for _, v in s["values"]]
        return max(values) if values and max(values) >= 1 else None

    assert wait_until(highest_state, 30.0), "the Alert history lane never drew the burning page as pending or firing"
