"""Where obsgen finds the programs it runs: one lookup order for `obsgen check`, `obsgen up` and the tests.

    1. $OBSGEN_TOOLS/bin                                when OBSGEN_TOOLS is set
    2. ${XDG_CACHE_HOME:-~/.cache}/obsgen/tools/bin     where scripts/install-tools.sh installs by default
    3. every directory on PATH, in order

The first two do not depend on where obsgen itself is installed, so an editable install, a
`pip install .` into a virtualenv and a second checkout all find the same tools. Every "not
found" message names each place looked, so a user can tell which one they expected.

Also the tool versions scripts/install-tools.sh builds (``native:`` in stack/data/versions.yaml),
for the tests that check what is installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable

import yaml

TOOLS_ENV = "OBSGEN_TOOLS"
INSTALL_HINT = (
    f"build it with scripts/install-tools.sh, or set {TOOLS_ENV} to the directory it installed into "
    "(the one holding bin/)"
)


def default_tools_dir() -> Path:
    """scripts/install-tools.sh's default $OBSGEN_TOOLS: outside any checkout, shared by all of them."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "obsgen" / "tools"


def tool_dirs() -> list[Path]:
    """Project-built tool directories, searched in this order before PATH (no duplicates)."""
    dirs = []
    if os.environ.get(TOOLS_ENV):
        dirs.append(Path(os.environ[TOOLS_ENV]).expanduser() / "bin")
    dirs.append(default_tools_dir() / "bin")
    unique: list[Path] = []
    for directory in dirs:
        if directory not in unique:
            unique.append(directory)
    return unique


def find_shared(relative: str) -> Path | None:
    """A directory scripts/install-tools.sh generated beside bin/ (share/RELATIVE), in the order of
    tool_dirs(), or None: data the tools need, such as the Prometheus Operator CRDs."""
    for directory in tool_dirs():
        candidate = directory.parent / "share" / relative
        if candidate.is_dir():
            return candidate
    return None


def path_dirs() -> list[Path]:
    return [Path(entry) for entry in os.environ.get("PATH", "").split(os.pathsep) if entry]


def search_dirs() -> list[Path]:
    """The whole lookup order: project tool directories, then PATH."""
    return [*tool_dirs(), *path_dirs()]


def find_executable(names: Iterable[str]) -> str | None:
    """The first executable named one of ``names`` in the lookup order (directory by directory)."""
    names = list(names)
    for directory in search_dirs():
        for name in names:
            path = directory / name
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def places_looked() -> str:
    """Every place the lookup searches, for a "not found" message."""
    configured = os.environ.get(TOOLS_ENV)
    first = (
        f"${TOOLS_ENV}/bin ({Path(configured).expanduser() / 'bin'})" if configured
        else f"${TOOLS_ENV}/bin ({TOOLS_ENV} is not set)"
    )
    path = os.pathsep.join(str(d) for d in path_dirs()) or "empty"
    return f"{first}, {default_tools_dir() / 'bin'} (the default install dir), PATH ({path})"


def not_found_message(names: Iterable[str]) -> str:
    """'promtool not found; looked in ...; build it with ...' for one tool (or its alternatives)."""
    return f"{' or '.join(names)} not found; looked in {places_looked()}; {INSTALL_HINT}"


# ---------------------------------------------------------------------------------------
# The versions scripts/install-tools.sh builds
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NativeTool:
    name: str  # the binary's name
    version: str  # what the binary reports
    pin: str | None  # the component pin (stack/data/versions.yaml) it runs, if it equals one
    module_version: str | None  # the Go module version it is built from, where that differs


@lru_cache(maxsize=1)
def native_tools() -> dict[str, NativeTool]:
    """``native:`` of stack/data/versions.yaml, versions resolved (``pin: X`` = X's version)."""
    raw = yaml.safe_load(resources.files("stack").joinpath("data/versions.yaml").read_text(encoding="utf-8"))
    tools = {}
    for name, entry in (raw.get("native") or {}).items():
        pin = entry.get("pin")
        version = str(raw[pin]["version"]) if pin else str(entry["version"])
        if pin and "version" in entry:
            raise RuntimeError(f"stack/data/versions.yaml native.{name}: give pin or version, not both")
        tools[name] = NativeTool(name, version, pin, entry.get("module_version"))
    return tools
