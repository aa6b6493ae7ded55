"""prometheus/metric-names.yaml: the metric names the spec's services are known to expose.

Written when the spec has custom alerts, so that ``obsgen check`` can compare their names with
what exists without the spec (``stack.metric_names`` says what counts as known and why).
"""

from __future__ import annotations

from stack.metric_names import HEADER, PATH, known_metrics
from stack.promtext import dump_yaml
from stack.spec import Spec
from stack.topology import Topology


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    if not spec.alerts.custom:
        return {}
    return {PATH: dump_yaml(known_metrics(spec), header=HEADER)}
