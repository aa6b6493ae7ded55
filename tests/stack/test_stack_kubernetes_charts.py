"""Target kubernetes: the chart values files (charts/<chart>-values.yaml).

By value (each setting follows the spec and the compose target's configs), and against the real
charts: every key must exist in the pinned chart version's default values.yaml with a value of the
same kind (stack/data/charts/<chart>-<version>.tsv, extracted from the chart source at its release
tag by scripts/chart_value_keys.py), the Loki chart's own values.schema.json must accept its file,
and the blocks the Loki chart hands to Loki's config must be Loki config keys (Loki's reference).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stack import chart_pins, check_kubernetes
from stack.load import load_default_spec, load_spec_file
from stack.render import render_bundle
from stack.renderers import alertmanager, charts, jaeger, loki
from stack.spec import pinned_versions
from stack.topology import Topology
from tests.stack.test_stack_loki import leaves, reference, type_problem

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SPECS = sorted((HERE / "specs").glob("*.yaml"))


def k8s(spec, **kubernetes_settings):
    update: dict = {"target": "kubernetes"}
    if kubernetes_settings:
        update["kubernetes"] = spec.kubernetes.model_copy(update=kubernetes_settings)
    return spec.model_copy(update=update)


def values(bundle, chart: str) -> dict:
    return yaml.safe_load(bundle[chart_pins.values_path(chart)])


@pytest.fixture(scope="module")
def default_spec():
    return k8s(load_default_spec())


@pytest.fixture(scope="module")
def default_bundle(default_spec):
    return render_bundle(default_spec)


# ---------------------------------------------------------------------------------------
# One file per pinned chart, by value
# ---------------------------------------------------------------------------------------


def test_one_values_file_per_pinned_chart_and_none_for_kustomize(default_bundle):
    pins = chart_pins.chart_pins()
    assert set(pins) == set(charts.SETTINGS) == {"kube-prometheus-stack", "loki", "jaeger"}
    assert {p for p in default_bundle if p.startswith("charts/")} == {f"charts/{c}-values.yaml" for c in pins}
    resources = yaml.safe_load(default_bundle["kustomization.yaml"])["resources"]
    assert not [r for r in resources if r.startswith("charts/")]
    for chart, pin in pins.items():
        text = default_bundle[chart_pins.values_path(chart)].decode()
        # The header says how to install exactly this chart version with this file.
        assert f"helm upgrade --install {pin.release} {pin.repo_name}/{chart} --version {pin.version}" in text
        assert f"--namespace obsgen-demo --create-namespace -f charts/{chart}-values.yaml" in text


def test_kube_prometheus_stack_values(default_spec, default_bundle):
    kps = values(default_bundle, "kube-prometheus-stack")
    selector = {"matchLabels": {"release": "kube-prometheus-stack"}}
    spec = kps["prometheus"]["prometheusSpec"]
    assert spec["enableFeatures"] == ["exemplar-storage"]
    assert spec["ruleSelector"] == spec["serviceMonitorSelector"] == selector
    assert kps["alertmanager"]["alertmanagerSpec"] == {"alertmanagerConfigSelector": selector,
                                                       "alertmanagerConfigMatcherStrategy": {"type": "None"}}
    prometheus = default_spec.components.prometheus
    assert (spec["scrapeInterval"], spec["evaluationInterval"], spec["retention"]) == (
        prometheus.scrape_interval, prometheus.evaluation_interval, prometheus.retention)
    # The very template the compose target's Alertmanager loads, under the name its config globs.
    assert kps["alertmanager"]["templateFiles"] == {"obsgen.tmpl": alertmanager.notification_template()}
    assert kps["grafana"]["sidecar"] == {
        "datasources": {"defaultDatasourceEnabled": False, "alertmanager": {"enabled": False},
                        "label": "grafana_datasource", "labelValue": "1"},
        "dashboards": {"label": "grafana_dashboard", "labelValue": "1"}}
    assert "&id" not in default_bundle["charts/kube-prometheus-stack-values.yaml"].decode()  # no YAML aliases


def test_values_follow_the_spec_labels_and_settings():
    spec = k8s(load_default_spec(), namespace="observability", selector_labels={"prometheus": "main"},
               dashboard_labels={"team-dashboards": "yes"}, datasource_labels={"team-datasources": "yes"})
    spec = spec.model_copy(update={"components": spec.components.model_copy(update={
        "prometheus": spec.components.prometheus.model_copy(update={"retention": "40d", "scrape_interval": "30s"})})})
    bundle = render_bundle(spec)
    kps = values(bundle, "kube-prometheus-stack")
    prometheus = kps["prometheus"]["prometheusSpec"]
    assert prometheus["ruleSelector"] == {"matchLabels": {"prometheus": "main"}}
    assert kps["alertmanager"]["alertmanagerSpec"]["alertmanagerConfigSelector"] == {"matchLabels": {"prometheus": "main"}}
    assert (prometheus["retention"], prometheus["scrapeInterval"]) == ("40d", "30s")
    assert kps["grafana"]["sidecar"]["dashboards"] == {"label": "team-dashboards", "labelValue": "yes"}
    assert kps["grafana"]["sidecar"]["datasources"]["label"] == "team-datasources"
    assert "--namespace observability" in bundle["charts/loki-values.yaml"].decode()
    # The objects carry those labels: the chart's selectors select them.
    for path in bundle:
        if path.startswith("monitors/"):
            assert yaml.safe_load(bundle[path])["metadata"]["labels"]["prometheus"] == "main"


def test_loki_values_run_the_compose_schema_limits_and_retention(default_spec, default_bundle):
    compose = loki.config(default_spec, Topology(default_spec))
    values_ = values(default_bundle, "loki")
    assert values_["deploymentMode"] == "SingleBinary" and values_["singleBinary"] == {"replicas": 1}
    assert values_["loki"]["auth_enabled"] is False
    assert values_["loki"]["schemaConfig"] == compose["schema_config"]
    assert values_["loki"]["limits_config"] == compose["limits_config"]
    assert values_["loki"]["limits_config"]["retention_period"] == default_spec.components.loki.retention
    assert values_["loki"]["compactor"] == {"retention_enabled": True, "delete_request_store": "filesystem"}


def test_jaeger_values_run_the_compose_config_on_the_pinned_version(default_spec, default_bundle):
    values_ = values(default_bundle, "jaeger")
    assert values_["jaeger"]["image"]["tag"] == pinned_versions()["jaeger"].version
    config = jaeger.config(default_spec, Topology(default_spec))
    assert values_["userconfig"] == config
    # The chart's Service and probes use these container ports (templates/jaeger/jaeger-deploy.yaml).
    extensions = config["extensions"]
    assert extensions["healthcheckv2"]["http"]["endpoint"].endswith(":13133")
    assert extensions["jaeger_query"]["http"]["endpoint"].endswith(":16686")
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")


# ---------------------------------------------------------------------------------------
# Against the real charts (their default values at the pinned release tag)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("load", [pytest.param(lambda: k8s(load_default_spec()), id="default")] + [
    pytest.param(lambda path=path: k8s(load_spec_file(path)), id=path.stem) for path in SPECS])
def test_every_key_exists_in_the_pinned_chart_with_a_value_of_its_kind(load):
    bundle = render_bundle(load())
    for chart in chart_pins.chart_pins():
        assert check_kubernetes.chart_key_problems(chart, values(bundle, chart)) == []
        assert check_kubernetes.chart_schema_problems(chart, values(bundle, chart)) == []


def test_the_vendored_key_lists_are_of_the_pinned_chart_versions():
    for chart, pin in chart_pins.chart_pins().items():
        path = ROOT / "stack" / "data" / "charts" / f"{chart}-{pin.version}.tsv"
        header = path.read_text(encoding="utf-8").splitlines()[:2]
        assert header[0].startswith(f"# Helm chart {chart} {pin.version} (appVersion {pin.app_version})"), header
        assert "commit " in header[1]
        assert len(chart_pins.default_keys(chart)) > 150  # the extracted list, not a stub
    kps = chart_pins.default_keys("kube-prometheus-stack")
    assert kps["prometheus.prometheusSpec.ruleSelector"] == "open"
    assert kps["prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues"] == "bool"
    assert kps["grafana.sidecar.datasources"] == "map"
    assert chart_pins.default_keys("loki")["singleBinary.replicas"] == "int"
    assert chart_pins.default_keys("jaeger")["userconfig"] == "null"
    assert chart_pins.values_schema("loki") is not None and chart_pins.values_schema("jaeger") is None


@pytest.mark.parametrize("chart, edit, expected", [
    ("kube-prometheus-stack", lambda v: v["prometheus"]["prometheusSpec"].update(enableFeature=["x"]),
     "prometheus.prometheusSpec.enableFeature: not a key of the chart's values (kube-prometheus-stack 88.5.3)"),
    ("kube-prometheus-stack", lambda v: v["grafana"]["sidecar"]["datasources"].update(defaultDatasourceEnabled="no"),
     "grafana.sidecar.datasources.defaultDatasourceEnabled: the chart's default is a bool, got 'no'"),
    ("kube-prometheus-stack", lambda v: v["alertmanager"].update(alertmanagerSpec=["x"]),
     "alertmanager.alertmanagerSpec: the chart expects a mapping"),
    ("loki", lambda v: v["singleBinary"].update(replicas="one"), "singleBinary.replicas: the chart's default is a int"),
    ("loki", lambda v: v.update(deploymentMod="SingleBinary"), "deploymentMod: not a key"),
    ("jaeger", lambda v: v["jaeger"].update(imag={}), "jaeger.imag: not a key"),
])
def test_the_key_check_refuses_unknown_keys_and_wrong_kinds(default_bundle, chart, edit, expected):
    values_ = values(default_bundle, chart)
    edit(values_)
    problems = check_kubernetes.chart_key_problems(chart, values_)
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_loki_values_schema_is_applied(default_bundle):
    values_ = values(default_bundle, "loki")
    values_["loki"]["rulerConfig"] = "s3"  # the chart's schema wants an object or null
    problems = check_kubernetes.chart_schema_problems("loki", values_)
    assert len(problems) == 1 and "loki.rulerConfig" in problems[0] and "'s3'" in problems[0], problems


def test_open_null_and_passed_on_keys_are_not_the_charts_to_check():
    keys = {"a": "map", "a.b": "open", "a.c": "null", "a.d": "map", "a.d.e": "int"}
    assert chart_pins.key_problems({"a": {"b": {"x": 1}, "c": [1], "d": {"e": 2}}}, keys) == []
    assert chart_pins.key_problems({"a": {"d": {"f": 1}}}, keys) == ["a.d.f: not a key of the chart's values"]
    assert chart_pins.key_problems({"a": {"d": {"f": 1}}}, keys, frozenset({"a.d"})) == []
    # A passed-on key must still be a key of the chart.
    assert chart_pins.key_problems({"z": {}}, keys, frozenset({"z"})) == ["z: not a key of the chart's values"]


def test_blocks_the_loki_chart_passes_to_loki_are_loki_config_keys(default_bundle):
    # The chart's `loki.config` template writes these blocks into Loki's config as they are.
    known = reference()
    values_ = values(default_bundle, "loki")
    problems = []
    for chart_path, section in chart_pins.PASS_THROUGH["loki"].items():
        block = values_
        for key in chart_path.split("."):
            block = block[key]
        for path, value in leaves(block, section):
            if path not in known:
                problems.append(f"{chart_path} -> {path}: not a Loki config key")
            elif (problem := type_problem(known[path], value)) is not None:
                problems.append(f"{chart_path} -> {path}: {problem}")
    assert problems == [] and len(chart_pins.PASS_THROUGH["loki"]) == 3


def test_the_key_list_script_extracts_kinds(tmp_path):
    spec = importlib.util.spec_from_file_location("chart_value_keys", ROOT / "scripts" / "chart_value_keys.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    defaults = {"a": {"b": {}, "c": None, "d": [1], "e": True, "f": 2, "g": 0.5, "h": "x", "i": {"j": "k"}}}
    assert script.key_paths(defaults) == [
        ("a", "map"), ("a.b", "open"), ("a.c", "null"), ("a.d", "list"), ("a.e", "bool"), ("a.f", "int"),
        ("a.g", "float"), ("a.h", "str"), ("a.i", "map"), ("a.i.j", "str")]


def test_importing_the_kubernetes_checker_leaves_the_tool_table_alone():
    code = ("import stack.check as c; before = {k: v for k, v in c.TOOL_NAMES.items()}; "
            "import stack.check_kubernetes; assert c.TOOL_NAMES == before, c.TOOL_NAMES; "
            "assert c.TOOL_NAMES['k8s-check'] == ('k8s-check',)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
