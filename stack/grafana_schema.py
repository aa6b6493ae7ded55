"""Dashboard JSON against Grafana's own published types (grafana-foundation-sdk's generated models).

Grafana drops a field it does not know and misreads one of the wrong type, silently. The
grafana-foundation-sdk Python package is generated from Grafana's CUE schemas (the dashboard
schemaVersion 41 build that its README calls "Grafana next"; pyproject's test extra pins it and
says why), but its ``from_json`` ignores unknown keys and checks no types. So this module walks
the JSON itself, beside the models: every key of every object must be a field of the model at
that place (the JSON names come from the model's own ``from_json``), and every value must have
the field's type (str, int, float, bool, enum, literal, list, map, nested model, union). A
problem is reported with its JSON path: ``panels[3].fieldConfig.defaults.unit: expected str, got int``.

Where the models decide by data, so does this walk: a panel's ``options`` and
``fieldConfig.defaults.custom`` by the panel ``type`` (the SDK's registered panel variants), a
target by its (or its panel's) datasource ``type`` (the registered dataquery variants). Where the
SDK has no model (the alertlist and traces panels' options, Jaeger queries), the walk cannot
check and says so: ``unchecked`` lists those paths, and the check reports them.

Required fields are not enforced: the models give most of them defaults, and Grafana fills them
the same way on load. Missing the SDK is the caller's concern (``available()``).
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

PACKAGE = "grafana-foundation-sdk"
# The JSON keys of a model: those its from_json reads, and those its to_json writes (a constant
# such as a row's "type": "row" is written but never read).
_JSON_KEYS = (re.compile(r'if "([^"]+)" in data'), re.compile(r'payload\["([^"]+)"\]'), re.compile(r'^\s*"([^"]+)": self\.', re.M))
# Fields Grafana's own frontend writes and keeps that the schema does not declare: the walk
# accepts exactly these, with their type. VariableModel.definition is the query's text that
# Grafana's variable editor saves and its variables list shows.
FRONTEND_FIELDS: dict[str, dict[str, Any]] = {"VariableModel": {"definition": str}}


@dataclass
class SchemaReport:
    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # paths the SDK has no model for


def available() -> str | None:
    """The installed SDK's version, or None when it is not installed."""
    try:
        import grafana_foundation_sdk  # noqa: F401
        from importlib.metadata import version
    except ImportError:
        return None
    return version(PACKAGE)


def schema_version() -> int:
    """The dashboard schemaVersion the installed models describe (their default)."""
    from grafana_foundation_sdk.models.dashboard import Dashboard

    return Dashboard().schema_version


def check_dashboard(dashboard: Any) -> SchemaReport:
    """Every unknown field and wrong type of one dashboard's JSON, by JSON path."""
    from grafana_foundation_sdk.models.dashboard import Dashboard

    report = SchemaReport()
    _Walker(report).value(dashboard, Dashboard, "")
    declared = dashboard.get("schemaVersion") if isinstance(dashboard, dict) else None
    if isinstance(declared, int) and declared != schema_version():
        report.problems.append(f"schemaVersion: {declared}, while the models describe schemaVersion {schema_version()}")
    return report


# ---------------------------------------------------------------------------------------
# The models, read once
# ---------------------------------------------------------------------------------------


def _normalise(name: str) -> str:
    # JSON "gnetId" / "refId" / "type" vs attributes "gnet_id" / "ref_id" / "type_val".
    return name.removesuffix("_val").replace("_", "").lower()


@lru_cache(maxsize=None)
def model_fields(cls: type) -> dict[str, Any]:
    """JSON key -> type hint of a generated model (its ``from_json`` names the JSON keys)."""
    hints = typing.get_type_hints(cls)
    by_norm = {_normalise(attribute): hint for attribute, hint in hints.items()}
    fields: dict[str, Any] = {}
    sources = (inspect.getsource(cls.from_json), inspect.getsource(cls.to_json))
    for pattern in _JSON_KEYS:
        for source in sources:
            for key in pattern.findall(source):
                fields.setdefault(key, by_norm.get(_normalise(key), Any))
    fields.update(FRONTEND_FIELDS.get(cls.__name__, {}))
    return fields


@lru_cache(maxsize=None)
def _variants() -> tuple[dict[str, tuple[type | None, type | None]], dict[str, type]]:
    """(panel type -> (options model, custom field config model), datasource type -> query model)."""
    from grafana_foundation_sdk.cog import plugins, runtime

    plugins.register_default_plugins()
    registry = runtime.Runtime()

    def owner(hook):
        return getattr(hook, "__self__", None) if hook is not None else None

    panels = {name: (owner(v.options_from_json_hook), owner(v.field_config_from_json_hook))
              for name, v in registry.panelcfg_variants.items()}
    queries = {name: owner(v.from_json_hook) for name, v in registry.dataquery_variants.items()}
    return panels, queries


def _is_model(hint: Any) -> bool:
    return inspect.isclass(hint) and hasattr(hint, "from_json") and hasattr(hint, "to_json")


