"""The docker-compose renderer: by value, the secrets staging script run by a real shell, the
file through docker-compose 1.29's own `config` check, and the server's Dockerfile."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stack.renderers import compose, wiring
from stack.spec import Spec, image_for
from stack.topology import Topology
from tests.conftest import REPO, require_binary

SPECS = Path(__file__).parent / "specs"
COMPONENTS = ("collector", "prometheus", "alertmanager", "loki", "jaeger", "grafana")


def make_spec(**fields) -> Spec:
    fields.setdefault("services", [{"name": "ws", "builtin": True, "port": 8765, "metrics": {"port": 8765}}])
    return Spec.model_validate({"version": 1, "project": "demo", **fields})


def spec_file(name: str) -> Spec:
    from stack.load import load_spec_file

    return load_spec_file(str(SPECS / name))


def rendered(spec: Spec) -> dict:
    files = compose.render(spec, Topology(spec))
    assert list(files) == ["docker-compose.yml"]
    return yaml.safe_load(files["docker-compose.yml"])


def test_every_component_runs_its_pinned_image():
    services = rendered(make_spec())["services"]
    spec = make_spec()
    for component in (*COMPONENTS, "redis"):
        assert services[component]["image"] == image_for(spec, component)
    assert services["ws"]["image"] == services["ws-loadgen"]["image"] == image_for(spec, "server")
    assert services["ws"]["build"] == {"context": "${OBSGEN_SOURCE_DIR:-..}", "dockerfile": "Dockerfile"}


def test_an_image_override_from_the_spec():
    services = rendered(make_spec(components={"loki": {"image": "grafana/loki:3.7.1"}}))["services"]
    assert services["loki"]["image"] == "grafana/loki:3.7.1"


def test_configs_are_mounted_read_only_and_data_lives_in_named_volumes():
    document = rendered(make_spec())
    binds = [(name, mount) for name, service in document["services"].items()
             for mount in service.get("volumes", []) if mount.startswith("./")]
    assert binds and all(mount.endswith(":ro") for _, mount in binds)
    assert ("collector", "./collector:/etc/otelcol:ro") in binds
    assert ("grafana", "./grafana/provisioning:/etc/grafana/provisioning:ro") in binds
    assert ("grafana", "./grafana/dashboards:/var/lib/grafana/dashboards:ro") in binds
    services = document["services"]
    assert "prometheus:/prometheus" in services["prometheus"]["volumes"]
    assert "alertmanager:/alertmanager" in services["alertmanager"]["volumes"]
    assert "loki:/loki" in services["loki"]["volumes"]
    assert "grafana:/var/lib/grafana" in services["grafana"]["volumes"]
    assert set(document["volumes"]) == {"prometheus", "alertmanager", "loki", "grafana", "secrets"}


def test_healthchecks_where_the_image_can_run_them():
    services = rendered(make_spec())["services"]
    tests = {name: service.get("healthcheck", {}).get("test") for name, service in services.items()}
    assert tests["collector"] is None  # no shell, no wget in the image
    assert tests["prometheus"] == ["CMD", "wget", "-q", "--spider", "http://localhost:9090/-/ready"]
    assert tests["alertmanager"] == ["CMD", "wget", "-q", "--spider", "http://localhost:9093/-/ready"]
    assert tests["jaeger"] == ["CMD", "wget", "-q", "--spider", "http://localhost:13133/status"]
    assert tests["loki"] == ["CMD", "/usr/bin/loki", "-health", "-health.url=http://localhost:3100/ready"]
    assert tests["grafana"][:2] == ["CMD", "curl"] and tests["grafana"][-1] == "http://localhost:3000/api/health"
    assert tests["redis"] == ["CMD", "redis-cli", "-p", "6379", "ping"]
    assert "http://127.0.0.1:8765/readyz" in tests["ws"][-1]


@pytest.mark.parametrize("spec_name", ["minimal.yaml", "all-receivers.yaml", "many-services.yaml", "slos-only.yaml",
                                       "own-services.yaml"])
def test_depends_on_names_services_with_a_condition_they_can_meet(spec_name):
    services = rendered(spec_file(spec_name))["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy"
            elif condition == "service_completed_successfully":
                assert services[dependency]["restart"] == "no", f"{name} waits for {dependency} to finish"
            else:
                assert condition == "service_started"


def test_restart_policy():
    services = rendered(make_spec())["services"]
    assert services.pop("secrets")["restart"] == "no"  # runs once per `up`
    assert {service["restart"] for service in services.values()} == {"unless-stopped"}


def test_published_ports_bind_to_loopback_by_default_and_to_publish_bind_when_asked():
    services = rendered(make_spec())["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert sorted(published) == sorted([
        "127.0.0.1:4317:4317", "127.0.0.1:4318:4318", "127.0.0.1:9090:9090", "127.0.0.1:9093:9093",
        "127.0.0.1:3100:3100", "127.0.0.1:16686:16686", "127.0.0.1:3000:3000", "127.0.0.1:8765:8765",
    ])
    services = rendered(make_spec(publish={"bind": "0.0.0.0"}, components={"grafana": {"ports": {"http": 3300}}}))["services"]
    assert services["grafana"]["ports"] == ["0.0.0.0:3300:3300"]
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == "3300"


def test_resource_limits_from_the_spec():
    services = rendered(spec_file("many-services.yaml"))["services"]
    assert services["prometheus"]["deploy"] == {"resources": {"limits": {"memory": "2g", "cpus": "2.0"}}}
    assert services["collector"]["deploy"] == {"resources": {"limits": {"memory": "1g"}}}
    assert "deploy" not in services["loki"]


def test_prometheus_and_alertmanager_flags():
    services = rendered(make_spec(components={"prometheus": {"retention": "30d"}}))["services"]
    assert services["prometheus"]["command"] == [
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        "--web.listen-address=0.0.0.0:9090",
        "--web.enable-lifecycle",
        "--enable-feature=exemplar-storage",
    ]
    assert services["alertmanager"]["command"][:2] == [
        "--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager",
    ]


def test_grafana_login_only_with_the_admin_password_from_a_secret_file():
    services = rendered(make_spec(components={"grafana": {"admin_user": "ops"}}))["services"]
    environment = services["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_SECURITY_ADMIN_USER"] == "ops"
    assert environment["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert not any(key == "GF_SECURITY_ADMIN_PASSWORD" for key in environment)
    assert "secrets:/run/secrets:ro" in services["grafana"]["volumes"]


def test_file_secrets_are_compose_secrets_and_env_secrets_are_passed_to_the_stager():
    spec = spec_file("all-receivers.yaml")
    document = rendered(spec)
    secrets_dir = str(SPECS / "secrets")
    assert document["secrets"] == {
        "alertmanager_chatops_url": {"file": f"{secrets_dir}/chatops-url"},
        "alertmanager_mail_auth_password": {"file": f"{secrets_dir}/smtp-password"},
        "alertmanager_team-slack_api_url": {"file": f"{secrets_dir}/slack-api-url"},
    }
    stager = document["services"]["secrets"]
    assert sorted(stager["secrets"]) == sorted(document["secrets"])
    # Grafana's password is not in the spec: it comes from GRAFANA_ADMIN_PASSWORD.
    assert stager["environment"] == {
        "GRAFANA_ADMIN_PASSWORD": "${GRAFANA_ADMIN_PASSWORD:-}",
        "PAGERDUTY_ROUTING_KEY": "${PAGERDUTY_ROUTING_KEY:-}",
    }
    assert stager["network_mode"] == "none" and stager["user"] == "0"
    # Readers get the staged copies, never the compose secrets themselves.
    assert "secrets:/run/secrets:ro" in document["services"]["alertmanager"]["volumes"]
    assert "secrets" not in document["services"]["alertmanager"]


def test_a_grafana_password_file_from_the_spec():
    spec = make_spec(components={"grafana": {"admin_password": {"file": "/etc/obsgen/grafana-password"}}})
    document = rendered(spec)
    assert document["secrets"] == {"grafana_admin_password": {"file": "/etc/obsgen/grafana-password"}}
    assert "environment" not in document["services"]["secrets"]


def test_the_instrumented_server_with_redis_the_collector_and_a_load_generator():
    services = rendered(make_spec())["services"]
    server = services["ws"]
    assert server["environment"] == {
        "OBSGEN_HOST": "0.0.0.0",
        "OBSGEN_PORT": "8765",
        "OBSGEN_JWT_SECRET_FILE": "/run/secrets/server_jwt_secret",
        "OBSGEN_BROKER": "redis",
        "OBSGEN_SERVICE_NAME": "ws",
        "OBSGEN_TELEMETRY": "true",
        "OBSGEN_REDIS_URL": "redis://redis:6379/0",
        "OBSGEN_OTLP_ENDPOINT": "http://collector:4318",
        "OBSGEN_LOGS": "otlp",
    }
    assert server["depends_on"]["redis"] == {"condition": "service_healthy"}
    loadgen = services["ws-loadgen"]
    assert loadgen["command"][:3] == ["python", "-m", "instrumented_server.loadgen"]
    assert loadgen["command"][3:] == [
        "--url", "ws://ws:8765/", "--jwt-secret-file", "/run/secrets/server_jwt_secret", "--duration", "3600",
    ]
    assert loadgen["depends_on"] == {"ws": {"condition": "service_healthy"}}


def test_without_redis_the_server_uses_its_memory_broker():
    services = rendered(make_spec(components={"redis": {"enabled": False}}))["services"]
    assert "redis" not in services
    assert services["ws"]["environment"]["OBSGEN_BROKER"] == "memory"
    assert "OBSGEN_REDIS_URL" not in services["ws"]["environment"]
    assert "redis" not in services["ws"]["depends_on"]


def test_server_instances_share_one_network_namespace_so_the_scrape_targets_resolve():
    spec = make_spec(services=[{"name": "ws", "builtin": True, "port": 9000, "metrics": {"port": 9000}, "instances": 2}])
    services = rendered(spec)["services"]
    assert Topology(spec).service_metrics_targets(spec.services[0]) == ["ws:9000", "ws:9001"]
    assert services["ws"]["environment"]["OBSGEN_PORT"] == "9000"
    assert services["ws"]["ports"] == ["127.0.0.1:9000:9000", "127.0.0.1:9001:9001"]
    assert services["ws-1"]["environment"]["OBSGEN_PORT"] == "9001"
    assert services["ws-1"]["network_mode"] == "service:ws"
    assert "ports" not in services["ws-1"]


def test_external_services_are_only_scraped():
    services = rendered(spec_file("many-services.yaml"))["services"]
    # Host metrics and the probes of the services that give their WebSocket port come along.
    assert set(services) == {*COMPONENTS, "redis", "secrets", "node-exporter", "blackbox"}


def test_local_target_renders_no_compose_file():
    spec = make_spec(target="local")
    assert compose.render(spec, Topology(spec)) == {}


def test_same_spec_same_bytes():
    spec = spec_file("all-receivers.yaml")
    assert compose.render(spec, Topology(spec)) == compose.render(spec, Topology(spec))


@pytest.mark.parametrize("service, message", [
    ({"name": "grafana"}, "is the name of a stack component"),
    ({"name": "ws", "builtin": True, "port": 8765, "metrics": {"port": 9100}}, "must equal metrics.port"),
])
def test_a_spec_compose_cannot_place_is_refused(service, message):
    with pytest.raises(ValidationError, match=message):
        make_spec(services=[service])


def test_clashing_published_ports_are_refused():
    with pytest.raises(ValidationError, match="port 3000 is used by prometheus.http, grafana.http"):
        make_spec(components={"prometheus": {"ports": {"http": 3000}}})


# ---------------------------------------------------------------------------------------
# The secrets staging script, run by a real shell
# ---------------------------------------------------------------------------------------


def run_stager(document: dict, staged: Path, sources: Path, environ: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the secrets service's script as its container would, with two paths moved under tmp.

    chown is replaced by a shell function that records the owner asked for (no root needed).
    """
    script = document["services"]["secrets"]["entrypoint"][2]
    script = script.replace("$$", "$")  # what compose hands the shell
    script = script.replace("/staged", str(staged)).replace("/run/secrets", str(sources))
    shell = shutil.which("sh")
    prelude = f'chown() {{ echo "$1 $2" >> {staged}/.owners; }}\n'
    return subprocess.run([shell, "-c", prelude + script], env={"PATH": os.environ["PATH"], **environ},
                          capture_output=True, text=True, timeout=30)


