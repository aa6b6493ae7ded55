"""Target kubernetes: the same component configs, packaged for a cluster running the Prometheus
Operator (kube-prometheus-stack), Grafana's sidecars, and Loki and Jaeger from their charts.

Pure: ``render(spec, topology)`` returns a kustomize folder. Nothing here re-derives a config:
rule groups, rule unit tests, the collector config, datasources, dashboards and runbooks are the
very texts the compose renderers produce (called here with the kubernetes topology, whose hosts
are in-cluster Service names); this module only wraps them in Kubernetes objects.

    kustomization.yaml                  namespace + every object file below
    namespace.yaml
    prometheus-rules/<file>.yaml        PrometheusRule per rule file (groups exactly as compose's)
    prometheus-tests/<file>.yml         promtool unit tests for them (not applied; `obsgen check`)
    monitors/<name>.yaml                ServiceMonitor per service and for the collector
    alertmanager/alertmanager-config.yaml  AlertmanagerConfig: routes, receivers, inhibitions
    grafana/datasources.yaml, grafana/dashboard-<uid>.yaml  ConfigMaps for the sidecars
    collector/{configmap,deployment,service}.yaml
    services/<name>.yaml                the built-in server and image services: Deployment, Service, PDB
    services/alert-sink.yaml            the bundled alert sink, when a webhook receiver names it
    redis/redis.yaml                    StatefulSet + headless Service (unless kubernetes.redis_url)
    runbooks/configmap.yaml             one key per runbook page
"""

from __future__ import annotations

import math
import posixpath

import yaml

from stack.renderers import alertmanager as am
from stack.renderers import collector, commands, grafana, rules, runbooks
from stack.spec import EnvSecret, Service, Spec, image_for
from stack.renderers.wiring import JWT_SECRET, kubernetes_namespace, resource_attributes, secret_files
from stack.spec import uses_alert_sink
from stack.topology import Topology

KUSTOMIZATION = "kustomization.yaml"
HEADER = "# Rendered by obsgen from the project spec (target kubernetes); edit the spec, not this file.\n"
MANAGED_BY = {"app.kubernetes.io/managed-by": "obsgen"}
RULE_FILE_ANNOTATION = "obsgen.dev/rule-file"  # the compose bundle's file name, for `obsgen check`

# Secrets the bundle references and never contains (docs/kubernetes.md says how to create them).
ALERTMANAGER_SECRET = "obsgen-alertmanager"  # keys: alertmanager_<receiver>_<field>
SERVER_JWT_SECRET = "obsgen-server-jwt"      # key: server_jwt_secret
SECRETS_DIR = "/run/secrets"

# Drain of the built-in server: the preStop sleep lets the endpoints controller and proxies drop
# the pod before SIGTERM; the server then closes every connection with 1001 (clients reconnect to
# another replica) and waits DRAIN_TIMEOUT for them; the grace period covers both plus a margin.
PRESTOP_SECONDS = 5
DRAIN_TIMEOUT_SECONDS = 10
TERMINATION_GRACE_SECONDS = PRESTOP_SECONDS + DRAIN_TIMEOUT_SECONDS + 5
# The collector's memory_limiter must act before the kernel's OOM killer: without a limit in the
# spec the container's is the limiter's over 0.8 (the limiter then sits at 80% of it).
LIMITER_SHARE = 0.8


def namespace(spec: Spec) -> str:
    return kubernetes_namespace(spec)


