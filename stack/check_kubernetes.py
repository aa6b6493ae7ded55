"""`obsgen check DIR` on a kubernetes bundle (a folder with kustomization.yaml).

Same habit as ``stack.check``: one adapter per tool, pure functions for what no tool checks.

- core objects (Deployment, Service, ConfigMap, ...) against Kubernetes' published OpenAPI
  schemas for the pinned minor (``kubernetes:`` in stack/data/versions.yaml), strict (unknown
  fields refused), with kubernetes-validate, which ships those schemas;
- Prometheus Operator objects decoded strictly against the Operator's Go API types by
  tools/k8s-check (built by scripts/install-tools.sh);
- every object dry-run on a real kube-apiserver with etcd (stack/kube_dry_run.py), the Operator's
  CRDs applied: server-side defaulting, validation, CEL rules, admission, strict fields;
- the rule groups inside each PrometheusRule and the collector config inside its ConfigMap,
  extracted into a compose-shaped scratch folder, through the very adapters a compose bundle
  gets: promtool check rules, promtool test rules (the bundle's prometheus-tests/), pint lint,
  otelcol validate;
- kustomization.yaml lists every object file, and the bundle holds no Secret (only references);
- the chart values files (charts/, not kustomize resources): every key they set exists in the
  pinned chart version's default values with a value of the same kind (stack/chart_pins.py), the
  Loki chart's values.schema.json accepts its file, and the Jaeger config the Jaeger values carry
  passes `jaeger validate`, as the compose target's does.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from stack import check as base
from stack import tools
from stack.chart_pins import (
    CHARTS_DIR,
    PASS_THROUGH,
    chart_of,
    chart_pins,
    default_keys,
    key_problems,
    values_schema,
)
from stack.kube_dry_run import CRDS_SHARED, ApiServer, DryRunError, dry_run_bundle

KUSTOMIZATION = "kustomization.yaml"
TESTS_DIR = "prometheus-tests"
RULE_FILE_ANNOTATION = "obsgen.dev/rule-file"
OPERATOR_GROUP = "monitoring.coreos.com/"
COLLECTOR_CONFIG_MAP = "collector-config"


def is_kubernetes_bundle(bundle: Path) -> bool:
    return (bundle / KUSTOMIZATION).is_file()


@lru_cache(maxsize=1)
def kubernetes_version() -> str:
    raw = yaml.safe_load(resources.files("stack").joinpath("data/versions.yaml").read_text(encoding="utf-8"))
    return str(raw["kubernetes"]["version"])


def load_objects(bundle: Path) -> dict[str, list[dict]]:
    """bundle path -> the objects of every YAML file outside prometheus-tests/."""
    found: dict[str, list[dict]] = {}
    for path in sorted(bundle.rglob("*.yaml")):
        relative = path.relative_to(bundle).as_posix()
        if relative == KUSTOMIZATION or relative.startswith((TESTS_DIR + "/", CHARTS_DIR + "/")):
            continue
        try:
            documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        except yaml.YAMLError as exc:
            raise ValueError(f"{relative} is not valid YAML: {exc}") from None
        found[relative] = documents
    return found


# ---------------------------------------------------------------------------------------
# Pure checks
# ---------------------------------------------------------------------------------------


def kustomization_problems(kustomization: Any, object_files: set[str]) -> list[str]:
    """Every object file listed once, every listed file present."""
    listed = (kustomization or {}).get("resources") or [] if isinstance(kustomization, dict) else []
    problems = [f"{KUSTOMIZATION} lists {path}, which the bundle does not have" for path in listed if path not in object_files]
    problems += [f"{path} is not listed in {KUSTOMIZATION} resources" for path in sorted(object_files - set(listed))]
    problems += [f"{path} is listed twice" for path in sorted({p for p in listed if listed.count(p) > 1})]
    if not isinstance(kustomization, dict) or not kustomization.get("namespace"):
        problems.append(f"{KUSTOMIZATION} sets no namespace")
    return problems


def secret_problems(objects: dict[str, list[dict]]) -> list[str]:
    """The bundle references Secrets by name and key; it never carries one."""
    return [f"{path}: a Secret object ({(obj.get('metadata') or {}).get('name')}): secrets are created by the operator "
            "of the cluster, never rendered" for path, objs in objects.items() for obj in objs if obj.get("kind") == "Secret"]


def schema_problems(objects: dict[str, list[dict]], version: str) -> tuple[int, list[str]]:
    """(objects checked, problems): core objects against the Kubernetes OpenAPI schemas, strict."""
    import kubernetes_validate

    checked, problems = 0, []
    for path, objs in objects.items():
        for obj in objs:
            if str(obj.get("apiVersion", "")).startswith(OPERATOR_GROUP):
                continue  # custom resources: the Operator's types (k8s-check)
            checked += 1
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                problems.append(f"{path}: {obj.get('kind')} {(obj.get('metadata') or {}).get('name')}: {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{path}: no Kubernetes {version} schema for {obj.get('apiVersion')} {obj.get('kind')}")
    return checked, problems


def leading_comments(path: Path) -> str:
    """The comment lines a YAML file starts with."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def extract(objects: dict[str, list[dict]], bundle: Path, scratch: Path) -> list[str]:
    """Write the PrometheusRule groups, their tests, the collector config and the dashboards in compose's layout
    under ``scratch``; returns problems (a PrometheusRule without its file annotation)."""
    problems = []
    for path, objs in objects.items():
        for obj in objs:
            name = (obj.get("metadata") or {}).get("name")
            if obj.get("kind") == "PrometheusRule":
                file = ((obj.get("metadata") or {}).get("annotations") or {}).get(RULE_FILE_ANNOTATION)
                if not file or "/" in file:
                    problems.append(f"{path}: PrometheusRule {name} has no {RULE_FILE_ANNOTATION} annotation")
                    continue
                target = scratch / "prometheus" / "rules" / file
                target.parent.mkdir(parents=True, exist_ok=True)
                # The file's leading comments carry pint's file-level directives: keep them.
                target.write_text(leading_comments(bundle / path)
                                  + yaml.safe_dump({"groups": (obj.get("spec") or {}).get("groups")}, sort_keys=False),
                                  encoding="utf-8")
            elif obj.get("kind") == "ConfigMap" and name == COLLECTOR_CONFIG_MAP:
                target = scratch / base.COLLECTOR_CONFIG
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text((obj.get("data") or {}).get("config.yaml", ""), encoding="utf-8")
            elif obj.get("kind") == "ConfigMap":
                # Dashboards for Grafana's sidecar: the same JSON compose provisions, checked the same way.
                for key, text in (obj.get("data") or {}).items():
                    if key.endswith(".json") and "/" not in key:
                        target = scratch / base.DASHBOARDS_GLOB.replace("*.json", key)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text(text, encoding="utf-8")
    tests = bundle / TESTS_DIR
    if tests.is_dir():
        shutil.copytree(tests, scratch / "prometheus" / "tests")
    return problems


