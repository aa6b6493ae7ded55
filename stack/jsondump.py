"""``json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)``, the same text, faster.

With ``indent``, the standard library falls back to its pure-Python encoder, a tree of
generators: 1.2 of 9.9 profiled seconds of rendering 100 services (the Grafana dashboards,
docs/performance.md). This walks the tree once into a list of strings. Only the JSON types
themselves (dict with str keys, list, tuple, str, int, float, bool, None) take this path; a
document holding anything else is handed to ``json.dumps`` whole, so its errors are the usual.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring

_INDENT = "  "


class _Unusual(Exception):
    """A value only ``json.dumps`` knows what to do with."""


def dump_json(data) -> str:
    out: list[str] = []
    try:
        _value(data, out, "\n")
    except (_Unusual, RecursionError):
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    return "".join(out)


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _value(value, out: list[str], newline: str) -> None:
    kind = type(value)
    if kind is str:
        out.append(encode_basestring(value))
    elif kind is dict:
        if not value:
            out.append("{}")
            return
        inner = newline + _INDENT
        separator = "{" + inner
        for key in sorted(value):  # raises TypeError on mixed key types, as json.dumps does
            if type(key) is not str:
                raise _Unusual
            out.append(separator)
            out.append(encode_basestring(key))
            out.append(": ")
            _value(value[key], out, inner)
            separator = "," + inner
        out.append(newline + "}")
    elif kind is list or kind is tuple:
        if not value:
            out.append("[]")
            return
        inner = newline + _INDENT
        separator = "[" + inner
        for item in value:
            out.append(separator)
            _value(item, out, inner)
            separator = "," + inner
        out.append(newline + "]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int:
        out.append(int.__repr__(value))
    elif kind is float:
        out.append(_float(value))
    else:
        raise _Unusual