def _labels(spec: Spec, name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": spec.project, **MANAGED_BY}


def _selector(spec: Spec, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": spec.project}


def _meta(spec: Spec, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    meta: dict = {"name": name, "namespace": namespace(spec), "labels": dict(sorted(labels.items()))}
    if annotations:
        meta["annotations"] = annotations
    return meta


def _dump(*objects: dict, notes: str = "") -> str:
    """YAML documents under the header; ``notes`` are comment lines after it (pint reads its
    file-level directives there, as in the compose target's rule files)."""
    return HEADER + notes + "---\n".join(yaml.safe_dump(o, sort_keys=False, width=120, allow_unicode=True) for o in objects)


# ---------------------------------------------------------------------------------------
# Prometheus Operator objects
# ---------------------------------------------------------------------------------------


def prometheus_rules(spec: Spec, topology: Topology) -> dict[str, dict]:
    """file name -> PrometheusRule holding the groups the compose target renders for that file."""
    built = rules.build_once(spec, topology)
    objects = {}
    for file, groups in built.rules.items():
        stem = file.removesuffix(".yml")
        objects[file] = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": _meta(spec, f"{spec.project}-{stem}", {**_labels(spec, stem, "rules"), **spec.kubernetes.selector_labels},
                              {RULE_FILE_ANNOTATION: file}),
            "spec": {"groups": groups},
        }
    return objects


def _relabel(job: str, service: str | None) -> list[dict]:
    """The job and service target labels the compose target's scrape jobs give, so the same rules
    and dashboards select the same series (the Operator sets job and service to the Service name)."""
    return [
        {"action": "replace", "targetLabel": "job", "replacement": job},
        {"action": "replace", "targetLabel": "service", "replacement": service or ""},  # "" drops it
    ]


def _service_monitor(spec: Spec, name: str, selector: dict, endpoints: list[dict]) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(spec, name, {**_labels(spec, name, "monitoring"), **spec.kubernetes.selector_labels}),
        "spec": {
            "selector": {"matchLabels": selector},
            "namespaceSelector": {"matchNames": [namespace(spec)]},
            "endpoints": endpoints,
        },
    }


def service_monitors(spec: Spec) -> dict[str, dict]:
    interval = spec.components.prometheus.scrape_interval
    monitors = {}
    for service in spec.services:
        endpoint = {"port": "metrics", "path": service.metrics.path,
                    "interval": service.metrics.scrape_interval or interval,
                    "relabelings": _relabel(service.name, service.name)}
        # obsgen's own Services carry part-of; a service run elsewhere is found by its name label.
        selector = _selector(spec, service.name) if _deployed(service) else {"app.kubernetes.io/name": service.name}
        monitors[service.name] = _service_monitor(spec, service.name, selector, [endpoint])
    # The collector: its own telemetry (job collector) and the OTLP metrics its prometheus exporter
    # re-exposes, whose job and instance come from the sender (job collector_exporter, honorLabels).
    monitors["collector"] = _service_monitor(spec, "collector", _selector(spec, "collector"), [
        {"port": "metrics", "path": "/metrics", "interval": interval, "relabelings": _relabel("collector", None)},
        {"port": "prometheus", "path": "/metrics", "interval": interval, "honorLabels": True,
         "relabelings": _relabel("collector_exporter", None)},
    ])
    return monitors


def _matchers(texts: list[str]) -> list[dict]:
    matchers = []
    for text in texts:
        name, op, value = am.parse_matcher(text)
        matchers.append({"name": name, "value": value, "matchType": op})
    return matchers


_ROUTE_KEYS = {"group_by": "groupBy", "group_wait": "groupWait", "group_interval": "groupInterval",
               "repeat_interval": "repeatInterval", "continue": "continue"}


def _route(route: dict) -> dict:
    """An alertmanager.yml route as an AlertmanagerConfig route (camelCase, matcher objects)."""
    out: dict = {"receiver": route["receiver"]}
    if "matchers" in route:
        out["matchers"] = _matchers(route["matchers"])
    for key, field in _ROUTE_KEYS.items():
        if key in route:
            out[field] = route[key]
    if "routes" in route:
        out["routes"] = [_route(child) for child in route["routes"]]
    return out


def _secret_ref(path: str) -> dict:
    # alertmanager.yml reads <secrets dir>/<secret name>: here the key of that name in one Secret.
    return {"name": ALERTMANAGER_SECRET, "key": posixpath.basename(path)}


def _key_values(mapping: dict[str, str]) -> list[dict]:
    return [{"key": key, "value": value} for key, value in mapping.items()]


