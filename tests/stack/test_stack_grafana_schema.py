"""Dashboards against Grafana's published types (grafana-foundation-sdk, pinned in the test extra):
every built-in, SLO and custom dashboard passes; an unknown field or a wrong type fails, named by
its JSON path; what the SDK has no model for is said, not hidden."""

from __future__ import annotations

import copy
import json
import re
import typing
from pathlib import Path

import pytest

from stack import check, grafana_schema
from stack.load import load_default_spec, load_spec_file
from stack.render import render_bundle
from stack.renderers import dashboards as dash
from stack.renderers import grafana
from stack.spec import Panel as CustomPanel, Spec
from stack.write import write_bundle
from tests.conftest import missing_tool

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((Path(__file__).parent / "specs").glob("*.yaml"))
# What the SDK has no model for, and the walk therefore reports as unchecked (docs/dashboards.md).
NO_MODEL = {"'alertlist' panel", "'traces' panel", "'jaeger' queries"}


@pytest.fixture(autouse=True)
def _sdk():
    if grafana_schema.available() is None:
        missing_tool(f"{grafana_schema.PACKAGE} is not installed (pip install -e '.[test]')")


def pinned_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"grafana-foundation-sdk==([^"]+)"', text).group(1)


def test_the_installed_models_are_the_pinned_build_and_match_the_rendered_schema_version():
    assert grafana_schema.available() == pinned_version()
    assert grafana_schema.schema_version() == dash.SCHEMA_VERSION == 41


def dashboards_of(spec: Spec) -> dict[str, dict]:
    bundle = render_bundle(spec)
    return {path: json.loads(data) for path, data in bundle.items() if path.startswith("grafana/dashboards/")}


def every_dashboard() -> dict[str, dict]:
    """Built-in and SLO dashboards of the default spec, and those (custom ones included) of every test spec."""
    found = {f"default:{p}": d for p, d in dashboards_of(load_default_spec()).items()}
    for path in SPECS:
        found.update({f"{path.stem}:{p}": d for p, d in dashboards_of(load_spec_file(path)).items()})
    return found


def test_every_rendered_dashboard_passes_grafanas_schema():
    dashboards = every_dashboard()
    assert len(dashboards) >= 8
    unchecked = []
    for where, dashboard in dashboards.items():
        report = grafana_schema.check_dashboard(dashboard)
        assert report.problems == [], where
        unchecked += report.unchecked
    kinds = {item.split("(no model for the ", 1)[-1].split("(no model for ", 1)[-1].rstrip(")") for item in unchecked}
    assert kinds <= NO_MODEL, kinds
    assert "'alertlist' panel" in kinds and "'jaeger' queries" in kinds


def test_every_panel_type_a_custom_dashboard_may_use_passes():
    offered = typing.get_args(CustomPanel.model_fields["type"].annotation)
    panels = [{"title": kind, "type": kind, "expr": "sum(up)"} for kind in offered]
    spec = Spec.model_validate({
        "version": 1, "project": "demo", "services": [{"name": "chat", "builtin": True}],
        "slos": [{"name": "availability", "objective": 99.9,
                  "events": {"error_query": "sum(rate(websocket_errors_total[$window]))",
                             "total_query": "sum(rate(websocket_messages_received_total[$window]))"}}],
        "dashboards": {"custom": [{"title": "Every kind", "panels": panels}]},
    })
    models = grafana.dashboards(spec)
    kinds = {panel["type"] for model in models.values() for panel in _panels(model)}
    assert set(offered) <= kinds
    for model in models.values():
        assert grafana_schema.check_dashboard(model).problems == [], model["title"]


def _panels(model: dict):
    for panel in model["panels"]:
        yield panel
        yield from panel.get("panels", [])


# ---------------------------------------------------------------------------------------
# It can fail: injected mistakes, each named by its JSON path
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overview() -> dict:
    models = grafana.dashboards(load_default_spec())
    return next(m for m in models.values() if any(p["type"] == "timeseries" for p in _panels(m)))


def first(model: dict, kind: str) -> tuple[int, dict]:
    return next((i, p) for i, p in enumerate(model["panels"]) if p["type"] == kind)


def injected(overview: dict, change) -> list[str]:
    model = copy.deepcopy(overview)
    change(model)
    return grafana_schema.check_dashboard(model).problems


def test_an_unknown_dashboard_field_fails(overview):
    problems = injected(overview, lambda m: m.update(refreshInterval="5s"))
    assert len(problems) == 1
    assert problems[0].startswith("refreshInterval: unknown field 'refreshInterval' of Dashboard (known: ")


def test_an_unknown_panel_field_fails_naming_the_panel(overview):
    index, _ = first(overview, "timeseries")
    problems = injected(overview, lambda m: m["panels"][index].update(legendMode="table"))
    assert len(problems) == 1
    assert problems[0].startswith(f"panels[{index}].legendMode: unknown field 'legendMode' of Panel")