def _type_name(hint: Any) -> str:
    if inspect.isclass(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "str", bool: "bool", int: "int", float: "float",
            type(None): "null"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------------------


class _Walker:
    def __init__(self, report: SchemaReport) -> None:
        self.report = report

    def problem(self, path: str, text: str) -> None:
        self.report.problems.append(f"{path or '(root)'}: {text}")

    def value(self, value: Any, hint: Any, path: str) -> None:
        origin = typing.get_origin(hint)
        if hint is Any or hint is object:
            return
        if origin in (typing.Union, types.UnionType):
            self.union(value, typing.get_args(hint), path)
            return
        if origin is typing.Literal:
            if value not in typing.get_args(hint):
                self.problem(path, f"{value!r} is not one of {list(typing.get_args(hint))}")
            return
        if origin is list:
            if not isinstance(value, list):
                self.problem(path, f"expected an array, got {_json_type(value)}")
                return
            (item,) = typing.get_args(hint) or (Any,)
            for index, element in enumerate(value):
                self.value(element, item, f"{path}[{index}]")
            return
        if origin is dict:
            if not isinstance(value, dict):
                self.problem(path, f"expected an object (map), got {_json_type(value)}")
                return
            _, item = typing.get_args(hint) or (str, Any)
            for key, element in value.items():
                self.value(element, item, f"{path}.{key}")
            return
        if inspect.isclass(hint) and issubclass(hint, enum.Enum):
            allowed = [member.value for member in hint]
            if isinstance(value, bool) or value not in allowed:
                self.problem(path, f"{value!r} is not one of {allowed} ({hint.__name__})")
            return
        if hint is bool:
            if not isinstance(value, bool):
                self.problem(path, f"expected bool, got {_json_type(value)}")
            return
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.problem(path, f"expected int, got {_json_type(value)}")
            return
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.problem(path, f"expected a number, got {_json_type(value)}")
            return
        if hint is str:
            if not isinstance(value, str):
                self.problem(path, f"expected str, got {_json_type(value)}")
            return
        if _is_model(hint):
            self.model(value, hint, path)
            return
        if inspect.isclass(hint) and hint.__name__ == "Dataquery" and hint.__module__.endswith("cog.variants"):
            self.query(value, path, "")  # the SDK's "any query" base: dispatched by datasource type
            return
        self.problem(path, f"no rule for the model type {_type_name(hint)} (obsgen's walker is behind the SDK)")

    def union(self, value: Any, alternatives: tuple, path: str) -> None:
        if value is None and type(None) in alternatives:
            return
        candidates = [alt for alt in alternatives if alt is not type(None)]
        best: list[str] | None = None
        for alternative in candidates:
            trial = _Walker(SchemaReport())
            trial.value(value, alternative, path)
            if not trial.report.problems:
                self.report.unchecked.extend(trial.report.unchecked)
                return
            if best is None or len(trial.report.problems) < len(best):
                best = trial.report.problems
        # The alternative it comes closest to (a panel's stray field is reported against Panel,
        # not as "neither Panel nor RowPanel") says most about what is wrong.
        self.report.problems.extend(best or [])

    def model(self, value: Any, cls: type, path: str) -> None:
        if not isinstance(value, dict):
            self.problem(path, f"expected an object ({cls.__name__}), got {_json_type(value)}")
            return
        fields = model_fields(cls)
        name = cls.__name__
        for key, element in value.items():
            where = f"{path}.{key}" if path else key
            if key not in fields:
                self.problem(where, f"unknown field {key!r} of {name} (known: {', '.join(sorted(fields))})")
                continue
            if name in ("Panel", "RowPanel") and key in ("options", "fieldConfig", "targets"):
                self.panel_part(value, key, element, fields[key], where)
                continue
            self.value(element, fields[key], where)

    # Panels decide their options, custom field config and queries by data.
    def panel_part(self, panel: dict, key: str, element: Any, hint: Any, path: str) -> None:
        panel_type = panel.get("type", "")
        options_model, custom_model = _variants()[0].get(panel_type, (None, None))
        if key == "options":
            if options_model is None:
                self.report.unchecked.append(f"{path} (no model for the {panel_type!r} panel)")
                return
            self.value(element, options_model, path)
        elif key == "fieldConfig":
            self.value(element, hint, path)
            custom = element.get("defaults", {}).get("custom") if isinstance(element, dict) else None
            if isinstance(element, dict) and isinstance(element.get("defaults"), dict) and "custom" in element["defaults"]:
                if custom_model is None:
                    self.report.unchecked.append(f"{path}.defaults.custom (no model for the {panel_type!r} panel)")
                else:
                    self.value(custom, custom_model, f"{path}.defaults.custom")
        else:  # targets
            if not isinstance(element, list):
                self.problem(path, f"expected an array, got {_json_type(element)}")
                return
            source = panel.get("datasource")
            panel_source = source.get("type", "") if isinstance(source, dict) else ""
            for index, target in enumerate(element):
                self.query(target, f"{path}[{index}]", panel_source)

    def query(self, target: Any, path: str, panel_source: str) -> None:
        if not isinstance(target, dict):
            self.problem(path, f"expected an object (query), got {_json_type(target)}")
            return
        source = target.get("datasource")
        kind = (source.get("type") if isinstance(source, dict) else None) or panel_source
        model = _variants()[1].get(kind)
        if model is None:
            self.report.unchecked.append(f"{path} (no model for {kind or 'untyped'!r} queries)")
            return
        self.model(target, model, path)
