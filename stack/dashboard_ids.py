"""Dashboard uids and the dashboards a bundle provisions (pure).

Shared by the Grafana dashboards renderer, which writes ``grafana/dashboards/<uid>.json``, and the
runbooks renderer, which links to ``/d/<uid>``: keeping both here means neither renderer imports
the other, and a link cannot point at a dashboard under another uid.

A derived uid is ``<project>-<title>-<hash>``: the slugs of the project name and of the title,
cut so that the whole fits Grafana's 40 characters, then 8 hex digits of a hash of both. The
project is part of it so that two bundles provisioned into one Grafana do not overwrite each
other's dashboards; the hash keeps uids distinct when the slugs are cut or equal.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib import resources

from stack.promtext import load_yaml

MAX_UID_LENGTH = 40  # Grafana refuses longer dashboard uids
UID_PATTERN = r"^[a-zA-Z0-9_-]{1,40}$"  # what Grafana accepts as a dashboard uid
SLO_DASHBOARD_TITLE = "SLOs"
_DIGEST_LENGTH = 8
_MIN_PART = 15  # when both slugs do not fit, neither is cut shorter than this (unless it is shorter)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def dashboard_uid(project: str, title: str) -> str:
    """A stable uid for the dashboard ``title`` of ``project``: readable, unique, at most 40 characters."""
    digest = hashlib.sha256(f"{project}/{title}".encode("utf-8")).hexdigest()[:_DIGEST_LENGTH]
    project_slug, title_slug = slug(project), slug(title)
    room = MAX_UID_LENGTH - _DIGEST_LENGTH - 1  # the slugs and the dash between them
    if project_slug and title_slug and len(project_slug) + 1 + len(title_slug) > room:
        # Share the room: each keeps at least _MIN_PART characters, the shorter one lends the rest.
        project_room = min(len(project_slug), max(_MIN_PART, room - 1 - len(title_slug)))
        project_slug = project_slug[:project_room].rstrip("-")
        title_slug = title_slug[: room - 1 - len(project_slug)].rstrip("-")
    words = "-".join(part for part in (project_slug, title_slug) if part)[:room].rstrip("-")
    return f"{words}-{digest}" if words else digest


def uid_for(project: str, title: str, explicit: str | None = None) -> str:
    """A dashboard's uid: the one its definition gives (custom dashboards may), else derived."""
    return explicit or dashboard_uid(project, title)


@lru_cache(maxsize=1)
def builtin_titles() -> tuple[str, ...]:
    """The titles of ``dashboards/*.yaml``, in file-name order (the order the renderer reads them)."""
    titles = []
    for entry in sorted(resources.files("dashboards").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            document = load_yaml(entry.read_text(encoding="utf-8")) or {}
            titles.append(str(document.get("title", "")))
    return tuple(titles)


def generated_dashboards(project: str, *, builtin: bool, slos: bool) -> list[tuple[str, str]]:
    """(title, uid) of every dashboard obsgen itself writes: the built-in ones, the SLO dashboard."""
    titles = list(builtin_titles()) if builtin else []
    if slos:
        titles.append(SLO_DASHBOARD_TITLE)
    return [(title, dashboard_uid(project, title)) for title in titles]


def provisioned_dashboards(spec) -> list[tuple[str, str]]:  # a stack.spec.Spec: not imported, the spec imports this module
    """(title, uid) of every dashboard the bundle provisions, in the order the renderer writes them."""
    dashboards = generated_dashboards(spec.project, builtin=spec.dashboards.builtin, slos=bool(spec.slos))
    dashboards += [(c.title, uid_for(spec.project, c.title, c.uid)) for c in spec.dashboards.custom]
    return dashboards