def load_chart_values(bundle: Path) -> tuple[dict[str, dict], list[str]]:
    """(chart -> its values file's content, problems): every file of charts/ is a pinned chart's."""
    found: dict[str, dict] = {}
    problems = []
    for path in sorted((bundle / CHARTS_DIR).glob("*")) if (bundle / CHARTS_DIR).is_dir() else []:
        relative = path.relative_to(bundle).as_posix()
        chart = chart_of(relative)
        if chart is None:
            problems.append(f"{relative}: not the values file of a pinned chart ({', '.join(sorted(chart_pins()))})")
            continue
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            problems.append(f"{relative} is not valid YAML: {exc}")
            continue
        if not isinstance(values, dict):
            problems.append(f"{relative}: expected a mapping of chart values")
            continue
        found[chart] = values
    return found, problems


def chart_key_problems(chart: str, values: dict) -> list[str]:
    """Keys the values file sets that the pinned chart version's defaults lack, or of another kind."""
    pin = chart_pins()[chart]
    passed_on = frozenset(PASS_THROUGH.get(chart, {}))
    return [f"{CHARTS_DIR}/{chart}-values.yaml: {problem} ({chart} {pin.version})"
            for problem in key_problems(values, default_keys(chart), passed_on)]


def chart_schema_problems(chart: str, values: dict) -> list[str]:
    """The chart's own values.schema.json (where it has one), as helm applies it."""
    import jsonschema

    schema = values_schema(chart)
    if schema is None:
        return []
    # Its $schema names draft-07 by an https URL, which jsonschema does not recognise: say it.
    validator = (jsonschema.Draft7Validator if "draft-07" in str(schema.get("$schema")) else
                 jsonschema.validators.validator_for(schema))(schema)
    return [f"{CHARTS_DIR}/{chart}-values.yaml: {'.'.join(map(str, error.path)) or '(root)'}: {error.message}"
            for error in sorted(validator.iter_errors(values), key=lambda e: list(map(str, e.path)))]


