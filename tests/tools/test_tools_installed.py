"""The tools scripts/install-tools.sh provides are installed and are the versions it promises.

Every binary of ``native:`` in stack/data/versions.yaml must be found first in obsgen's lookup
order *in* $OBSGEN_TOOLS/bin (else the default install dir): a Debian binary of the same name
further down PATH (promtool 2.42, amtool 0.25, docker-compose 1.29) is an older major that would
check configs with other rules, so finding only that one is reported as "run the script".
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from stack import tools
from stack.spec import pinned_versions
from tests.conftest import REPO, TOOLS_BIN, missing_tool, require_binary

MANIFEST = REPO / "collector" / "builder-config.yaml"
NATIVE = tools.native_tools()
# The Go module each binary is built from (`go version -m` shows the version compiled in).
GO_MODULES = {
    "prometheus": "github.com/prometheus/prometheus",
    "promtool": "github.com/prometheus/prometheus",
    "amtool": "github.com/prometheus/alertmanager",
    "alertmanager": "github.com/prometheus/alertmanager",
    "jaeger": "github.com/jaegertracing/jaeger",
    "pint": "github.com/cloudflare/pint",
    "docker-compose": "github.com/docker/compose/v5",
    "k8s-check": "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring",
    "centrifugo": "github.com/centrifugal/centrifugo/v6",
    "kube-apiserver": "k8s.io/kubernetes",
    "etcd": "go.etcd.io/etcd/server/v3",
    "controller-gen": "sigs.k8s.io/controller-tools",
    "node_exporter": "github.com/prometheus/node_exporter",
    "blackbox_exporter": "github.com/prometheus/blackbox_exporter",
}
# How each binary prints its version (stack/check.py asks the same way).
VERSION_ARGS = {"jaeger": ["version"], "pint": ["version"], "docker-compose": ["version", "--short"],
                "centrifugo": ["version"]}
# The component names obsgen's rendered collector configs use, by kind.
EXPECTED_COMPONENTS = {
    "receivers": ["otlp"],
    "processors": ["batch", "memory_limiter"],
    "exporters": ["debug", "otlp_grpc", "otlp_http", "prometheus"],
    "extensions": ["health_check"],
    "connectors": [],
}


def pin(component: str) -> str:
    return pinned_versions()[component].version


def output(*argv: str) -> str:
    """stdout and stderr of a version command (some tools print it on stderr)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout + done.stderr


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def require_built(name: str) -> Path:
    """``name`` as installed by the script: found first in the lookup order, in TOOLS_BIN."""
    path = TOOLS_BIN / name
    found = tools.find_executable([name])
    if found == str(path):
        return path
    where = f"only {found}, which is not the script's build" if found else tools.not_found_message([name])
    missing_tool(f"{name} not in {TOOLS_BIN} ({where}): run scripts/install-tools.sh")


def go_module_version(binary: Path, module: str) -> str:
    """The version of ``module`` compiled into a Go binary, from its embedded build info."""
    go = require_binary("go")
    info = subprocess.run([go, "version", "-m", str(binary)], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    for line in info.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] in ("mod", "dep") and fields[1] == module:
            return fields[2]
    raise AssertionError(f"{binary} was not built from {module}")


# ---------------------------------------------------------------------------------------
# versions.yaml: the native builds agree with the image pins (data only, no tool needed)
# ---------------------------------------------------------------------------------------


def test_native_builds_run_the_pinned_image_versions_except_where_versions_yaml_says():
    assert set(NATIVE) == {"otelcol", "prometheus", "promtool", "jaeger", "amtool", "alertmanager", "pint",
                           "docker-compose", "k8s-check", "centrifugo",  # centrifugo: the peer bench/ measures
                           "kube-apiserver", "etcd", "controller-gen",  # the kubernetes bundle's dry run
                           "node_exporter", "blackbox_exporter"}
    pins = pinned_versions()
    # The tests run exactly what compose runs for these ...
    for name, component in [("otelcol", "collector"), ("prometheus", "prometheus"), ("promtool", "prometheus"),
                            ("jaeger", "jaeger"), ("amtool", "alertmanager"), ("node_exporter", "node_exporter"),
                            ("blackbox_exporter", "blackbox")]:
        assert NATIVE[name].pin == component
        assert NATIVE[name].version == pins[component].version
        assert pins[component].image.endswith(f":{pins[component].version}") or \
            pins[component].image.endswith(f":v{pins[component].version}")
    # ... and the Alertmanager process is the one documented exception (0.32+ do not build).
    assert NATIVE["alertmanager"].pin is None
    assert as_tuple(NATIVE["alertmanager"].version) < (0, 32, 0) <= as_tuple(pins["alertmanager"].version)


