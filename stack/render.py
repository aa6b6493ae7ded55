"""Spec -> Bundle: every registered renderer, in order, into one mapping of path -> bytes.

Pure: no I/O (the renderers are pure too). ``stack.write`` puts a bundle on disk.
"""

from __future__ import annotations

import importlib
import posixpath
from types import MappingProxyType
from typing import Mapping

from stack.errors import RenderError
from stack.renderers import RENDERERS, RENDERERS_BY_TARGET
from stack.spec import Spec
from stack.topology import Topology

# Relative POSIX path -> file bytes, sorted by path so that iteration order is stable too.
Bundle = Mapping[str, bytes]


def render_bundle(spec: Spec, renderers: tuple[str, ...] | None = None) -> Bundle:
    """Run every renderer (the target's, ``stack.renderers.RENDERERS`` unless given) and join their files.

    Two renderers writing one path is a bug in obsgen, not in the spec: ``RenderError``.
    """
    topology = Topology(spec)
    files: dict[str, bytes] = {}
    owner: dict[str, str] = {}
    if renderers is None:
        renderers = RENDERERS_BY_TARGET.get(spec.target, RENDERERS)
    for name in renderers:
        module = importlib.import_module(f"stack.renderers.{name}")
        for path, text in module.render(spec, topology).items():
            _check_path(name, path)
            if not isinstance(text, str):
                raise RenderError(f"renderer {name!r} returned {type(text).__name__} for {path}, expected text")
            if path in files:
                raise RenderError(f"renderers {owner[path]!r} and {name!r} both write {path}")
            files[path] = text.encode("utf-8")
            owner[path] = name
    return MappingProxyType(dict(sorted(files.items())))


def _check_path(renderer: str, path: str) -> None:
    """Bundle paths are relative, normalised POSIX paths that stay inside the bundle."""
    if (
        not isinstance(path, str)
        or not path
        or path.startswith("/")
        or "\\" in path
        or posixpath.normpath(path) != path
        or path.split("/")[0] in ("..", ".")
    ):
        raise RenderError(f"renderer {renderer!r} returned a path that is not a clean relative path: {path!r}")
