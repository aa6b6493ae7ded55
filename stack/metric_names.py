"""Which metric names a custom alert may use, and the ones it uses that nothing exposes.

A misspelled metric in a custom alert renders, passes promtool and never fires. So each name a
custom alert's expression selects is compared with what is known to exist:

- the exporter catalog's names (``exporter/catalog.py``) for a ``builtin`` service and one that
  says ``metrics.exporter: true`` (instrumented with this project's ``exporter`` library);
- the names a service declares under ``metrics.names`` (its own instrumentation);
- the stack's own series (``STACK_NAMES``, ``STACK_PREFIXES``: why each is there is said below);
- recording rules of the bundle (a name with a colon is a recording rule by Prometheus' naming
  rules, so it must be recorded by some rule file).

A histogram or summary declared as ``x`` also exposes ``x_bucket``, ``x_sum``, ``x_count``;
a counter ``x_total`` (or ``x``) also ``x_created``: ``SUFFIXES``. A name that matches nothing
is a warning from ``obsgen render`` and a failure of ``obsgen check``, with the nearest known
names (difflib). A service that says nothing (neither builtin, exporter nor names) may expose anything:
the message names it, so the user can declare what it exposes.

Pure: data in, data out. ``known_metrics(spec)`` is what the bundle carries (``PATH``) so that
``obsgen check`` can compare without the spec.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping

from exporter import catalog

PATH = "prometheus/metric-names.yaml"
HEADER = (
    "Metric names the spec's services are known to expose, by service (obsgen check compares the\n"
    "custom alerts of prometheus/rules/custom.yml with them, with the stack's own names and the\n"
    "bundle's recording rules). Rendered by obsgen; declare a service's names under\n"
    "services[].metrics.names in the spec, not here."
)

# Series every Prometheus has whatever it scrapes: `up` and `scrape_*` are written per target by
# the scrape loop; ALERTS and ALERTS_FOR_STATE by the rule manager for every alerting rule.
STACK_NAMES = frozenset({
    "up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added", "scrape_body_size_bytes",
    "scrape_timeout_seconds", "scrape_sample_limit", "target_info",
})
# The stack's components Prometheus scrapes (stack/renderers/prometheus.py): each one's own
# namespace. Their metric sets change with every release and are too large to list, so a prefix
# is the honest granularity: a typo after the prefix is not caught, one in the prefix is.
# go_/process_/promhttp_/net_conntrack_: the Go runtime and client libraries of every component;
# python_/process_: prometheus_client's default collectors in the built-in server.
STACK_PREFIXES = (
    "otelcol_", "prometheus_", "alertmanager_", "loki_", "jaeger_", "grafana_",
    "go_", "process_", "promhttp_", "net_conntrack_", "python_",
)
SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_total")


def service_metric_names(service: Any) -> list[str] | None:
    """The names a service exposes, or None when the spec does not say (not builtin or exporter, no names)."""
    declared = list(service.metrics.names)
    if service.builtin or service.metrics.exporter:
        return sorted({*declared, *(metric.name for metric in catalog.CATALOG)})
    return sorted(declared) if declared else None


def known_metrics(spec: Any) -> dict:
    """What the bundle records (``PATH``): per service its names, or null when undeclared."""
    return {"services": {service.name: service_metric_names(service) for service in spec.services}}


def expression_metric_names(expr: str) -> set[str]:
    """Every metric name an expression selects (``foo{…}``, ``{__name__="foo"}``); regex names are
    not checked (they match sets, by design)."""
    import promql_parser

    found: set[str] = set()

    def walk(node: Any) -> None:
        if type(node).__name__ == "VectorSelector":
            if node.name:
                found.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__" and str(matcher.op).endswith("Equal") and "Not" not in str(matcher.op):
                    found.add(matcher.value)
            return
        for attribute in ("lhs", "rhs", "expr", "param", "args", "vector_selector"):
            value = getattr(node, attribute, None)
            for child in value if isinstance(value, list) else [value]:
                if child is not None and type(child).__module__ == "promql_parser":
                    walk(child)

    walk(promql_parser.parse(expr))
    return found


def recorded_names(documents: Iterable[Any]) -> set[str]:
    """Every ``record:`` name in parsed rule documents (rule files or PrometheusRule objects)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("record"), str):
                found.add(node["record"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for document in documents:
        walk(document)
    return found


def _exposed(name: str, declared: set[str]) -> bool:
    if name in declared:
        return True
    return any(name == base + suffix for base in declared for suffix in SUFFIXES) or any(
        name.endswith(suffix) and name[: -len(suffix)] + "_total" in declared for suffix in ("_created",)
    )


def unknown_name_problems(alerts: list[tuple[str, str]], known: dict, recorded: set[str]) -> list[str]:
    """One line per (alert, name) that matches nothing known, with a did-you-mean.

    ``alerts``: (where, expression); ``known``: ``known_metrics`` (as read back from the bundle).
    """
    services = (known or {}).get("services") or {}
    declared = {name for names in services.values() if names for name in names}
    undeclared = sorted(service for service, names in services.items() if names is None)
    candidates = sorted(declared | STACK_NAMES | recorded)
    problems = []
    for where, expr in alerts:
        for name in sorted(expression_metric_names(expr)):
            if name in STACK_NAMES or name.startswith(STACK_PREFIXES) or name in recorded:
                continue
            if ":" not in name and _exposed(name, declared):
                continue
            hint = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
            text = (f"{where}: metric {name!r} is "
                    + ("not recorded by any rule of the bundle (a name with ':' is a recording rule)"
                       if ":" in name else "exposed by no service of the spec nor the stack"))
            if hint:
                text += f"; did you mean {' or '.join(repr(h) for h in hint)}?"
            if undeclared and ":" not in name:
                text += (f" (services {', '.join(undeclared)} declare no metrics.names: list the names "
                         "they expose there to have them checked)")
            problems.append(text)
    return problems


def custom_alert_problems(spec: Any, recorded: set[str]) -> list[str]:
    """``unknown_name_problems`` of the spec's custom alerts, located by spec key path."""
    alerts = [(f"alerts.custom[{index}].expr ({alert.name})", alert.expr)
              for index, alert in enumerate(spec.alerts.custom)]
    return unknown_name_problems(alerts, known_metrics(spec), recorded)


def bundle_recorded_names(bundle: Mapping[str, bytes]) -> set[str]:
    """``recorded_names`` of every YAML file of a rendered bundle that records something."""
    import yaml

    documents = []
    for path, data in bundle.items():
        if path.endswith((".yml", ".yaml")) and b"record:" in data:
            documents.extend(yaml.safe_load_all(data))
    return recorded_names(documents)
