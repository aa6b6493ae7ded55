"""YAML text -> ``Spec``, with every problem located at file:line:column and a key path.

The edge between a user's file and the pure model. PyYAML composes a node tree (which keeps
each node's position) and constructs plain data from the same tree; pydantic validates the
data; each pydantic error location (a key path) is then walked back through the node tree to
the line it came from. All problems are collected and raised together as one ``SpecError``.
"""

from __future__ import annotations

import difflib
import os
import types
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from stack.errors import KeyPathError, SpecError, SpecIssue, format_key_path
from stack.spec import SPEC_VERSION, Spec

DEFAULT_SPEC_RESOURCE = "data/default.yaml"
DEFAULT_SPEC_NAME = "<embedded default spec>"

# Friendlier words for the spec's name patterns than the raw regular expression.
_PATTERN_WORDS = {
    r"^[a-z][a-z0-9-]{0,62}$": "a lowercase name: a-z, 0-9 and '-', starting with a letter, at most 63 characters",
    r"^[A-Z][A-Za-z0-9]{0,127}$": "a CamelCase alert name such as HighErrorRate (letters and digits)",
    r"^[a-zA-Z_][a-zA-Z0-9_]*$": "a Prometheus label name: letters, digits and '_', not starting with a digit",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "an environment variable name: letters, digits and '_'",
    r"^[a-zA-Z0-9_-]{1,40}$": "a Grafana uid: 1 to 40 of a-z A-Z 0-9 _ -",
    r"^/": "a path starting with /",
}


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def load_spec(text: str, filename: str, base_dir: str | os.PathLike | None = None) -> Spec:
    """Parse and validate a spec; raise ``SpecError`` listing every problem found.

    ``base_dir`` is where relative secret file paths point from (the spec's own directory).
    """
    root, data = _parse_yaml(text, filename)
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        line, column = _position(root)
        raise SpecError([SpecIssue(
            filename, line, column, "(top level)",
            f"the spec is {what}: expected a mapping with at least version: {SPEC_VERSION}, project and services",
        )])

    issues: list[SpecIssue] = list(_duplicate_keys(root, filename))
    version_issue = _check_version(root, data, filename)
    if version_issue is not None:
        if "version" in data:
            # Another version has another model: checking the rest against version 1 would only mislead.
            raise SpecError([version_issue])
        issues.append(version_issue)

    context = {"base_dir": os.fspath(base_dir)} if base_dir is not None else None
    try:
        spec = Spec.model_validate(data, context=context)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if error["loc"] == ("version",) and version_issue is not None:
                continue  # already reported above, in our words
            issues.extend(_issues_from_error(error, root, filename))
    else:
        if not issues:
            return spec
    raise SpecError(issues)


def load_spec_file(path: str | os.PathLike) -> Spec:
    """Read and load the spec at ``path``; relative secret files resolve against its directory."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecIssue(name, None, None, "(file)", "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([SpecIssue(name, None, None, "(file)", "is a directory, expected a YAML file")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([SpecIssue(name, None, None, "(file)", f"is not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise SpecError([SpecIssue(name, None, None, "(file)", f"cannot be read: {exc.strerror}")]) from None
    return load_spec(text, name, base_dir=os.path.dirname(os.path.abspath(name)))


def default_spec_text() -> str:
    """The embedded default spec: this project's instrumented server."""
    return resources.files("stack").joinpath(DEFAULT_SPEC_RESOURCE).read_text(encoding="utf-8")


def load_default_spec() -> Spec:
    return load_spec(default_spec_text(), DEFAULT_SPEC_NAME)


# ---------------------------------------------------------------------------------------
# YAML: one parse gives both the node tree (positions) and the data
# ---------------------------------------------------------------------------------------


# libyaml's parser when PyYAML has it: the same nodes (with line and column marks) and data,
# several times faster than the pure-Python one. Any error is left to the pure-Python loader,
# so a bad spec is reported in the same words either way.
_CSafeLoader = getattr(yaml, "CSafeLoader", None)


