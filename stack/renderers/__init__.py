"""One pure renderer per component.

Contract: ``stack/renderers/<name>.py`` exposes

    def render(spec: Spec, topology: Topology) -> dict[str, str]

returning bundle-relative POSIX paths -> file text. No I/O, no clock, no randomness: the same
spec gives the same text. ``stack.render`` calls every module named in ``RENDERERS`` in order and
refuses two renderers writing the same path.

Bundle layout (agreed by all renderers and by ``obsgen check`` / ``obsgen up``):
    collector/config.yaml
    prometheus/prometheus.yml, prometheus/rules/*.yml, prometheus/tests/*.yml
    prometheus/metric-names.yaml (with custom alerts: what their metric names are checked against)
    blackbox/blackbox.yml
    alertmanager/alertmanager.yml, alertmanager/templates/*.tmpl, alertmanager/route-tests.yaml
    loki/config.yaml
    jaeger/config.yaml
    grafana/provisioning/datasources/*.yaml, grafana/provisioning/dashboards/*.yaml, grafana/dashboards/*.json
    runbooks/<AlertName>.md
    docker-compose.yml
"""

# Each renderer's author adds its module name here when the module lands.
RENDERERS: tuple[str, ...] = (
    "grafana",
    "collector",
    "loki",
    "jaeger",
    "prometheus",
    "blackbox",
    "rules",
    "known_metrics",
    "alertmanager",
    "runbooks",
    "compose",
    "processes",
)

# Target kubernetes packages the same component configs as Kubernetes objects: one renderer that
# calls the others (docs/kubernetes.md); its bundle has no compose or native-process files.
RENDERERS_BY_TARGET: dict[str, tuple[str, ...]] = {"kubernetes": ("kubernetes", "charts")}
