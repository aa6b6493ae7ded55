"""runbooks/<AlertName>.md: a page for every alert the bundle can fire (pack, SLO, custom).

Pure: ``render(spec, topology)`` expands the Jinja2 templates shipped in alerts/runbooks/ (package
data, read like any other bundled source). Each page says what the alert means, its impact, how
to diagnose it (queries, dashboards, logs) and how to mitigate it.

Every alert's ``runbook_url`` is ``<base>/<AlertName>.md`` (``stack.renderers.alerting.runbook_url``). The default
base is Grafana's public folder, where compose mounts the bundle's runbooks/
(http://localhost:<grafana port>/public/runbooks), or in the local target the runbook server
`obsgen up` starts (http://127.0.0.1:<runbooks port>); ``alerts.runbook_base_url`` points it at a
wiki or a docs site instead. ``obsgen check`` maps any such URL back to ``runbooks/<file>`` in the
bundle, so a link that would not resolve is caught before anyone is paged.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2

from stack.renderers.alerting import RunbookPage, runbook_path
from stack.renderers.rules import runbook_pages  # the rules decide which alerts exist
from stack.spec import Spec
from stack.topology import Topology

TEMPLATES = "runbooks"  # under the alerts package


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    def load(name: str) -> str | None:
        source = resources.files("alerts").joinpath(TEMPLATES, name)
        return source.read_text(encoding="utf-8") if source.is_file() else None

    return jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def template_for(page: RunbookPage) -> str:
    """The template a page is rendered from: the alert's own, else its kind's generic one."""
    own = f"{page.name}.md.j2"
    if page.source == "pack" and resources.files("alerts").joinpath(TEMPLATES, own).is_file():
        return own
    return f"_{page.source}.md.j2"


def links(spec: Spec, topology: Topology) -> dict:
    """Where a person on call opens things, from their machine (published ports on localhost)."""

    def url(component: str, port: str) -> str:
        return f"http://localhost:{topology.port(component, port)}"

    from stack.dashboard_ids import provisioned_dashboards

    # Every dashboard the bundle provisions, under the uid the Grafana renderer gives it.
    dashboards = [(title, f"{url('grafana', 'http')}/d/{uid}") for title, uid in provisioned_dashboards(spec)]
    return {
        "grafana": url("grafana", "http"),
        "prometheus": url("prometheus", "http"),
        "alertmanager": url("alertmanager", "http"),
        "jaeger": url("jaeger", "query"),
        "dashboards": dashboards,
    }


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    environment = _environment()
    context = {"spec": spec, "links": links(spec, topology)}
    files = {}
    for page in runbook_pages(spec, topology):
        text = environment.get_template(template_for(page)).render(page=page, **context)
        files[runbook_path(page.name)] = _tidy(text)
    return files


def _tidy(text: str) -> str:
    """One trailing newline and no runs of blank lines, whatever the template's conditionals left."""
    lines = [line.rstrip() for line in text.splitlines()]
    tidy: list[str] = []
    for line in lines:
        if not line and tidy and not tidy[-1]:
            continue
        tidy.append(line)
    return "\n".join(tidy).strip("\n") + "\n"