def test_the_stager_copies_files_takes_variables_and_generates_the_token_key_once(tmp_path):
    spec = spec_file("all-receivers.yaml").model_copy(update={"services": make_spec().services})
    document = rendered(spec)
    staged, sources = tmp_path / "staged", tmp_path / "run-secrets"
    staged.mkdir()
    sources.mkdir()
    for name in document["secrets"]:
        (sources / name).write_text(f"value of {name}\n")
    environ = {"PAGERDUTY_ROUTING_KEY": "pd-key with 'quotes' and $dollars", "GRAFANA_ADMIN_PASSWORD": "s3cret"}

    result = run_stager(document, staged, sources, environ)
    assert result.returncode == 0, result.stderr
    assert (staged / "alertmanager_team-slack_api_url").read_text() == "value of alertmanager_team-slack_api_url\n"
    assert (staged / "alertmanager_pager_routing_key").read_text() == "pd-key with 'quotes' and $dollars"
    assert (staged / "grafana_admin_password").read_text() == "s3cret"
    token_key = (staged / "server_jwt_secret").read_text()
    assert len(token_key.strip()) >= 40
    assert oct((staged / "grafana_admin_password").stat().st_mode & 0o777) == "0o600"
    owners = dict(line.split(" ")[::-1] for line in (staged / ".owners").read_text().splitlines())
    assert owners[f"{staged}/grafana_admin_password"] == "472"
    assert owners[f"{staged}/alertmanager_pager_routing_key"] == "65534"
    assert owners[f"{staged}/server_jwt_secret"] == "10001"
    assert not list(staged.glob(".*.tmp"))

    # A second `up` refreshes the others but keeps the key running servers were started with.
    assert run_stager(document, staged, sources, environ).returncode == 0
    assert (staged / "server_jwt_secret").read_text() == token_key