def _receiver(receiver: dict) -> dict:
    out: dict = {"name": receiver["name"]}
    for slack in receiver.get("slack_configs", []):
        out.setdefault("slackConfigs", []).append({
            "apiURL": _secret_ref(slack["api_url_file"]), "channel": slack["channel"],
            "sendResolved": slack["send_resolved"], "title": slack["title"], "text": slack["text"],
        })
    for pager in receiver.get("pagerduty_configs", []):
        out.setdefault("pagerdutyConfigs", []).append({
            "routingKey": _secret_ref(pager["routing_key_file"]), "sendResolved": pager["send_resolved"],
            "description": pager["description"], "details": _key_values(pager["details"]),
            "pagerDutyLinkConfigs": [{"href": link["href"], "alt": link["text"]} for link in pager["links"]],
        })
    for hook in receiver.get("webhook_configs", []):
        webhook: dict = {"url": hook["url"]} if "url" in hook else {"urlSecret": _secret_ref(hook["url_file"])}
        webhook["sendResolved"] = hook["send_resolved"]
        if "max_alerts" in hook:
            webhook["maxAlerts"] = hook["max_alerts"]
        out.setdefault("webhookConfigs", []).append(webhook)
    for mail in receiver.get("email_configs", []):
        email: dict = {"to": mail["to"], "from": mail["from"], "smarthost": mail["smarthost"]}
        if "auth_username" in mail:
            email["authUsername"] = mail["auth_username"]
        if "auth_password_file" in mail:
            email["authPassword"] = _secret_ref(mail["auth_password_file"])
        email.update({"requireTLS": mail["require_tls"], "sendResolved": mail["send_resolved"],
                      "headers": _key_values(mail["headers"]), "html": mail["html"], "text": mail["text"]})
        out.setdefault("emailConfigs", []).append(email)
    return out


def alertmanager_config(spec: Spec, topology: Topology) -> dict:
    """The compose target's alertmanager.yml routes, receivers and inhibitions, translated."""
    config = am.config(spec, topology)
    return {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "AlertmanagerConfig",
        "metadata": _meta(spec, spec.project, {**_labels(spec, spec.project, "alerting"), **spec.kubernetes.selector_labels}),
        "spec": {
            "route": _route(config["route"]),
            "receivers": [_receiver(r) for r in config["receivers"]],
            "inhibitRules": [
                {"sourceMatch": _matchers(rule["source_matchers"]), "targetMatch": _matchers(rule["target_matchers"]),
                 "equal": rule["equal"]}
                for rule in config["inhibit_rules"]
            ],
        },
    }


# ---------------------------------------------------------------------------------------
# ConfigMaps: Grafana's sidecars, runbooks
# ---------------------------------------------------------------------------------------


def _config_map(spec: Spec, name: str, component: str, data: dict[str, str], extra_labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(spec, name, {**_labels(spec, name, component), **(extra_labels or {})}),
            "data": dict(sorted(data.items()))}


def grafana_config_maps(spec: Spec, topology: Topology) -> dict[str, dict]:
    """bundle path -> ConfigMap: the compose target's datasources file and dashboard JSON, as is."""
    files = grafana.render(spec, topology)
    maps = {"grafana/datasources.yaml": _config_map(
        spec, f"{spec.project}-datasources", "grafana", {"obsgen-datasources.yaml": files[grafana.DATASOURCES_PATH]},
        spec.kubernetes.datasource_labels)}
    for path, text in files.items():
        if path.startswith(grafana.DASHBOARDS_DIR + "/"):
            uid = posixpath.basename(path).removesuffix(".json")
            maps[f"grafana/dashboard-{uid}.yaml"] = _config_map(
                spec, f"dashboard-{uid}", "grafana", {f"{uid}.json": text}, spec.kubernetes.dashboard_labels)
    return maps


def runbooks_config_map(spec: Spec, topology: Topology) -> dict:
    pages = {posixpath.basename(path): text for path, text in runbooks.render(spec, topology).items()}
    return _config_map(spec, f"{spec.project}-runbooks", "runbooks", pages)


