"""The upstream Helm charts of target kubernetes: pinned versions (stack/data/versions.yaml,
``kubernetes.charts``) and the key lists of their default values (stack/data/charts/).

Shared by the charts renderer (which writes one values file per chart) and ``obsgen check``
(which compares those files with the pinned chart's defaults), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

CHARTS_DIR = "charts"  # in the bundle: charts/<chart>-values.yaml, not kustomize resources

# Keys under which a chart hands a block to the component's own config rather than to its
# templates (loki: the `loki.config` template of the chart's values.yaml writes these blocks as
# limits_config, schema_config and compactor; jaeger: templates/jaeger/jaeger-user-config.yaml
# writes userconfig as the config file). Their insides are the component's keys, checked against
# the component (Loki's configuration reference in the tests, `jaeger validate` in `obsgen check`),
# not against the chart's defaults.
PASS_THROUGH: dict[str, dict[str, str]] = {
    "loki": {"loki.limits_config": "limits_config", "loki.schemaConfig": "schema_config",
             "loki.compactor": "compactor"},
    "jaeger": {"userconfig": ""},  # the whole Jaeger config
}


@dataclass(frozen=True)
class ChartPin:
    name: str
    version: str
    repository: str  # the Helm repository URL
    repo_name: str   # the name `helm repo add` gives it
    release: str     # the release name the in-cluster hosts (stack/ports.py) assume
    app_version: str


@lru_cache(maxsize=1)
def chart_pins() -> dict[str, ChartPin]:
    raw = yaml.safe_load(resources.files("stack").joinpath("data/versions.yaml").read_text(encoding="utf-8"))
    return {name: ChartPin(name=name, **{key: str(value) for key, value in pin.items()})
            for name, pin in raw["kubernetes"]["charts"].items()}


def values_path(chart: str) -> str:
    return f"{CHARTS_DIR}/{chart}-values.yaml"


def chart_of(path: str) -> str | None:
    """The chart whose values file ``path`` (bundle-relative) is, or None."""
    for chart in chart_pins():
        if path == values_path(chart):
            return chart
    return None


@lru_cache(maxsize=None)
def default_keys(chart: str) -> dict[str, str]:
    """key path -> kind of its default (map, open, null, list, bool, int, float, str) in the pinned
    chart version's values.yaml, from stack/data/charts/<chart>-<version>.tsv."""
    pin = chart_pins()[chart]
    text = resources.files("stack").joinpath(f"data/charts/{chart}-{pin.version}.tsv").read_text(encoding="utf-8")
    return dict(line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))


def values_schema(chart: str) -> dict | None:
    """The pinned chart version's values.schema.json, where the chart has one."""
    import json

    pin = chart_pins()[chart]
    path = resources.files("stack").joinpath(f"data/charts/{chart}-{pin.version}.values.schema.json")
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def key_problems(values: dict, keys: dict[str, str], pass_through: frozenset[str] = frozenset(),
                 prefix: str = "") -> list[str]:
    """Every key ``values`` sets must be a key of the chart's defaults with a value of the same
    kind. Under an ``open`` or ``null`` default (an empty mapping or an unset key), or a
    ``pass_through`` key, the chart passes the value on to a config or object field: its inside is
    not the chart's to check."""
    problems = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        kind = keys.get(path)
        if kind is not None and path in pass_through:
            continue
        if kind is None:
            problems.append(f"{path}: not a key of the chart's values")
        elif kind == "map":
            if isinstance(value, dict):
                problems += key_problems(value, keys, pass_through, path)
            else:
                problems.append(f"{path}: the chart expects a mapping, got {value!r}")
        elif kind in ("open", "null"):
            continue
        elif not _same_kind(kind, value):
            problems.append(f"{path}: the chart's default is a {kind}, got {value!r}")
    return problems


def _same_kind(kind: str, value) -> bool:
    if kind == "list":
        return isinstance(value, list)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)  # str
