"""Errors a user can act on: each names the file, line, column and key path it is about.

Pure: no I/O. ``stack.load`` builds ``SpecIssue``s from YAML and pydantic errors; the CLI prints
them, one per line, and exits 2. Model validators in ``stack.spec`` raise ``KeyPathError`` so that
a cross-field problem (a duplicate name, an unknown port) points at the key it is about rather
than at the whole section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

KeyPath = tuple[str | int, ...]


def format_key_path(path: Sequence[str | int]) -> str:
    """``("notifications", "receivers", 0, "api_url")`` -> ``notifications.receivers[0].api_url``."""
    text = ""
    for part in path:
        if part == "[key]":
            continue  # pydantic's marker for "the mapping key itself", not a step
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            if not part.isprintable():
                part = repr(part)  # a key with a newline or control character: still one line per problem
            text += f".{part}" if text else str(part)
    return text or "(top level)"


@dataclass(frozen=True, order=True)
class SpecIssue:
    """One problem in a spec, located in its file."""

    file: str
    line: int | None  # 1-based; None when the problem is not tied to a place (an empty file)
    column: int | None  # 1-based
    path: str  # dotted key path, e.g. services[0].metrics.port
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}"


class SpecError(Exception):
    """A spec that cannot be used; carries every problem found, reported together."""

    def __init__(self, issues: Iterable[SpecIssue]):
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.column or 0, i.path, i.message))
        super().__init__("\n".join(str(issue) for issue in self.issues))


class KeyPathError(ValueError):
    """Raised inside model validators: problems each tied to a key path relative to that model.

    pydantic keeps the exception in the error's context, so the loader can join the model's own
    location with these paths and point at the exact line.
    """

    def __init__(self, problems: Sequence[tuple[KeyPath, str]]):
        self.problems = [(tuple(path), message) for path, message in problems]
        super().__init__("; ".join(f"{format_key_path(path)}: {message}" for path, message in self.problems))


class RenderError(Exception):
    """The renderers disagree (two write one path) or one returned something that is not a file."""