# ---------------------------------------------------------------------------------------
# Workloads: the collector, the services obsgen runs, Redis
# ---------------------------------------------------------------------------------------


def kubernetes_memory(text: str) -> str:
    """A docker memory size ("512m", "1g", "1048576") as a Kubernetes quantity ("512Mi")."""
    unit = {"k": "Ki", "m": "Mi", "g": "Gi"}.get(text[-1].lower())
    return f"{text[:-1]}{unit}" if unit else text


def _resources(spec: Spec, component: str) -> dict:
    settings = getattr(spec.components, component).resources
    limits: dict = {}
    if settings.cpus:
        limits["cpu"] = f"{round(settings.cpus * 1000)}m"
    if settings.memory:
        limits["memory"] = kubernetes_memory(settings.memory)
    elif component == "collector":
        limits["memory"] = f"{math.ceil(spec.components.collector.memory_limit_mib / LIMITER_SHARE)}Mi"
    if not limits:
        return {}
    # Requests equal to the memory limit: the scheduler places the pod where that memory exists.
    requests = {"memory": limits["memory"]} if "memory" in limits else {}
    return {"resources": {"limits": limits, **({"requests": requests} if requests else {})}}


def _deployment(spec: Spec, name: str, component: str, replicas: int, pod: dict, annotations: dict | None = None) -> dict:
    template_meta: dict = {"labels": _labels(spec, name, component)}
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(spec, name, _labels(spec, name, component)),
        "spec": {"replicas": replicas, "selector": {"matchLabels": _selector(spec, name)},
                 "template": {"metadata": template_meta, "spec": pod}},
    }


def _service(spec: Spec, name: str, component: str, ports: dict[str, int], headless: bool = False) -> dict:
    service_spec: dict = {"selector": _selector(spec, name)}
    if headless:
        service_spec["clusterIP"] = "None"
    service_spec["ports"] = [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                             for port_name, port in ports.items()]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(spec, name, _labels(spec, name, component)),
            "spec": service_spec}


def _container_ports(ports: dict[str, int]) -> list[dict]:
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports.items()]


_SECURE = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
COLLECTOR_CONFIG_DIR = "/etc/otelcol"


def collector_objects(spec: Spec, topology: Topology) -> dict[str, dict]:
    text = collector.render(spec, topology)[collector.PATH]
    names = ("otlp_grpc", "otlp_http", "metrics", "prometheus", "health")
    ports = {name.replace("_", "-"): topology.port("collector", name) for name in names}
    probe = {"httpGet": {"path": "/", "port": "health"}}
    container = {
        "name": "collector", "image": image_for(spec, "collector"),
        "args": [f"--config={COLLECTOR_CONFIG_DIR}/config.yaml"],
        "ports": _container_ports(ports),
        "readinessProbe": {**probe, "periodSeconds": 10},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 6},
        **_resources(spec, "collector"),
        "securityContext": _SECURE,
        "volumeMounts": [{"name": "config", "mountPath": COLLECTOR_CONFIG_DIR, "readOnly": True}],
    }
    pod = {"containers": [container],
           "volumes": [{"name": "config", "configMap": {"name": "collector-config"}}]}
    return {
        "collector/configmap.yaml": _config_map(spec, "collector-config", "collector", {"config.yaml": text}),
        # A changed config rolls the pods: the checksum of the text is in the pod template.
        "collector/deployment.yaml": _deployment(spec, "collector", "collector", 1, pod,
                                                 {"obsgen.dev/config-sha256": _sha256(text)}),
        "collector/service.yaml": _service(spec, "collector", "collector",
                                           {name: port for name, port in ports.items() if name != "health"}),
    }


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _deployed(service: Service) -> bool:
    """obsgen runs the built-in server and image services; others run elsewhere and are only scraped."""
    return service.builtin or service.image is not None


def _service_ports(service: Service) -> dict[str, int]:
    ports = {"metrics": service.metrics.port}
    if service.port is not None and service.port != service.metrics.port:
        ports["app"] = service.port
    return ports


