"""obsgen's one tool lookup order (stack/tools.py), as `obsgen check`, `obsgen up` and the tests use it:
$OBSGEN_TOOLS/bin, then ${XDG_CACHE_HOME:-~/.cache}/obsgen/tools/bin, then PATH."""

from __future__ import annotations

import os
from io import StringIO
from pathlib import Path

import pytest
import yaml

import stack
from stack import tools
from stack.check import run_checks
from stack.up import up


def fake_tool(directory: Path, name: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\necho fake\n", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Three empty places: $OBSGEN_TOOLS, the default dir (under XDG_CACHE_HOME) and one PATH dir."""
    monkeypatch.setenv("OBSGEN_TOOLS", str(tmp_path / "env-tools"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PATH", str(tmp_path / "path-bin"))
    return {
        "env": tmp_path / "env-tools" / "bin",
        "default": tmp_path / "xdg" / "obsgen" / "tools" / "bin",
        "path": tmp_path / "path-bin",
    }


def test_the_order_is_obsgen_tools_then_the_default_dir_then_path(places):
    on_path = fake_tool(places["path"], "promtool")
    assert tools.find_executable(["promtool"]) == on_path
    in_default = fake_tool(places["default"], "promtool")
    assert tools.find_executable(["promtool"]) == in_default
    in_env = fake_tool(places["env"], "promtool")
    assert tools.find_executable(["promtool"]) == in_env
    assert tools.search_dirs() == [places["env"], places["default"], places["path"]]


def test_alternative_names_are_tried_directory_by_directory(places):
    # An otelcol-contrib in $OBSGEN_TOOLS/bin wins over an otelcol further down the order.
    fake_tool(places["path"], "otelcol")
    contrib = fake_tool(places["env"], "otelcol-contrib")
    assert tools.find_executable(["otelcol", "otelcol-contrib"]) == contrib


def test_the_default_dir_follows_xdg_cache_home_else_home(monkeypatch, tmp_path):
    monkeypatch.delenv("OBSGEN_TOOLS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tools.tool_dirs() == [tmp_path / "xdg" / "obsgen" / "tools" / "bin"]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tools.tool_dirs() == [tmp_path / "home" / ".cache" / "obsgen" / "tools" / "bin"]


def test_obsgen_tools_set_to_the_default_dir_is_searched_once(places, monkeypatch):
    monkeypatch.setenv("OBSGEN_TOOLS", str(places["default"].parent))
    assert tools.tool_dirs() == [places["default"]]


def test_nothing_is_looked_up_next_to_the_installed_package(places):
    # <repo>/.tools meant nothing after a non-editable `pip install .`: obsgen no longer looks there.
    package_root = Path(stack.__file__).resolve().parent.parent
    assert not any(package_root in directory.parents or directory == package_root
                   for directory in tools.search_dirs())


def test_not_found_names_every_place_and_obsgen_tools(places):
    message = tools.not_found_message(["pint"])
    assert message.startswith("pint not found; looked in ")
    assert f"$OBSGEN_TOOLS/bin ({places['env']})" in message
    assert f"{places['default']} (the default install dir)" in message
    assert f"PATH ({places['path']})" in message
    assert "scripts/install-tools.sh" in message and "set OBSGEN_TOOLS" in message


def test_not_found_says_when_obsgen_tools_is_not_set(places, monkeypatch):
    monkeypatch.delenv("OBSGEN_TOOLS")
    monkeypatch.setenv("PATH", os.pathsep.join(["/nowhere/a", "/nowhere/b"]))
    message = tools.not_found_message(["otelcol", "otelcol-contrib"])
    assert message.startswith("otelcol or otelcol-contrib not found; looked in $OBSGEN_TOOLS/bin "
                              "(OBSGEN_TOOLS is not set), ")
    assert f"PATH (/nowhere/a{os.pathsep}/nowhere/b)" in message


def test_obsgen_check_skips_with_the_full_message(places, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "prometheus").mkdir(parents=True)
    (bundle / "prometheus" / "prometheus.yml").write_text("global: {}\n", encoding="utf-8")
    (result,) = [r for r in run_checks(bundle) if r.name == "promtool check config"]
    assert result.status == "skipped"
    assert result.detail == tools.not_found_message(["promtool"])


def test_obsgen_check_runs_the_tool_from_obsgen_tools(places, tmp_path):
    fake_tool(places["path"], "promtool")
    chosen = fake_tool(places["env"], "promtool")
    bundle = tmp_path / "bundle"
    (bundle / "prometheus").mkdir(parents=True)
    (bundle / "prometheus" / "prometheus.yml").write_text("global: {}\n", encoding="utf-8")
    (result,) = [r for r in run_checks(bundle) if r.name == "promtool check config"]
    assert (result.status, result.tool) == ("passed", chosen)


def test_obsgen_up_skips_an_absent_component_with_the_full_message(places, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "local").mkdir(parents=True)
    manifest = {"processes": [{"name": "jaeger", "binary": ["jaeger"], "args": [], "ready": {"tcp": "127.0.0.1:1"},
                               "listens": []}], "secrets": []}
    (bundle / "local" / "processes.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    out = StringIO()
    report = up(bundle, out=out)
    assert report.started == []
    assert report.skipped == [("jaeger", f"not installed: {tools.not_found_message(['jaeger'])}")]
    assert "OBSGEN_TOOLS" in out.getvalue()