# ---------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------


def check_schemas(objects: dict[str, list[dict]]) -> base.CheckResult:
    name = f"kubernetes-validate (Kubernetes {kubernetes_version()} OpenAPI, strict)"
    try:
        import kubernetes_validate  # noqa: F401
        from importlib.metadata import version
    except ImportError:
        return base.CheckResult(name, "skipped", detail="kubernetes-validate is not installed: pip install 'obsgen[test]'")
    checked, problems = schema_problems(objects, kubernetes_version())
    subject, tool, tool_version = f"{checked} core objects", "kubernetes-validate", version("kubernetes-validate")
    if problems:
        return base.CheckResult(name, "failed", subject, tool, tool_version, "\n".join(problems))
    return base.CheckResult(name, "passed", subject, tool, tool_version)


def check_operator_types(bundle: Path, files: list[str]) -> base.CheckResult:
    result = base._tool_check(
        bundle, "k8s-check (Prometheus Operator types, strict)", "k8s-check", files,
        lambda tool, files: [tool, *files], "object files",
    )
    return base._with_subject(result, "every object file") if files else result


DRY_RUN = "kube-apiserver dry run (server-side, strict)"


def operator_crds() -> tuple[str, Path | None]:
    """(Operator API version, where scripts/install-tools.sh generated its CRDs or None)."""
    version = tools.native_tools()["k8s-check"].version
    return version, tools.find_shared(f"{CRDS_SHARED}/v{version}")


def check_dry_run(objects: dict[str, list[dict]], server: ApiServer | None = None) -> base.CheckResult:
    """Every object through a real API server (``server``, or one started for this check)."""
    version, crd_dir = operator_crds()
    if crd_dir is None:
        return base.CheckResult(DRY_RUN, "skipped", detail=f"the Prometheus Operator v{version} CRDs were not found "
                                f"in share/{CRDS_SHARED}/v{version} beside the tools; {tools.INSTALL_HINT}")
    found = {tool: base.find_tool(tool) for tool in ("kube-apiserver", "etcd")}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        return base.CheckResult(DRY_RUN, "skipped", detail=base.not_found_message(base.TOOL_NAMES[missing[0]]))
    binary = found["kube-apiserver"]
    try:
        if server is not None:
            checked, problems = dry_run_bundle(server, objects, crd_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="obsgen-apiserver-") as directory, \
                    ApiServer(binary, found["etcd"], Path(directory)) as started:
                checked, problems = dry_run_bundle(started, objects, crd_dir)
    except DryRunError as exc:
        return base.CheckResult(DRY_RUN, "failed", "every object", binary, base.tool_version(binary), str(exc))
    subject = f"{checked} objects, Operator v{version} CRDs"
    return base.CheckResult(DRY_RUN, "failed" if problems else "passed", subject, binary, base.tool_version(binary),
                            "\n".join(problems))