def redis_url(spec: Spec, topology: Topology) -> str:
    return spec.kubernetes.redis_url or f"redis://{topology.address('redis', 'redis')}/0"


def server_objects(spec: Spec, topology: Topology, service: Service) -> list[dict]:
    """The built-in server: probes on /readyz and /healthz, a drain that closes with 1001, a PDB."""
    port = service.metrics.port  # WebSocket, /metrics, /healthz and /readyz share one port
    redis = spec.components.redis.enabled or spec.kubernetes.redis_url is not None
    env = commands.server_environment(topology, service, port, f"{SECRETS_DIR}/{JWT_SECRET}",
                                      redis_url(spec, topology) if redis else None)
    env["OBSGEN_DRAIN_TIMEOUT"] = str(DRAIN_TIMEOUT_SECONDS)
    container = {
        "name": "server", "image": image_for(spec, "server"),
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": _container_ports({"metrics": port}),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 6},
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": _SECURE,
        "volumeMounts": [{"name": "jwt", "mountPath": SECRETS_DIR, "readOnly": True}],
    }
    pod = {"terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS, "containers": [container],
           "volumes": [{"name": "jwt", "secret": {"secretName": SERVER_JWT_SECRET,
                                                  "items": [{"key": JWT_SECRET, "path": JWT_SECRET}]}}]}
    budget = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _meta(spec, service.name, _labels(spec, service.name, "server")),
        # One replica drains at a time: its clients move to the others. (With one replica this
        # still lets a node drain, where minAvailable: 1 would block it forever.)
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(spec, service.name)}},
    }
    return [_deployment(spec, service.name, "server", service.instances, pod),
            _service(spec, service.name, "server", _service_ports(service)), budget]


