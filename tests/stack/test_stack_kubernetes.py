"""Target kubernetes: objects by value, the golden folder of the default spec, every test spec
through `obsgen check` (Kubernetes OpenAPI schemas, the Operator's Go types, promtool, pint,
otelcol), and the checkers refusing what they must refuse.

Refresh the golden folder after an intended change, then review its diff:
    OBSGEN_UPDATE_GOLDEN=1 python -m pytest -q tests/stack/test_stack_kubernetes.py -k golden
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from stack import check_kubernetes
from stack.check import check_grafana_schema, check_pint, format_report
from stack.check_bundle import run_checks
from stack.load import load_default_spec, load_spec_file
from stack.render import render_bundle
from stack.renderers import alertmanager, collector, grafana, kubernetes, rules, wiring
from stack.spec import Spec
from stack.topology import Topology
from stack.write import check_drift, write_bundle
from stack.kube_dry_run import ApiServer
from tests.conftest import missing_tool, require_binary

HERE = Path(__file__).parent
GOLDEN = HERE / "golden-kubernetes"
SPECS = sorted((HERE / "specs").glob("*.yaml"))


def k8s(spec: Spec, **kubernetes_settings) -> Spec:
    update: dict = {"target": "kubernetes"}
    if kubernetes_settings:
        update["kubernetes"] = spec.kubernetes.model_copy(update=kubernetes_settings)
    return spec.model_copy(update=update)


def documents(bundle, path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(bundle[path]) if d is not None]


def objects_of(bundle, kind: str) -> list[dict]:
    return [d for path in bundle if path.endswith(".yaml") and path != "kustomization.yaml"
            and not path.startswith(("prometheus-tests/", "charts/")) for d in documents(bundle, path) if d["kind"] == kind]


def spec_cases() -> list:
    return [pytest.param(lambda: k8s(load_default_spec()), id="default")] + [
        pytest.param(lambda path=path: k8s(load_spec_file(path)), id=path.stem) for path in SPECS
    ]


@pytest.fixture(scope="module")
def default_spec() -> Spec:
    return k8s(load_default_spec())


@pytest.fixture(scope="module")
def default_bundle(default_spec):
    return render_bundle(default_spec)


@pytest.fixture(scope="module")
def api_server():
    """One etcd + kube-apiserver on 127.0.0.1 for this module's dry runs, stopped by pid at its end."""
    kube_apiserver, etcd = require_binary("kube-apiserver"), require_binary("etcd")
    version, crd_dir = check_kubernetes.operator_crds()
    if crd_dir is None:
        missing_tool(f"the Prometheus Operator v{version} CRDs are not generated: run scripts/install-tools.sh")
    with tempfile.TemporaryDirectory(prefix="obsgen-apiserver-") as directory:
        server = ApiServer(kube_apiserver, etcd, Path(directory))
        with server:
            yield server
        assert server.proc.poll() is not None and server.etcd_proc.poll() is not None, "still running"


# ---------------------------------------------------------------------------------------
# By value, per kind
# ---------------------------------------------------------------------------------------


def test_only_kubernetes_files_and_kustomization_lists_every_object_file(default_spec, default_bundle):
    assert not any(p.startswith(("prometheus/", "docker-compose", "local/")) for p in default_bundle)
    kustomization = yaml.safe_load(default_bundle["kustomization.yaml"])
    assert kustomization["namespace"] == default_spec.project
    object_files = {p for p in default_bundle if p.endswith(".yaml") and p != "kustomization.yaml"}
    object_files -= {p for p in object_files if p.startswith("charts/")}  # chart values: for helm, not kustomize
    assert set(kustomization["resources"]) == object_files
    assert all((p.startswith("prometheus-tests/") and p.endswith(".yml")) or p.startswith("charts/")
               for p in set(default_bundle) - object_files - {"kustomization.yaml"})