def _parse_yaml(text: str, filename: str) -> tuple[yaml.Node | None, Any]:
    if _CSafeLoader is not None:
        try:
            yaml.reader.Reader(text)  # refuses the control characters the pure-Python reader refuses
            fast = _CSafeLoader(text)
            try:
                root = fast.get_single_node()
                return root, (fast.construct_document(root) if root is not None else None)
            finally:
                fast.dispose()
        except yaml.YAMLError:
            pass
    try:
        loader = yaml.SafeLoader(text)  # the reader refuses control characters here, before parsing
    except yaml.reader.ReaderError as exc:
        line, column = text.count("\n", 0, exc.position) + 1, exc.position - text.rfind("\n", 0, exc.position)
        raise SpecError([SpecIssue(filename, line, column, "(yaml)", f"invalid YAML: unacceptable character "
                                   f"#x{exc.character:04x}: {exc.reason}")]) from None
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
        return root, data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "malformed"
        if exc.context and exc.context_mark and exc.problem_mark and exc.context_mark.line != mark.line:
            # "while parsing a flow sequence" started elsewhere: say where, it is often the culprit
            problem += f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        if isinstance(exc, yaml.composer.ComposerError) and "single document" in (exc.context or ""):
            problem = "expected a single YAML document, found more than one (remove the extra '---')"
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise SpecError([SpecIssue(filename, line, column, "(yaml)", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
        position = getattr(exc, "position", None)
        raise SpecError([SpecIssue(
            filename, None, None, "(yaml)", f"invalid YAML: {exc}" + (f" (at character {position})" if position else "")
        )]) from None
    finally:
        loader.dispose()


def _position(node: yaml.Node | None) -> tuple[int | None, int | None]:
    if node is None:
        return (1, 1)
    return node.start_mark.line + 1, node.start_mark.column + 1


def _duplicate_keys(root: yaml.Node, filename: str, path: tuple = ()):
    """PyYAML keeps the last of two equal keys silently; a spec that says a thing twice is an error."""
    if isinstance(root, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in root.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                if key in seen:
                    line, column = _position(key_node)
                    yield SpecIssue(
                        filename, line, column, format_key_path((*path, key)),
                        f"duplicate key {key!r}: already given at line {seen[key].start_mark.line + 1}",
                    )
                else:
                    seen[key] = key_node
            yield from _duplicate_keys(value_node, filename, (*path, key if key is not None else "?"))
    elif isinstance(root, yaml.SequenceNode):
        for index, item in enumerate(root.value):
            yield from _duplicate_keys(item, filename, (*path, index))


def _check_version(root: yaml.Node, data: dict, filename: str) -> SpecIssue | None:
    if "version" not in data:
        line, column = _position(root)
        return SpecIssue(filename, line, column, "version", f"missing: the first line should be `version: {SPEC_VERSION}`")
    value = data["version"]
    if type(value) is int and value == SPEC_VERSION:
        return None
    node = _child(root, "version")
    line, column = _position(node[1] if node else root)
    return SpecIssue(
        filename, line, column, "version",
        f"unsupported spec version {value!r}: this obsgen reads version {SPEC_VERSION} (write `version: {SPEC_VERSION}`)",
    )


def _child(node: yaml.Node | None, key: Any) -> tuple[yaml.Node, yaml.Node] | None:
    """(key node, value node) of ``key`` in a mapping node, or the item of a sequence node."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in reversed(node.value):  # the last one wins, as in the data
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(key):
                return key_node, value_node
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        item = node.value[key]
        return item, item
    return None


# ---------------------------------------------------------------------------------------
# pydantic error -> located issue
# ---------------------------------------------------------------------------------------


def _issues_from_error(error: dict, root: yaml.Node, filename: str) -> list[SpecIssue]:
    ctx_error = (error.get("ctx") or {}).get("error")
    if isinstance(ctx_error, KeyPathError):
        return [
            _locate(filename, root, (*error["loc"], *path), "value_error", message)
            for path, message in ctx_error.problems
        ]
    loc = tuple(error["loc"])
    kind = error["type"]
    then_key = None
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # Point at the discriminator key itself: `type: sms` rather than the whole receiver.
        then_key = str((error.get("ctx") or {}).get("discriminator", "type")).strip("'")
    return [_locate(filename, root, loc, kind, _message(error), then_key=then_key)]


def _locate(
    filename: str, root: yaml.Node, loc: tuple, kind: str, message: str, then_key: str | None = None
) -> SpecIssue:
    steps = _classify(loc)
    display: list[str | int] = []
    node: yaml.Node | None = root
    key_node: yaml.Node | None = None
    found = True  # still following the YAML; once a key is absent we stay at the deepest node found
    for element, step in zip(loc, steps):
        if step == "dictkey":
            node = key_node if found and key_node is not None else node
            continue
        if step not in ("key", "index"):
            continue  # a union tag pydantic adds to the path, not a key the user wrote
        display.append(element)
        if found:
            child = _child(node, element)
            if child is None:
                found = False
            else:
                key_node, node = child
    if then_key is not None:
        display.append(then_key)
        child = _child(node, then_key) if found else None
        if child is not None:
            node = child[1]
    if kind == "extra_forbidden" and found and key_node is not None:
        node = key_node  # point at the unknown key, not its value
    line, column = _position(node)
    return SpecIssue(filename, line, column, format_key_path(display), message)


def _message(error: dict) -> str:
    kind, loc, msg = error["type"], error["loc"], error["msg"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = _known_keys(tuple(loc[:-1]))
        suggestion = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if suggestion:
            return f"unknown key {key!r}; did you mean {suggestion[0]!r}?"
        return f"unknown key {key!r}; expected one of: {', '.join(known)}" if known else f"unknown key {key!r}"
    if kind == "missing":
        return f"missing required key {str(loc[-1])!r}" if loc else "missing"
    if kind == "union_tag_invalid":
        tag, expected = ctx.get("tag"), [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        suggestion = difflib.get_close_matches(str(tag), expected, n=1, cutoff=0.6)
        hint = f"; did you mean {suggestion[0]!r}?" if suggestion else ""
        return f"unknown type {tag!r}{hint}; expected one of: {', '.join(expected)}"
    if kind == "union_tag_not_found":
        return f"missing required key {str(ctx.get('discriminator', 'type')).strip(chr(39))!r}"
    if kind == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(ctx.get("pattern", ""), f"a string matching {ctx.get('pattern')}")
        return f"expected {words} (got {_short(error.get('input'))})"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "assertion_error":
        return msg.removeprefix("Assertion failed, ")
    got = error.get("input")
    if isinstance(got, (str, int, float, bool)) or got is None:
        return f"{_lower_first(msg)} (got {_short(got)})"
    return f"{_lower_first(msg)} (got a {_yaml_kind(got)})"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_kind(value: Any) -> str:
    return "mapping" if isinstance(value, dict) else "list" if isinstance(value, list) else type(value).__name__


# ---------------------------------------------------------------------------------------
# Walking the model's types along an error location
# ---------------------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type that has structure."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _field_type(model: type[BaseModel], key: Any) -> tuple[bool, Any]:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return True, field.annotation
    return False, None


def _union_member(members: tuple, tag: Any) -> Any | None:
    """The member of a tagged union that pydantic named ``tag`` in an error path."""
    for member in members:
        for candidate in (member, _unwrap(member)):
            if get_origin(candidate) is Annotated:
                if any(getattr(meta, "tag", None) == tag for meta in get_args(candidate)[1:]):
                    return _unwrap(candidate)
        inner = _unwrap(member)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            if inner.__name__ == tag:
                return inner
            type_field = inner.model_fields.get("type")
            if type_field is not None and get_origin(type_field.annotation) is Literal:
                if tag in get_args(type_field.annotation):
                    return inner
    return None


def _field_of_any_member(members: tuple, key: Any) -> Any:
    for member in members:
        inner = _unwrap(member)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            known, field_type = _field_type(inner, key)
            if known:
                return field_type
    return None


def _walk_types(loc: tuple) -> tuple[list[str], Any]:
    """Follow an error location through the model's types.

    Returns, for each element, what it is: ``key``, ``index``, ``dictkey`` (the error is about a
    mapping key itself) or ``tag`` (a union member name pydantic adds, which the user never wrote),
    and the type reached at the end (None when it could not be followed).
    """
    kinds: list[str] = []
    tp: Any = Spec
    for element in loc:
        if element == "[key]":
            kinds.append("dictkey")
            continue
        tp = _unwrap(tp)
        origin = get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            kinds.append("key")
            tp = _field_type(tp, element)[1]
        elif origin is list and isinstance(element, int):
            kinds.append("index")
            tp = get_args(tp)[0]
        elif origin is dict:
            kinds.append("key")
            tp = get_args(tp)[1]
        elif origin in (Union, types.UnionType):
            member = _union_member(get_args(tp), element)
            if member is not None:
                kinds.append("tag")
                tp = member
            else:
                # A path from our own validators names the field directly, without pydantic's tag.
                kinds.append("key")
                tp = _field_of_any_member(get_args(tp), element)
        elif isinstance(element, int):
            kinds.append("index")
            tp = None
        else:
            # Past what the types describe (under an unknown key) everything is a key; inside a
            # scalar type, pydantic's own markers (e.g. "function-after[...]") are tags.
            kinds.append("key" if tp is None else "tag")
    return kinds, tp


def _classify(loc: tuple) -> list[str]:
    return _walk_types(loc)[0]


def _known_keys(loc: tuple) -> list[str]:
    """Field names (as written in YAML, i.e. aliases) of the model at ``loc``."""
    tp = _unwrap(_walk_types(loc)[1])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [field.alias or name for name, field in tp.model_fields.items()]
    return []
