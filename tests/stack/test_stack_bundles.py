"""Whole bundles: the golden bundle of the default spec, and every test spec through every
validator that is installed (`obsgen check`), on whatever renderers are registered.

Refresh the golden bundle after an intended change, then review its diff:
    OBSGEN_UPDATE_GOLDEN=1 python -m pytest -q tests/stack/test_stack_bundles.py -k golden
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

from stack.check import find_tool, format_report, run_checks
from stack.load import load_default_spec, load_spec_file
from stack.render import render_bundle
from stack.renderers import RENDERERS
from stack.write import check_drift, write_bundle
from tests.conftest import IN_CI

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
SPECS = sorted((HERE / "specs").glob("*.yaml"))

# The tools CI installs (scripts/install-tools.sh): a skip for want of one of them is a failure there.
CI_TOOLS = {"promtool", "amtool", "otelcol", "jaeger", "docker-compose", "pint"}

# Which renderer writes the input of each check, and that input (the layout in stack/renderers).
CHECK_INPUTS: dict[str, tuple[frozenset[str], str]] = {
    "promtool check config": (frozenset({"prometheus"}), "prometheus/prometheus.yml"),
    "promtool check rules": (frozenset({"prometheus", "rules", "alerts"}), "prometheus/rules/*.yml"),
    "promtool test rules": (frozenset({"prometheus", "rules", "alerts"}), "prometheus/tests/*.yml"),
    "amtool check-config": (frozenset({"alertmanager"}), "alertmanager/alertmanager.yml"),
    "amtool config routes test": (frozenset({"alertmanager"}), "alertmanager/route-tests.yaml"),
    "otelcol validate": (frozenset({"collector"}), "collector/config.yaml"),
    "jaeger validate": (frozenset({"jaeger"}), "jaeger/config.yaml"),
    "loki -verify-config": (frozenset({"loki"}), "loki/config.yaml"),
    "docker-compose config": (frozenset({"compose"}), "docker-compose.yml"),
    "pint lint": (frozenset({"prometheus", "rules", "alerts"}), "prometheus/rules/*.yml"),
    "runbook links resolve": (frozenset({"prometheus", "rules", "alerts"}), "prometheus/rules/*.yml"),
    "dashboard uids": (frozenset({"grafana", "dashboards"}), "grafana/dashboards/*.json"),
}
TOOL_OF = {
    "promtool": "promtool", "amtool": "amtool", "otelcol": "otelcol", "jaeger": "jaeger",
    "loki": "loki", "docker-compose": "docker-compose", "pint": "pint",
}


def spec_cases() -> list:
    cases = [
        pytest.param(load_default_spec, id="default"),
        pytest.param(lambda: load_default_spec().model_copy(update={"target": "local"}), id="default-local"),
    ]
    return cases + [pytest.param(lambda path=path: load_spec_file(path), id=path.stem) for path in SPECS]


def registered(renderers: frozenset[str]) -> bool:
    return bool(renderers & set(RENDERERS))


# ---------------------------------------------------------------------------------------
# Golden
# ---------------------------------------------------------------------------------------


def test_default_bundle_matches_golden():
    bundle = render_bundle(load_default_spec())
    if os.environ.get("OBSGEN_UPDATE_GOLDEN") == "1":
        write_bundle(bundle, GOLDEN)
    assert GOLDEN.is_dir(), "no golden bundle yet: run with OBSGEN_UPDATE_GOLDEN=1"
    drift = check_drift(bundle, GOLDEN)
    assert not drift, (
        "the default bundle differs from tests/stack/golden:\n  "
        + "\n  ".join(map(str, drift))
        + "\nif the change is intended: OBSGEN_UPDATE_GOLDEN=1 python -m pytest -q "
        "tests/stack/test_stack_bundles.py -k golden, then review `git diff tests/stack/golden`"
    )


# ---------------------------------------------------------------------------------------
# Every spec, rendered twice and through every validator
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("load", spec_cases())
def test_rendering_is_deterministic(load):
    assert render_bundle(load()) == render_bundle(load())


@pytest.mark.parametrize("load", spec_cases())
def test_every_available_validator_accepts_the_bundle(load, tmp_path):
    spec = load()
    bundle = render_bundle(spec)
    assert bundle, "no renderer is registered"
    write_bundle(bundle, tmp_path / "bundle")
    results = run_checks(tmp_path / "bundle")
    report = format_report(results)

    failed = [r for r in results if r.status == "failed"]
    assert not failed, f"checks failed for {spec.project} (target {spec.target}):\n{report}"

    for result in results:
        if result.status != "skipped":
            continue
        renderers, pattern = CHECK_INPUTS.get(result.name, (frozenset(), ""))
        tool = TOOL_OF.get(result.name.split()[0])
        if " not found; looked in " in result.detail:
            # The input is there; only the tool is missing. CI installs some tools: not optional there.
            assert not (IN_CI and tool in CI_TOOLS), f"CI=true: {result.name} skipped: {result.detail}"
            assert find_tool(tool) is None
            continue
        has_input = any(fnmatch.fnmatch(path, pattern) for path in bundle)
        assert not (registered(renderers) and has_input), f"{result.name} skipped although its input exists:\n{report}"
        optional = (*OPTIONAL_INPUTS.get(spec.project, ()), *OPTIONAL_FOR_TARGET.get(spec.target, ()))
        assert not registered(renderers) or result.name in optional, (
            f"{result.name} was skipped ({result.detail}) although renderer(s) {sorted(renderers & set(RENDERERS))} "
            f"are registered:\n{report}"
        )


# Inputs a spec legitimately does not produce (by project name).
OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {
    # dashboards.builtin: false and no custom dashboards.
    "slos-only": ("dashboard uids",),
}


# Inputs a target does not produce: native processes (local) need no compose file.
OPTIONAL_FOR_TARGET: dict[str, tuple[str, ...]] = {"local": ("docker-compose config",)}


# The bundle layout agreed in stack/renderers/__init__.py, by the renderer that writes each part.
LAYOUT: list[tuple[str, str]] = [
    ("prometheus", "prometheus/prometheus.yml"),
    ("prometheus", "prometheus/rules/*.yml"),
    ("prometheus", "prometheus/tests/*.yml"),
    ("alertmanager", "alertmanager/alertmanager.yml"),
    ("alertmanager", "alertmanager/templates/*.tmpl"),
    ("alertmanager", "alertmanager/route-tests.yaml"),
    ("runbooks", "runbooks/*.md"),
    ("collector", "collector/config.yaml"),
    ("loki", "loki/config.yaml"),
    ("jaeger", "jaeger/config.yaml"),
    ("grafana", "grafana/provisioning/datasources/*.yaml"),
    ("grafana", "grafana/provisioning/dashboards/*.yaml"),
    ("grafana", "grafana/dashboards/*.json"),
    ("compose", "docker-compose.yml"),
]


@pytest.mark.parametrize("renderer, pattern", LAYOUT, ids=[pattern for _, pattern in LAYOUT])
def test_each_registered_renderer_writes_its_part_of_the_layout(renderer, pattern):
    if renderer not in RENDERERS:
        pytest.skip(f"renderer {renderer!r} not registered yet")
    bundle = render_bundle(load_default_spec())
    assert any(fnmatch.fnmatch(path, pattern) for path in bundle), f"the default bundle has no {pattern}"