def test_the_stager_stops_the_stack_when_a_variable_is_missing(tmp_path):
    document = rendered(make_spec())
    staged = tmp_path / "staged"
    staged.mkdir()
    result = run_stager(document, staged, tmp_path, {})
    assert result.returncode == 1
    assert "set the environment variable GRAFANA_ADMIN_PASSWORD" in result.stderr
    assert not (staged / "grafana_admin_password").exists()


def test_secret_names_are_the_ones_alertmanager_reads():
    from stack.renderers import alertmanager

    spec = spec_file("all-receivers.yaml")
    topology = Topology(spec)
    config = yaml.safe_load(alertmanager.render(spec, topology)["alertmanager/alertmanager.yml"])
    read = {value for path, value in _leaves(config) if path.endswith("_file")}
    staged = {f"/run/secrets/{name}" for name, _, reader in wiring.staged_secrets(spec) if reader == "alertmanager"}
    assert read == staged and len(read) == 4


def _leaves(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, str(key))
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item, path)
    else:
        yield path, node


def test_no_secret_value_or_file_content_is_in_the_compose_file():
    spec = spec_file("all-receivers.yaml")
    text = compose.render(spec, Topology(spec))["docker-compose.yml"]
    for path in (SPECS / "secrets").iterdir():
        assert path.read_text().strip() not in text