def test_prometheus_rules_hold_exactly_the_compose_groups(default_spec, default_bundle):
    built = rules.build(default_spec, Topology(default_spec))
    found = {r["metadata"]["annotations"]["obsgen.dev/rule-file"]: r for r in objects_of(default_bundle, "PrometheusRule")}
    assert set(found) == set(built.rules) == {
        # host and process alerts read kube-prometheus-stack's node exporter and the pods' process
        # metrics; no blackbox probes are rendered there, so no probe alerts.
        "websocket.yml", "stack.yml", "host.yml", "process.yml", "slo-message-availability-recording.yml", "slo-message-availability-alerts.yml",
        "slo-publish-latency-recording.yml", "slo-publish-latency-alerts.yml"}
    for file, rule in found.items():
        assert rule["spec"]["groups"] == built.rules[file]
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The compose bundle's rule files hold the same groups.
    compose = render_bundle(default_spec.model_copy(update={"target": "compose"}))
    for file, rule in found.items():
        assert yaml.safe_load(compose[f"prometheus/rules/{file}"])["groups"] == rule["spec"]["groups"]


def test_selector_labels_and_namespace_come_from_the_spec():
    spec = k8s(load_default_spec(), namespace="observability", selector_labels={"prometheus": "main"})
    bundle = render_bundle(spec)
    for kind in ("PrometheusRule", "ServiceMonitor", "AlertmanagerConfig"):
        for obj in objects_of(bundle, kind):
            assert obj["metadata"]["labels"]["prometheus"] == "main" and "release" not in obj["metadata"]["labels"]
            assert obj["metadata"]["namespace"] == "observability"
    assert yaml.safe_load(bundle["kustomization.yaml"])["namespace"] == "observability"


def test_service_monitors_give_the_compose_jobs_labels(default_spec, default_bundle):
    monitors = {m["metadata"]["name"]: m for m in objects_of(default_bundle, "ServiceMonitor")}
    assert set(monitors) == {s.name for s in default_spec.services} | {"collector"}
    server = monitors["ws-server"]["spec"]["endpoints"][0]
    assert {"action": "replace", "targetLabel": "job", "replacement": "ws-server"} in server["relabelings"]
    assert {"action": "replace", "targetLabel": "service", "replacement": "ws-server"} in server["relabelings"]
    jobs = [(e["port"], e.get("honorLabels", False), e["relabelings"]) for e in monitors["collector"]["spec"]["endpoints"]]
    assert [(port, honor, relabel[0]["replacement"], relabel[1]["replacement"]) for port, honor, relabel in jobs] == [
        ("metrics", False, "collector", ""), ("prometheus", True, "collector_exporter", "")]


def test_alertmanager_config_has_the_compose_routes_receivers_and_inhibitions(default_spec, default_bundle):
    (config,) = objects_of(default_bundle, "AlertmanagerConfig")
    compose = alertmanager.config(default_spec, Topology(default_spec))
    assert [r["name"] for r in config["spec"]["receivers"]] == [r["name"] for r in compose["receivers"]]
    route = config["spec"]["route"]
    assert route["receiver"] == compose["route"]["receiver"]
    assert route["groupBy"] == compose["route"]["group_by"] and route["repeatInterval"] == compose["route"]["repeat_interval"]
    assert route["routes"][0]["matchers"] == [{"name": "severity", "value": "critical", "matchType": "="}]
    assert route["routes"][1]["matchers"] == [{"name": "severity", "value": "warning|info", "matchType": "=~"}]
    assert config["spec"]["inhibitRules"] == [{
        "sourceMatch": [{"name": "severity", "value": "critical", "matchType": "="}],
        "targetMatch": [{"name": "severity", "value": "warning", "matchType": "="}],
        "equal": ["alertname", "service"]}]