def image_service_objects(spec: Spec, topology: Topology, service: Service) -> list[dict]:
    """A user's image: the OTLP variables compose sets, {env: NAME} values from a Secret of that name."""
    env: list[dict] = []
    if service.otlp:
        env += [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": topology.url("collector", "otlp_http")},
                {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"}]
    env += [{"name": "OTEL_SERVICE_NAME", "value": service.name},
            {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": resource_attributes(spec, topology, service)}]
    for key, value in service.environment.items():
        if isinstance(value, EnvSecret):
            # Secret obsgen-env-<service>, key = the variable the compose target reads.
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": f"obsgen-env-{service.name}", "key": value.env}}})
        else:
            env.append({"name": key, "value": value})
    container: dict = {"name": service.name, "image": service.image}
    if service.command is not None:
        container["args"] = list(service.command)
    container["env"] = env
    container["ports"] = _container_ports(_service_ports(service))
    return [_deployment(spec, service.name, "service", service.instances, {"containers": [container]}),
            _service(spec, service.name, "service", _service_ports(service))]


def alert_sink_objects(spec: Spec, topology: Topology) -> list[dict]:
    """The webhook receiver that logs every notification, when a receiver's URL names it."""
    from instrumented_server.alert_sink import HEALTH_PATH

    port = topology.port("alert_sink", "http")
    name = topology.host("alert_sink")
    container = {
        "name": "alert-sink", "image": spec.components.alert_sink.image or image_for(spec, "server"),
        "command": ["python", "-m", "instrumented_server.alert_sink", "--host", topology.listen_host, "--port", str(port)],
        "ports": _container_ports({"http": port}),
        "readinessProbe": {"httpGet": {"path": HEALTH_PATH, "port": "http"}, "periodSeconds": 5},
        **_resources(spec, "alert_sink"),
        "securityContext": _SECURE,
    }
    return [_deployment(spec, name, "alert-sink", 1, {"containers": [container]}),
            _service(spec, name, "alert-sink", {"http": port})]


def redis_objects(spec: Spec, topology: Topology) -> list[dict]:
    port = topology.port("redis", "redis")
    container = {
        "name": "redis", "image": image_for(spec, "redis"),
        # A broker, not a store: nothing to persist (as in the compose target).
        "args": commands.redis(spec, topology),
        "ports": _container_ports({"redis": port}),
        "readinessProbe": {"exec": {"command": ["redis-cli", "-p", str(port), "ping"]}, "periodSeconds": 5},
        **_resources(spec, "redis"),
        "securityContext": _SECURE,
    }
    stateful = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _meta(spec, "redis", _labels(spec, "redis", "broker")),
        "spec": {"serviceName": "redis", "replicas": 1, "selector": {"matchLabels": _selector(spec, "redis")},
                 "template": {"metadata": {"labels": _labels(spec, "redis", "broker")}, "spec": {"containers": [container]}}},
    }
    return [stateful, _service(spec, "redis", "broker", {"redis": port}, headless=True)]


# ---------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------


def rule_path(file: str) -> str:
    """Where the PrometheusRule of a compose rule file (slo-x-recording.yml) lives in the bundle."""
    return f"prometheus-rules/{file.removesuffix('.yml')}.yaml"


def _comment(text: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())


def objects(spec: Spec, topology: Topology) -> dict[str, list[dict]]:
    """bundle path -> the objects in that file (one file per object, or per workload)."""
    files: dict[str, list[dict]] = {
        "namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": namespace(spec), "labels": {**MANAGED_BY}}}],
    }
    for file, rule in prometheus_rules(spec, topology).items():
        files[rule_path(file)] = [rule]
    for name, monitor in service_monitors(spec).items():
        files[f"monitors/{name}.yaml"] = [monitor]
    files["alertmanager/alertmanager-config.yaml"] = [alertmanager_config(spec, topology)]
    for path, config_map in grafana_config_maps(spec, topology).items():
        files[path] = [config_map]
    files["runbooks/configmap.yaml"] = [runbooks_config_map(spec, topology)]
    for path, obj in collector_objects(spec, topology).items():
        files[path] = [obj]
    for service in spec.services:
        if service.builtin:
            files[f"services/{service.name}.yaml"] = server_objects(spec, topology, service)
        elif service.image is not None:
            files[f"services/{service.name}.yaml"] = image_service_objects(spec, topology, service)
    if uses_alert_sink(spec):
        files["services/alert-sink.yaml"] = alert_sink_objects(spec, topology)
    if any(s.builtin for s in spec.services) and spec.components.redis.enabled and spec.kubernetes.redis_url is None:
        files["redis/redis.yaml"] = redis_objects(spec, topology)
    return dict(sorted(files.items()))


def kustomization(spec: Spec, resources: list[str]) -> str:
    data = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace(spec),
        "resources": resources,
    }
    secrets = [f"#   {ALERTMANAGER_SECRET}: keys {', '.join(secret_files(spec))}"] if secret_files(spec) else []
    if any(s.builtin for s in spec.services):
        secrets.append(f"#   {SERVER_JWT_SECRET}: key {JWT_SECRET}")
    for service in spec.services:
        keys = sorted(v.env for v in service.environment.values() if isinstance(v, EnvSecret))
        if service.image is not None and keys:
            secrets.append(f"#   obsgen-env-{service.name}: keys {', '.join(keys)}")
    note = ("# Secrets this bundle references and does not contain (create them first, see docs/kubernetes.md):\n"
            + "\n".join(secrets) + "\n") if secrets else ""
    return HEADER + note + yaml.safe_dump(data, sort_keys=False)


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    built = rules.build_once(spec, topology)
    notes = {rule_path(file): _comment(built.notes[file]) for file in built.notes}
    files = {path: _dump(*objs, notes=notes.get(path, "")) for path, objs in objects(spec, topology).items()}
    # The rule groups' promtool unit tests, as the compose bundle has them; kustomize does not
    # apply them (not in resources). `obsgen check` runs them on the groups it extracts.
    for name, test in built.tests.items():
        files[f"prometheus-tests/{name}"] = rules.test_file(test)
    files[KUSTOMIZATION] = kustomization(spec, sorted(p for p in files if p.endswith(".yaml") and not p.startswith("prometheus-tests/")))
    return dict(sorted(files.items()))
