"""The tools scripts/install-tools.sh provides are on PATH and are the versions it promises.

Built tools (otelcol, amtool, alertmanager, jaeger) must come from $OBSGEN_TOOLS/bin: a Debian
binary of the same name further down PATH is an older major and would check configs with the
wrong rules, so finding only that one is reported as "run scripts/install-tools.sh".
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stack.spec import pinned_versions
from tests.conftest import IN_CI, REPO, TOOLS_BIN, build_refusal, require_binary

MANIFEST = REPO / "collector" / "builder-config.yaml"
# Newest Alertmanager `go install` can build: from v0.32 cmd/alertmanager embeds ui/app/dist,
# which the Go module does not ship (the same constant lives in scripts/install-tools.sh).
ALERTMANAGER_GO_FALLBACK = "0.31.0"
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


def reported_version(*argv: str) -> str:
    match = re.search(r"version[ =]v?(\d+\.\d+\.\d+)", output(*argv))
    assert match, f"{' '.join(argv)} printed no version"
    return match.group(1)


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def require_built(name: str) -> Path:
    """``name`` as installed by the script in $OBSGEN_TOOLS/bin (skip, or fail under CI)."""
    path = TOOLS_BIN / name
    if path.exists() and shutil.which(name) == str(path):
        return path
    message = f"{name} not in {TOOLS_BIN} (first on PATH): run scripts/install-tools.sh"
    if IN_CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


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


def test_otelcol_reports_the_pinned_collector_version():
    require_built("otelcol")
    assert output("otelcol", "--version").strip() == f"otelcol version {pin('collector')}"


def test_otelcol_has_exactly_the_manifest_components():
    require_built("otelcol")
    listed = yaml.safe_load(output("otelcol", "components"))
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))

    names = {kind: sorted(c["name"] for c in listed.get(kind) or []) for kind in EXPECTED_COMPONENTS}
    assert names == EXPECTED_COMPONENTS

    for kind in EXPECTED_COMPONENTS:
        built_modules = sorted(c["module"] for c in listed.get(kind) or [])
        manifest_modules = sorted(m["gomod"] for m in manifest.get(kind) or [])
        assert built_modules == manifest_modules, kind
    assert listed["buildinfo"]["version"] == pin("collector")


def test_otelcol_validate_accepts_a_config_with_every_component_and_refuses_a_wrong_one(tmp_path):
    require_built("otelcol")
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
    ok = subprocess.run(["otelcol", "validate", f"--config={good}"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr

    config["exporters"]["loki"] = {"endpoint": "http://127.0.0.1:3100"}  # gone from contrib in v0.131
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config), encoding="utf-8")
    refused = subprocess.run(["otelcol", "validate", f"--config={bad}"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    assert "loki" in refused.stderr


def test_amtool_is_the_pinned_alertmanager_version_built_from_its_module():
    amtool = require_built("amtool")
    version = pin("alertmanager")
    assert reported_version("amtool", "--version") == version
    assert go_module_version(amtool, "github.com/prometheus/alertmanager") == f"v{version}"


def test_alertmanager_is_the_newest_that_builds_or_debians_under_the_upstream_name():
    alertmanager = require_built("alertmanager")
    version = reported_version("alertmanager", "--version")
    if alertmanager.is_symlink():
        # No Go build here: the script names Debian's prometheus-alertmanager `alertmanager`.
        debian = shutil.which("prometheus-alertmanager")
        assert debian and alertmanager.resolve() == Path(debian).resolve()
        assert version == reported_version(debian, "--version")
    else:
        assert version in (pin("alertmanager"), ALERTMANAGER_GO_FALLBACK)
        assert go_module_version(alertmanager, "github.com/prometheus/alertmanager") == f"v{version}"


def test_prometheus_is_the_pinned_3x_or_debians_2x_and_promtool_matches_it():
    require_binary("prometheus")
    require_binary("promtool")
    version = reported_version("prometheus", "--version")
    # Prometheus 3 does not `go install` (replace/exclude in its go.mod): Debian's 2.42+ stands in.
    assert version == pin("prometheus") or (as_tuple(version)[0] == 2 and as_tuple(version) >= (2, 42, 0))
    assert reported_version("promtool", "--version") == version


def test_redis_server_has_the_pinned_major_version():
    require_binary("redis-server")
    match = re.search(r"v=(\d+\.\d+\.\d+)", output("redis-server", "--version"))
    assert match
    assert as_tuple(match.group(1))[0] == as_tuple(pin("redis"))[0]


def test_docker_compose_is_at_least_debians_1_29():
    require_binary("docker-compose")
    version = output("docker-compose", "version", "--short").strip()
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", version), version
    assert as_tuple(version) >= (1, 29, 0)


def test_jaeger_reports_the_pinned_v2_version():
    if not (TOOLS_BIN / "jaeger").exists() and build_refusal("jaeger"):
        # Jaeger is optional: the script tried, and says why it could not build it here.
        pytest.skip(f"scripts/install-tools.sh could not build jaeger here: {build_refusal('jaeger')}")
    jaeger = require_built("jaeger")
    info = json.loads(subprocess.run([str(jaeger), "version"], capture_output=True, text=True,
                                     timeout=30, check=True).stdout)
    assert info["gitVersion"] == f"v{pin('jaeger')}"