def test_unknown_fields_in_options_field_config_and_queries_fail(overview):
    index, _ = first(overview, "timeseries")

    def change(model):
        panel = model["panels"][index]
        panel["options"]["legend"]["position"] = "bottom"
        panel["fieldConfig"]["defaults"]["custom"]["lineWidht"] = 2
        panel["fieldConfig"]["defaults"]["colour"] = {"mode": "palette-classic"}
        panel["targets"][0]["legend"] = "{{instance}}"

    problems = injected(overview, change)
    where = f"panels[{index}]"
    by_path = {p.split(": ", 1)[0]: p.split(": ", 1)[1] for p in problems}
    assert sorted(by_path) == sorted([
        f"{where}.options.legend.position",
        f"{where}.fieldConfig.defaults.colour",
        f"{where}.fieldConfig.defaults.custom.lineWidht",
        f"{where}.targets[0].legend",
    ]), problems
    assert by_path[f"{where}.options.legend.position"].startswith("unknown field 'position' of VizLegendOptions")
    assert by_path[f"{where}.fieldConfig.defaults.colour"].startswith("unknown field 'colour' of FieldConfig")
    assert by_path[f"{where}.fieldConfig.defaults.custom.lineWidht"].startswith("unknown field 'lineWidht' of GraphFieldConfig")
    assert by_path[f"{where}.targets[0].legend"].startswith("unknown field 'legend' of Dataquery")


def test_wrong_types_fail(overview):
    index, panel = first(overview, "timeseries")

    def change(model):
        model["schemaVersion"] = "41"
        model["panels"][index]["gridPos"]["h"] = "8"
        model["panels"][index]["targets"][0]["expr"] = 42
        model["panels"][index]["fieldConfig"]["defaults"]["unit"] = ["s"]
        model["graphTooltip"] = 7
        model["panels"][index]["options"]["legend"]["showLegend"] = "yes"

    problems = injected(overview, change)
    assert set(problems) == {
        "schemaVersion: expected int, got str",
        f"panels[{index}].gridPos.h: expected int, got str",
        f"panels[{index}].targets[0].expr: expected str, got int",
        f"panels[{index}].fieldConfig.defaults.unit: expected str, got array",
        "graphTooltip: 7 is not one of [0, 1, 2] (DashboardCursorSync)",
        f"panels[{index}].options.legend.showLegend: expected bool, got str",
    }, problems


def test_a_mistake_inside_a_collapsed_row_is_found():
    many = [{"name": f"slo-{i}", "objective": 99.9,
             "events": {"error_query": "sum(rate(websocket_errors_total[$window]))",
                        "total_query": "sum(rate(websocket_messages_received_total[$window]))"}}
            for i in range(dash.EXPANDED_SLO_ROWS + 1)]
    spec = Spec.model_validate({"version": 1, "project": "demo", "services": [{"name": "chat", "builtin": True}],
                                "slos": many, "dashboards": {"builtin": False}})
    (model,) = grafana.dashboards(spec).values()
    row = next(i for i, p in enumerate(model["panels"]) if p["type"] == "row" and p.get("panels"))
    assert grafana_schema.check_dashboard(model).problems == []
    model["panels"][row]["panels"][0]["gridPos"]["w"] = 12.5
    assert grafana_schema.check_dashboard(model).problems == [f"panels[{row}].panels[0].gridPos.w: expected int, got float"]


def test_a_newer_or_older_schema_version_is_named(overview):
    problems = injected(overview, lambda m: m.update(schemaVersion=39))
    assert problems == ["schemaVersion: 39, while the models describe schemaVersion 41"]


# ---------------------------------------------------------------------------------------
# obsgen check
# ---------------------------------------------------------------------------------------


def test_obsgen_check_passes_the_bundle_and_fails_an_edited_dashboard(tmp_path):
    out = write_bundle(render_bundle(load_default_spec()), tmp_path / "b")
    result = check.check_grafana_schema(out)
    assert result.status == "passed", result.detail
    assert result.version == pinned_version()
    assert "no model, not checked" in result.subject and "'alertlist' panel" in result.subject
    path = sorted((out / "grafana" / "dashboards").glob("*.json"))[0]
    model = json.loads(path.read_text())
    model["panels"][1]["maxDataPoint"] = 100
    path.write_text(json.dumps(model))
    result = check.check_grafana_schema(out)
    assert result.status == "failed"
    assert result.detail.startswith(f"grafana/dashboards/{path.name}: panels[1].maxDataPoint: unknown field 'maxDataPoint' of ")


def test_obsgen_check_skips_with_the_reason_without_the_sdk(tmp_path, monkeypatch):
    out = write_bundle(render_bundle(load_default_spec()), tmp_path / "b")
    monkeypatch.setattr(grafana_schema, "available", lambda: None)
    result = check.check_grafana_schema(out)
    assert (result.status, result.detail) == (
        "skipped", "grafana-foundation-sdk is not installed: pip install 'obsgen[test]'")