def run_checks(bundle: Path, api_server: ApiServer | None = None) -> list[base.CheckResult]:
    """Every check of a kubernetes bundle; ``api_server``: one already running for the dry run
    (the tests share one across bundles), else the dry run starts its own."""
    results: list[base.CheckResult] = []
    try:
        objects = load_objects(bundle)
        kustomization = yaml.safe_load((bundle / KUSTOMIZATION).read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as exc:
        return [base.CheckResult("kubernetes bundle", "failed", KUSTOMIZATION, detail=str(exc))]
    results.append(base._own_result("kustomization lists every object file",
                                    kustomization_problems(kustomization, set(objects)), KUSTOMIZATION))
    results.append(base._own_result("no Secret values in the bundle", secret_problems(objects), "every object"))
    results.append(check_schemas(objects))
    results.append(check_operator_types(bundle, sorted(objects)))
    results.append(check_dry_run(objects, api_server))
    with tempfile.TemporaryDirectory(prefix="obsgen-k8s-") as directory:
        scratch = Path(directory)
        problems = extract(objects, bundle, scratch)
        results.append(base._own_result("PrometheusRule objects name their rule file", problems, "prometheus-rules/"))
        extracted = [base.check_promtool_rules(scratch), base.check_promtool_tests(scratch),
                     base.check_pint(scratch), base.check_otelcol(scratch), base.check_dashboard_uids(scratch),
                     base.check_promql(scratch), base.check_grafana_schema(scratch)]
        charts, chart_problems = load_chart_values(bundle)
        jaeger_config = (charts.get("jaeger") or {}).get("userconfig")
        if jaeger_config is not None:
            target = scratch / base.JAEGER_CONFIG
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump(jaeger_config, sort_keys=False), encoding="utf-8")
        extracted.append(base.check_jaeger(scratch))
    where = {"promtool check rules": "groups of each PrometheusRule", "promtool test rules": f"{TESTS_DIR}/*.yml",
             "pint lint": "groups of each PrometheusRule", "otelcol validate": f"ConfigMap {COLLECTOR_CONFIG_MAP}",
             "jaeger validate": f"{CHARTS_DIR}/jaeger-values.yaml userconfig"}
    for result in extracted:
        results.append(base._with_subject(result, where.get(result.name, result.subject)))
    results += check_chart_values(charts, chart_problems)
    return results


def check_chart_values(charts: dict[str, dict], problems: list[str]) -> list[base.CheckResult]:
    versions = ", ".join(f"{chart} {chart_pins()[chart].version}" for chart in sorted(charts))
    missing = sorted(set(chart_pins()) - set(charts))
    problems = problems + [f"{CHARTS_DIR}/{chart}-values.yaml is missing" for chart in missing]
    for chart, values in sorted(charts.items()):
        problems += chart_key_problems(chart, values)
    results = [base._own_result("chart values: keys of the pinned charts' defaults", problems,
                                f"{CHARTS_DIR}/ ({versions})")]
    name = "chart values: the charts' values.schema.json"
    with_schema = sorted(chart for chart in charts if values_schema(chart) is not None)
    try:
        import jsonschema  # noqa: F401
        from importlib.metadata import version
    except ImportError:
        return results + [base.CheckResult(name, "skipped", detail="jsonschema is not installed: pip install 'obsgen[test]'")]
    schema_problems = [p for chart in with_schema for p in chart_schema_problems(chart, charts[chart])]
    subject = ", ".join(f"{CHARTS_DIR}/{chart}-values.yaml" for chart in with_schema)
    status = "failed" if schema_problems else "passed"
    return results + [base.CheckResult(name, status, subject, "jsonschema", version("jsonschema"), "\n".join(schema_problems))]