# ---------------------------------------------------------------------------------------
# Docker Compose's own check (Compose v5 as `docker-compose`, built by scripts/install-tools.sh;
# `config` needs no Docker engine)
# ---------------------------------------------------------------------------------------


def compose_config(tmp_path: Path, text: str, environ: dict[str, str] | None = None,
                   args: tuple[str, ...] = ("-q",)) -> subprocess.CompletedProcess:
    binary = require_binary("docker-compose")
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    env = {key: value for key, value in os.environ.items() if key not in ("GRAFANA_ADMIN_PASSWORD", "PAGERDUTY_ROUTING_KEY")}
    return subprocess.run([binary, "-f", str(path), "config", *args], cwd=tmp_path, env={**env, **(environ or {})},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("spec_name", ["minimal.yaml", "all-receivers.yaml", "many-services.yaml", "slos-only.yaml",
                                       "own-services.yaml"])
def test_docker_compose_config_accepts_the_file(tmp_path, spec_name):
    spec = spec_file(spec_name)
    result = compose_config(tmp_path, compose.render(spec, Topology(spec))["docker-compose.yml"])
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_accepts_the_default_spec_with_and_without_the_variables(tmp_path):
    from stack.load import default_spec_text, load_spec

    spec = load_spec(default_spec_text(), "default")
    text = compose.render(spec, Topology(spec))["docker-compose.yml"]
    assert compose_config(tmp_path, text).returncode == 0
    assert compose_config(tmp_path, text, {"GRAFANA_ADMIN_PASSWORD": "x", "OBSGEN_SOURCE_DIR": str(REPO)}).returncode == 0

    def build_contexts(environ: dict[str, str]) -> set[str]:
        done = compose_config(tmp_path, text, environ, args=("--format", "json"))
        assert done.returncode == 0, done.stderr
        services = json.loads(done.stdout)["services"].values()
        return {service["build"]["context"] for service in services if "build" in service}

    # The server is built from the clone: one level above the bundle unless OBSGEN_SOURCE_DIR says where.
    # (Compose v5's `config` resolves the context but, unlike 1.29, does not check that it exists.)
    assert build_contexts({}) == {str(tmp_path.parent)}
    assert build_contexts({"OBSGEN_SOURCE_DIR": str(REPO)}) == {str(REPO)}


def test_docker_compose_config_refuses_a_broken_file(tmp_path):
    spec = make_spec()
    document = compose.compose(spec, Topology(spec))
    document["services"]["grafana"]["depends_on"]["prometheus"]["condition"] = "service_ready"
    result = compose_config(tmp_path, yaml.safe_dump(document))
    assert result.returncode != 0
    assert "services.grafana.depends_on.prometheus.condition" in result.stderr


# ---------------------------------------------------------------------------------------
# The server image's Dockerfile (no Docker engine here: checked by reading it)
# ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_runs_the_server_as_the_user_compose_stages_secrets_for():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [value for op, value in instructions if op == "USER"]
    assert users == [str(compose.UIDS["server"])]
    assert any(f"--uid {compose.UIDS['server']}" in value for op, value in instructions if op == "RUN")
    assert ("EXPOSE", "8765") in instructions
    assert instructions[-1] == ("CMD", '["python", "-m", "instrumented_server"]')


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for the patterns this repo uses: the last match wins."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        candidates = [path] + ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
        if body.startswith("**/"):
            body = body[3:]
            candidates = [c.split("/", i)[-1] for c in candidates for i in range(c.count("/") + 1)]
        if any(fnmatch.fnmatchcase(c, body) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_every_package_the_build_installs_and_nothing_else():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for package in packages:
        assert not _ignored(f"{package}/__init__.py", patterns), package
    assert not _ignored("pyproject.toml", patterns)
    assert not _ignored(project["project"]["readme"], patterns)
    for path in ("tests/conftest.py", ".git/HEAD", ".tools/bin/otelcol", "stack/__pycache__/spec.cpython-311.pyc",
                 "bench/run.py", "out/docker-compose.yml"):
        assert _ignored(path, patterns), path


def test_a_publish_address_that_is_not_ipv4_is_refused():
    with pytest.raises(ValidationError, match="'localhost' is not an IPv4 address"):
        make_spec(publish={"bind": "localhost"})


def test_the_server_and_the_load_generator_accept_what_compose_gives_them(tmp_path):
    # The real parsers: a renamed flag or variable fails here, not in a container.
    from instrumented_server import loadgen
    from instrumented_server.config import parse_args

    services = rendered(make_spec())["services"]
    key = tmp_path / "server_jwt_secret"
    key.write_text("a" * 44 + "\n")
    environment = {name: value.replace("/run/secrets/server_jwt_secret", str(key))
                   for name, value in services["ws"]["environment"].items()}
    config = parse_args([], environ=environment)
    assert (config.host, config.port, config.broker) == ("0.0.0.0", 8765, "redis")
    assert (config.redis_url, config.otlp_endpoint, config.logs) == ("redis://redis:6379/0", "http://collector:4318", "otlp")
    assert config.service_name == "ws" and config.telemetry is True

    command = services["ws-loadgen"]["command"]
    args = loadgen.build_parser().parse_args(command[3:])
    assert (args.url, args.jwt_secret_file, float(args.duration)) == (
        "ws://ws:8765/", "/run/secrets/server_jwt_secret", 3600.0)



def test_the_docker_build_context_holds_every_tracked_file_of_the_installed_packages():
    # No Docker engine here: check that .dockerignore lets through every file git tracks under
    # the packages `pip install` builds (their package data included), and nothing from tests.
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = tuple(name.rstrip("*") + "/" for name in project["tool"]["setuptools"]["packages"]["find"]["include"])
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    in_packages = [path for path in tracked if path.startswith(packages)]
    assert any(path == "collector/pipelines.yaml" for path in in_packages)
    assert [path for path in in_packages if _ignored(path, patterns)] == []
    assert [path for path in tracked if path.startswith("tests/") and not _ignored(path, patterns)] == []


# ---------------------------------------------------------------------------------------
# The user's own services: run from an image, or external; the stack's network
# ---------------------------------------------------------------------------------------

API = {"name": "api", "image": "ghcr.io/acme/api:1.4.2", "metrics": {"port": 9464}}


def test_an_image_service_runs_on_the_stack_network_with_the_otlp_variables_set():
    spec = make_spec(services=[{**API, "port": 8080, "command": ["serve", "--greeting", "cost: $5"],
                                "environment": {"LOG_LEVEL": "debug", "PATH_HINT": "${HOME}/x"},
                                "resource_attributes": {"deployment.environment.name": "staging", "team": "a,b c"}}])
    document = rendered(spec)
    assert document["services"]["api"] == {
        "image": "ghcr.io/acme/api:1.4.2",
        "command": ["serve", "--greeting", "cost: $$5"],  # compose would interpolate a single $
        "environment": {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "api",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=staging,service.instance.id=api:9464,team=a%2Cb%20c",
            "LOG_LEVEL": "debug",
            "PATH_HINT": "$${HOME}/x",
        },
        "ports": ["127.0.0.1:8080:8080"],
        "depends_on": {"collector": {"condition": "service_started"}},
        "restart": "unless-stopped",
    }
    assert "build" not in document["services"]["api"]
    # Scraped by its service name and metrics port, like every container on the network.
    assert Topology(spec).service_metrics_targets(spec.services[0]) == ["api:9464"]
    assert document["networks"] == {"default": {"name": "demo-obsgen"}}


def test_the_spec_environment_may_switch_the_exporter_to_grpc_and_otlp_false_sets_no_exporter():
    grpc = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    services = rendered(make_spec(services=[{**API, "environment": grpc}, {**API, "name": "batch", "otlp": False}]))["services"]
    assert {k: services["api"]["environment"][k] for k in grpc} == grpc
    batch = services["batch"]
    assert not any(key.startswith("OTEL_EXPORTER") for key in batch["environment"])
    assert batch["environment"]["OTEL_SERVICE_NAME"] == "batch"
    assert "depends_on" not in batch and "ports" not in batch


def test_a_variable_from_the_environment_is_passed_through_and_checked_by_the_stager(tmp_path):
    spec = make_spec(services=[{**API, "environment": {"DB_PASSWORD": {"env": "API_DB_PASSWORD"}}}])
    document = rendered(spec)
    api = document["services"]["api"]
    assert api["environment"]["DB_PASSWORD"] == "${API_DB_PASSWORD:-}"
    assert api["depends_on"]["secrets"] == {"condition": "service_completed_successfully"}
    assert document["services"]["secrets"]["environment"]["API_DB_PASSWORD"] == "${API_DB_PASSWORD:-}"
    staged = tmp_path / "staged"
    staged.mkdir()
    missing = run_stager(document, staged, tmp_path, {"GRAFANA_ADMIN_PASSWORD": "x"})
    assert missing.returncode == 1
    assert "set the environment variable API_DB_PASSWORD (DB_PASSWORD of service api)" in missing.stderr
    assert run_stager(document, staged, tmp_path, {"GRAFANA_ADMIN_PASSWORD": "x", "API_DB_PASSWORD": "pw"}).returncode == 0
    assert not (staged / "API_DB_PASSWORD").exists()  # checked, not staged: compose passes it itself


def test_an_image_service_port_clashing_with_a_published_component_is_refused():
    with pytest.raises(ValidationError, match="port 3000 is used by grafana.http, service api"):
        make_spec(services=[{**API, "port": 3000}])


def test_an_external_service_on_the_docker_host_gets_host_gateway_on_prometheus_only_when_needed():
    on_host = make_spec(services=[{"name": "legacy", "host": "host.docker.internal", "metrics": {"port": 9100}}])
    services = rendered(on_host)["services"]
    assert "legacy" not in services
    assert services["prometheus"]["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert "extra_hosts" not in services["alertmanager"]
    assert Topology(on_host).service_metrics_targets(on_host.services[0]) == ["host.docker.internal:9100"]
    assert "extra_hosts" not in rendered(make_spec())["services"]["prometheus"]


def test_a_webhook_to_the_docker_host_gets_host_gateway_on_alertmanager():
    spec = make_spec(notifications={"receivers": [{"type": "webhook", "name": "w", "url": "http://host.docker.internal:9000/"}]})
    services = rendered(spec)["services"]
    assert services["alertmanager"]["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert "extra_hosts" not in services["prometheus"]


def test_the_network_name_follows_the_project():
    assert rendered(make_spec(project="shop"))["networks"] == {"default": {"name": "shop-obsgen"}}


# ---------------------------------------------------------------------------------------
# The alert sink
# ---------------------------------------------------------------------------------------

SINK_HOOK = {"type": "webhook", "name": "oncall", "url": "http://alert-sink:5001/alerts/oncall"}


def test_the_alert_sink_runs_from_the_server_image_when_a_webhook_names_it():
    spec = make_spec(notifications={"receivers": [SINK_HOOK]})
    services = rendered(spec)["services"]
    assert services["alert-sink"] == {
        "build": {"context": "${OBSGEN_SOURCE_DIR:-..}", "dockerfile": "Dockerfile"},
        "image": image_for(spec, "server"),
        "command": ["python", "-m", "instrumented_server.alert_sink", "--host", "0.0.0.0", "--port", "5001"],
        "healthcheck": {
            "test": ["CMD", "python", "-c",
                     "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5001/healthz', timeout=3)"],
            **compose.HEALTH_TIMING,
        },
        "restart": "unless-stopped",
    }
    assert services["alertmanager"]["depends_on"]["alert-sink"] == {"condition": "service_started"}
    assert "ports" not in services["alert-sink"]  # read it with `docker compose logs alert-sink`


def test_no_alert_sink_without_a_webhook_that_names_it():
    services = rendered(spec_file("all-receivers.yaml"))["services"]
    assert "alert-sink" not in services and "alert-sink" not in services["alertmanager"]["depends_on"]


def test_the_alert_sink_image_and_port_from_the_spec():
    spec = make_spec(components={"alert_sink": {"image": "ghcr.io/acme/obsgen-server:0.1.0", "ports": {"http": 5055},
                                                "resources": {"memory": "64m"}}},
                     notifications={"receivers": [{**SINK_HOOK, "url": "http://alert-sink:5055/a"}]})
    sink = rendered(spec)["services"]["alert-sink"]
    assert sink["image"] == "ghcr.io/acme/obsgen-server:0.1.0" and "build" not in sink
    assert sink["command"][-2:] == ["--port", "5055"]
    assert sink["deploy"] == {"resources": {"limits": {"memory": "64m"}}}


def test_the_sink_accepts_what_compose_gives_it():
    # The real parser: a renamed flag fails here, not in a container.
    from instrumented_server.alert_sink import build_parser

    command = rendered(make_spec(notifications={"receivers": [SINK_HOOK]}))["services"]["alert-sink"]["command"]
    assert command[:3] == ["python", "-m", "instrumented_server.alert_sink"]
    args = build_parser().parse_args(command[3:])
    assert (args.host, args.port) == ("0.0.0.0", 5001)


def test_the_default_spec_runs_the_sink_its_receivers_name():
    from stack.load import load_default_spec

    services = rendered(load_default_spec())["services"]
    assert "alert-sink" in services


def test_runbook_links_point_where_grafana_serves_the_mounted_runbooks():
    """Compose: every rule's runbook_url is <grafana>/public/<path>, and Grafana serves /public/ from
    its static root /usr/share/grafana/public (pkg/api/http_server.go, mapStatic of StaticRootPath),
    where the bundle's runbooks/ is mounted: so each link names a file the mount provides."""
    from stack.render import render_bundle

    spec = make_spec()
    bundle = render_bundle(spec)
    grafana = yaml.safe_load(bundle["docker-compose.yml"])["services"]["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    static_root = "/usr/share/grafana/public"
    urls = [rule["annotations"]["runbook_url"] for path, text in bundle.items() if path.startswith("prometheus/rules/")
            for group in yaml.safe_load(text)["groups"] for rule in group["rules"] if "alert" in rule]
    assert urls
    for url in urls:
        assert url.startswith(f"http://localhost:{Topology(spec).port('grafana', 'http')}/public/"), url
        container_path = static_root + url.split("/public", 1)[1]
        directory, _, name = container_path.rpartition("/")
        assert mounts.get(directory) == "./runbooks", (url, mounts)
        assert f"runbooks/{name}" in bundle, url