def test_prometheus_3_module_version_follows_its_numbering():
    major, minor, patch = as_tuple(NATIVE["prometheus"].version)
    assert major == 3
    assert NATIVE["prometheus"].module_version == f"v0.{major * 100 + minor}.{patch}"
    assert NATIVE["promtool"] == tools.NativeTool("promtool", NATIVE["prometheus"].version, "prometheus",
                                                  NATIVE["prometheus"].module_version)


# ---------------------------------------------------------------------------------------
# Every installed binary reports its pinned version and was built from that module version
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_installed_binary_reports_its_pinned_version(name):
    binary = require_built(name)
    text = output(str(binary), *VERSION_ARGS.get(name, ["--version"]))
    versions = re.findall(r"(?<![\d.])v?(\d+\.\d+\.\d+)(?![\d.])", text)
    assert versions, f"{name} printed no version: {text!r}"
    assert versions[0] == NATIVE[name].version, text


@pytest.mark.parametrize("name", sorted(GO_MODULES))
def test_installed_binary_is_built_from_the_pinned_module_version(name):
    binary = require_built(name)
    expected = NATIVE[name].module_version or f"v{NATIVE[name].version}"
    assert go_module_version(binary, GO_MODULES[name]) == expected


def test_jaeger_version_reports_the_v2_release():
    jaeger = require_built("jaeger")
    assert re.search(rf'"gitVersion":\s*"v{re.escape(pin("jaeger"))}"', output(str(jaeger), "version"))


def test_otelcol_reports_the_pinned_collector_version():
    otelcol = require_built("otelcol")
    assert output(str(otelcol), "--version").strip() == f"otelcol version {pin('collector')}"


def test_otelcol_has_exactly_the_manifest_components():
    otelcol = require_built("otelcol")
    listed = yaml.safe_load(output(str(otelcol), "components"))
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))

    names = {kind: sorted(c["name"] for c in listed.get(kind) or []) for kind in EXPECTED_COMPONENTS}
    assert names == EXPECTED_COMPONENTS

    for kind in EXPECTED_COMPONENTS:
        built_modules = sorted(c["module"] for c in listed.get(kind) or [])
        manifest_modules = sorted(m["gomod"] for m in manifest.get(kind) or [])
        assert built_modules == manifest_modules, kind
    assert listed["buildinfo"]["version"] == pin("collector")


def test_otelcol_validate_accepts_a_config_with_every_component_and_refuses_a_wrong_one(tmp_path):
    otelcol = str(require_built("otelcol"))
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:4317"}}}},
        "processors": {"memory_limiter": {"check_interval": "1s", "limit_mib": 256}, "batch": {}},
        "exporters": {
            "otlp_grpc": {"endpoint": "127.0.0.1:14317"},
            "otlp_http": {"endpoint": "http://127.0.0.1:3100/otlp"},
            "debug": {},
            "prometheus": {"endpoint": "127.0.0.1:8889"},
        },
        "extensions": {"health_check": {"endpoint": "127.0.0.1:13133"}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["memory_limiter", "batch"],
                           "exporters": ["otlp_grpc", "debug"]},
                "logs": {"receivers": ["otlp"], "processors": ["memory_limiter", "batch"],
                         "exporters": ["otlp_http"]},
                "metrics": {"receivers": ["otlp"], "processors": ["memory_limiter", "batch"],
                            "exporters": ["prometheus"]},
            },
        },
    }
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config), encoding="utf-8")
    ok = subprocess.run([otelcol, "validate", f"--config={good}"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr

    config["exporters"]["loki"] = {"endpoint": "http://127.0.0.1:3100"}  # gone from contrib in v0.131
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config), encoding="utf-8")
    refused = subprocess.run([otelcol, "validate", f"--config={bad}"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    assert "loki" in refused.stderr


def test_docker_compose_v5_checks_a_file_without_an_engine(tmp_path):
    compose = str(require_built("docker-compose"))
    (tmp_path / "compose.yaml").write_text("services:\n  a:\n    image: busybox:1\n", encoding="utf-8")
    done = subprocess.run([compose, "-f", str(tmp_path / "compose.yaml"), "config", "--services"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["a"]


def test_redis_server_has_the_pinned_major_version():
    redis = require_binary("redis-server")
    match = re.search(r"v=(\d+\.\d+\.\d+)", output(redis, "--version"))
    assert match
    assert as_tuple(match.group(1))[0] == as_tuple(pin("redis"))[0]