def test_alertmanager_credentials_are_secret_key_references():
    spec = k8s(load_spec_file(HERE / "specs" / "all-receivers.yaml"))
    bundle = render_bundle(spec)
    (config,) = objects_of(bundle, "AlertmanagerConfig")
    receivers = {r["name"]: r for r in config["spec"]["receivers"]}
    refs = []
    for receiver in receivers.values():
        for slack in receiver.get("slackConfigs", []):
            refs.append(slack["apiURL"])
        for pager in receiver.get("pagerdutyConfigs", []):
            refs.append(pager["routingKey"])
        for hook in receiver.get("webhookConfigs", []):
            refs += [hook["urlSecret"]] if "urlSecret" in hook else []
        for mail in receiver.get("emailConfigs", []):
            refs += [mail["authPassword"]] if "authPassword" in mail else []
    expected = sorted(wiring.secret_files(spec))
    assert sorted(ref["key"] for ref in refs) == expected and expected
    assert {ref["name"] for ref in refs} == {kubernetes.ALERTMANAGER_SECRET}
    assert not objects_of(bundle, "Secret")
    # The Secret's name and keys are documented in the kustomization's header.
    assert all(key in bundle["kustomization.yaml"].decode() for key in expected)


def test_grafana_config_maps_hold_the_compose_text_with_the_sidecar_labels(default_spec, default_bundle):
    compose = grafana.render(default_spec, Topology(default_spec))
    maps = {m["metadata"]["name"]: m for m in objects_of(default_bundle, "ConfigMap")}
    datasources = maps[f"{default_spec.project}-datasources"]
    assert datasources["metadata"]["labels"]["grafana_datasource"] == "1"
    assert datasources["data"]["obsgen-datasources.yaml"] == compose[grafana.DATASOURCES_PATH]
    dashboards = [m for m in maps.values() if m["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dashboards) == sum(p.startswith(grafana.DASHBOARDS_DIR + "/") for p in compose)
    for dashboard in dashboards:
        ((key, text),) = dashboard["data"].items()
        assert text == compose[f"{grafana.DASHBOARDS_DIR}/{key}"]
    # In-cluster hosts: the datasources reach the charts' Services.
    assert "http://kube-prometheus-stack-prometheus:9090" in datasources["data"]["obsgen-datasources.yaml"]


def test_collector_runs_the_compose_config_with_limits_from_the_spec(default_spec, default_bundle):
    (config_map,) = [m for m in objects_of(default_bundle, "ConfigMap") if m["metadata"]["name"] == "collector-config"]
    assert config_map["data"]["config.yaml"] == collector.render(default_spec, Topology(default_spec))[collector.PATH]
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["exporters"]["otlp_grpc/jaeger"]["endpoint"] == "jaeger:4317"
    (deployment,) = [d for d in objects_of(default_bundle, "Deployment") if d["metadata"]["name"] == "collector"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # No memory in the default spec: the limit is the memory_limiter's over 0.8.
    limit_mib = default_spec.components.collector.memory_limit_mib
    assert container["resources"]["limits"]["memory"] == f"{-(-limit_mib * 10 // 8)}Mi"
    spec = k8s(load_default_spec()).model_copy(update={"components": load_default_spec().components.model_copy(update={
        "collector": default_spec.components.collector.model_copy(update={
            "resources": default_spec.components.collector.resources.model_copy(update={"memory": "1g", "cpus": 0.5})})})})
    (deployment,) = [d for d in objects_of(render_bundle(spec), "Deployment") if d["metadata"]["name"] == "collector"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}


def test_server_probes_drain_budget_and_secret(default_spec, default_bundle):
    (server,) = [d for d in objects_of(default_bundle, "Deployment") if d["metadata"]["name"] == "ws-server"]
    pod = server["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] > prestop + float(env["OBSGEN_DRAIN_TIMEOUT"])
    assert env["OBSGEN_JWT_SECRET_FILE"] == "/run/secrets/server_jwt_secret"
    assert pod["volumes"][0]["secret"]["secretName"] == kubernetes.SERVER_JWT_SECRET
    assert env["OBSGEN_REDIS_URL"] == "redis://redis:6379/0" and env["OBSGEN_BROKER"] == "redis"
    (budget,) = objects_of(default_bundle, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": server["spec"]["selector"]}
    assert [s["metadata"]["name"] for s in objects_of(default_bundle, "StatefulSet")] == ["redis"]


def test_an_existing_redis_replaces_the_statefulset():
    bundle = render_bundle(k8s(load_default_spec(), redis_url="redis://cache.shared.svc:6379/2"))
    assert not objects_of(bundle, "StatefulSet")
    (server,) = [d for d in objects_of(bundle, "Deployment") if d["metadata"]["name"] == "ws-server"]
    env = {e["name"]: e["value"] for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OBSGEN_REDIS_URL"] == "redis://cache.shared.svc:6379/2"


def test_runbooks_config_map_has_a_page_per_alert(default_spec, default_bundle):
    (runbooks,) = [m for m in objects_of(default_bundle, "ConfigMap") if m["metadata"]["name"].endswith("-runbooks")]
    names = {r["alert"] for f in rules.build(default_spec, Topology(default_spec)).rules.values()
             for g in f for r in g["rules"] if "alert" in r}
    assert set(runbooks["data"]) == {f"{name}.md" for name in names}


def test_unknown_chart_host_is_a_spec_error():
    with pytest.raises(ValueError, match="unknown component"):
        load_default_spec().kubernetes.model_validate({"hosts": {"tempo": "tempo"}})


# ---------------------------------------------------------------------------------------
# Golden, determinism
# ---------------------------------------------------------------------------------------


def test_default_kubernetes_bundle_matches_golden(default_bundle):
    if os.environ.get("OBSGEN_UPDATE_GOLDEN") == "1":
        write_bundle(default_bundle, GOLDEN)
    assert GOLDEN.is_dir(), "no golden folder yet: run with OBSGEN_UPDATE_GOLDEN=1"
    drift = check_drift(default_bundle, GOLDEN)
    assert not drift, ("the default kubernetes bundle differs from tests/stack/golden-kubernetes:\n  "
                       + "\n  ".join(map(str, drift)))


@pytest.mark.parametrize("load", spec_cases())
def test_rendering_is_deterministic(load):
    assert render_bundle(load()) == render_bundle(load())


# ---------------------------------------------------------------------------------------
# Every spec through `obsgen check`
# ---------------------------------------------------------------------------------------


def _require_kubernetes_validate() -> None:
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing_tool("kubernetes-validate is not installed (pip install '.[test]')")


@pytest.mark.parametrize("load", spec_cases())
def test_every_spec_passes_the_kubernetes_checks(load, tmp_path, api_server):
    _require_kubernetes_validate()
    for tool in ("k8s-check", "promtool", "pint", "otelcol", "jaeger"):
        require_binary(tool)
    spec = load()
    write_bundle(render_bundle(spec), tmp_path / "k8s")
    # obsgen check's checks, the dry run on this module's API server (the CLI starts its own).
    results = check_kubernetes.run_checks(tmp_path / "k8s", api_server=api_server)
    report = format_report(results)
    assert not [r for r in results if r.status == "skipped"], report
    failed = [r for r in results if r.status == "failed"]
    if [r.name for r in failed] == ["pint lint"]:
        # The groups are the compose target's: pint must judge them as it judges compose's rule files.
        write_bundle(render_bundle(spec.model_copy(update={"target": "compose"})), tmp_path / "compose")
        compose_pint = check_pint(tmp_path / "compose")
        assert compose_pint.status == "failed", f"pint fails only on the kubernetes bundle:\n{report}"
        pytest.xfail(f"pint fails the compose target's rule files of {spec.project} too (rules/slo owners):\n"
                     f"{compose_pint.detail}")
    assert not failed, f"checks failed for {spec.project} (target kubernetes):\n{report}"
    names = {r.name for r in results}
    assert {"promtool check rules", "promtool test rules", "otelcol validate", "pint lint", "jaeger validate",
            check_kubernetes.DRY_RUN, "dashboard uids", "PromQL parses", "Grafana dashboard schema"} <= names


def test_obsgen_check_dispatches_a_kubernetes_bundle_and_starts_its_own_api_server(default_bundle, tmp_path):
    _require_kubernetes_validate()
    for tool in ("k8s-check", "promtool", "pint", "otelcol", "jaeger", "kube-apiserver", "etcd"):
        require_binary(tool)
    write_bundle(default_bundle, tmp_path / "k8s")
    results = {r.name: r for r in run_checks(tmp_path / "k8s")}
    dry_run = results[check_kubernetes.DRY_RUN]
    assert dry_run.status == "passed", format_report(list(results.values()))
    objects = sum(len(objs) for objs in check_kubernetes.load_objects(tmp_path / "k8s").values())
    assert dry_run.subject.startswith(f"{objects} objects") and dry_run.version == "1.37.2"


def test_dry_run_without_the_tools_is_skipped_with_where_it_looked(default_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("OBSGEN_TOOLS", str(tmp_path / "no-tools"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    result = check_kubernetes.check_dry_run({"namespace.yaml": documents(default_bundle, "namespace.yaml")})
    assert result.status == "skipped" and "CRDs were not found" in result.detail
    (tmp_path / "no-tools" / "share" / "prometheus-operator-crds" / "v0.95.2").mkdir(parents=True)
    result = check_kubernetes.check_dry_run({"namespace.yaml": documents(default_bundle, "namespace.yaml")})
    assert result.status == "skipped" and result.detail.startswith("kube-apiserver not found; looked in"), result


# ---------------------------------------------------------------------------------------
# The API server refuses what it must (and what the offline checks let through)
# ---------------------------------------------------------------------------------------


def _dry_run_problems(api_server, path: str, obj: dict) -> list[str]:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": obj["metadata"]["namespace"]}}
    result = check_kubernetes.check_dry_run({"namespace.yaml": [namespace], path: [obj]}, api_server)
    return result.detail.splitlines() if result.status == "failed" else []


def test_dry_run_refuses_an_unknown_field_of_a_core_object(default_bundle, api_server):
    (deployment,) = [d for d in objects_of(default_bundle, "Deployment") if d["metadata"]["name"] == "ws-server"]
    assert _dry_run_problems(api_server, "d.yaml", deployment) == []
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    (problem,) = _dry_run_problems(api_server, "d.yaml", deployment)
    assert 'unknown field "spec.template.spec.containers[0].readinesProbe"' in problem, problem


def test_dry_run_refuses_a_service_port_name_the_openapi_schema_accepts(default_bundle, api_server):
    _require_kubernetes_validate()
    (service,) = [s for s in objects_of(default_bundle, "Service") if s["metadata"]["name"] == "collector"]
    service["spec"]["ports"][0]["name"] = "otlp_grpc"  # "_" is not allowed in a port name (IANA_SVC_NAME)
    assert check_kubernetes.schema_problems({"s.yaml": [service]}, "1.36") == (1, [])
    (problem,) = _dry_run_problems(api_server, "s.yaml", service)
    assert "spec.ports[0].name" in problem and "HTTP 422" in problem, problem


def test_dry_run_refuses_a_rule_duration_the_operator_types_accept(default_bundle, api_server, tmp_path):
    # k8s-check decodes into the Go types (a Duration is a string there); the CRD's schema has its pattern.
    tool = require_binary("k8s-check")
    rule = yaml.safe_load(default_bundle["prometheus-rules/websocket.yaml"])
    alert = next(r for g in rule["spec"]["groups"] for r in g["rules"] if "for" in r)
    alert["for"] = "5 minutes"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rule))
    assert subprocess.run([tool, str(tmp_path / "r.yaml")], capture_output=True, timeout=60).returncode == 0
    (problem,) = _dry_run_problems(api_server, "r.yaml", rule)
    assert "PrometheusRule" in problem and ".for" in problem and "should match" in problem, problem


def test_dry_run_refuses_an_unknown_field_of_an_operator_object(default_bundle, api_server):
    monitor = yaml.safe_load(default_bundle["monitors/collector.yaml"])
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    (problem,) = _dry_run_problems(api_server, "m.yaml", monitor)
    assert 'unknown field "spec.endpoints[0].scrapeEvery"' in problem, problem


# ---------------------------------------------------------------------------------------
# The checkers refuse what they must
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, expected", [
    (("groupBy:", "groupBy_extra:"), 'unknown field "spec.route.groupBy_extra"'),
    (("groupBy:", "groupby:"), 'unknown field "spec.route.groupby"'),  # case-sensitive, as the API server
    (("        matchType: =~", "        matchTyp: =~"), "spec.route.routes[1]: unknown field"),  # child routes too
])
def test_k8s_check_refuses_unknown_fields(default_bundle, tmp_path, edit, expected):
    tool = require_binary("k8s-check")
    path = "alertmanager/alertmanager-config.yaml"
    text = default_bundle[path].decode()
    assert edit[0] in text
    (tmp_path / "bad.yaml").write_text(text.replace(edit[0], edit[1], 1))
    proc = subprocess.run([tool, str(tmp_path / "bad.yaml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and expected in proc.stdout, proc.stdout + proc.stderr
    (tmp_path / "good.yaml").write_text(text)
    assert subprocess.run([tool, str(tmp_path / "good.yaml")], capture_output=True, timeout=60).returncode == 0


def test_k8s_check_refuses_an_unknown_field_in_a_service_monitor(default_bundle, tmp_path):
    tool = require_binary("k8s-check")
    monitor = yaml.safe_load(default_bundle["monitors/collector.yaml"])
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(monitor))
    proc = subprocess.run([tool, str(tmp_path / "m.yaml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "scrapeEvery" in proc.stdout


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}), "'readinesProbe' was unexpected"),
    (lambda d: d["spec"].update(replicas="two"), "spec/replicas: 'two' is not of type 'integer'"),
])
def test_schema_check_refuses_an_unknown_field_and_a_wrong_type(default_bundle, edit, expected):
    # kubernetes-validate reports the first problem of an object.
    _require_kubernetes_validate()
    (deployment,) = [d for d in objects_of(default_bundle, "Deployment") if d["metadata"]["name"] == "ws-server"]
    assert check_kubernetes.schema_problems({"d.yaml": [deployment]}, "1.36") == (1, [])
    edit(deployment)
    _, problems = check_kubernetes.schema_problems({"d.yaml": [deployment]}, "1.36")
    assert len(problems) == 1 and expected in problems[0], problems


def test_dashboard_config_maps_get_the_compose_dashboards_checks(default_bundle, tmp_path):
    """The dashboards a kubernetes bundle ships as ConfigMaps are extracted and walked against
    Grafana's types like compose's: an unknown panel field fails, the bundle as rendered passes."""
    objects = {path: [yaml.safe_load(text)] for path, text in default_bundle.items()
               if path.startswith("grafana/dashboard-")}
    assert len(objects) == 3, sorted(objects)
    scratch = tmp_path / "scratch"
    assert check_kubernetes.extract(objects, tmp_path, scratch) == []
    written = sorted(p.name for p in (scratch / "grafana" / "dashboards").glob("*.json"))
    assert written == sorted(key for objs in objects.values() for key in objs[0]["data"]), written
    if check_grafana_schema(scratch).status == "skipped":
        missing_tool("grafana-foundation-sdk is not installed (pip install '.[test]')")
    assert check_grafana_schema(scratch).status == "passed"
    path = next(iter(objects))
    (config_map,) = objects[path]
    key = next(iter(config_map["data"]))
    dashboard = json.loads(config_map["data"][key])
    dashboard["panels"][0]["colour"] = "red"
    config_map["data"][key] = json.dumps(dashboard)
    broken = tmp_path / "broken"
    check_kubernetes.extract(objects, tmp_path, broken)
    result = check_grafana_schema(broken)
    assert result.status == "failed" and "colour" in result.detail, result


def test_kustomization_and_secret_problems():
    assert check_kubernetes.kustomization_problems({"namespace": "x", "resources": ["a.yaml"]}, {"a.yaml"}) == []
    problems = check_kubernetes.kustomization_problems({"resources": ["a.yaml", "gone.yaml"]}, {"a.yaml", "b.yaml"})
    assert problems == ["kustomization.yaml lists gone.yaml, which the bundle does not have",
                        "b.yaml is not listed in kustomization.yaml resources", "kustomization.yaml sets no namespace"]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    assert len(check_kubernetes.secret_problems({"s.yaml": [secret]})) == 1
