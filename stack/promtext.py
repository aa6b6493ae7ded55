"""Small, pure text helpers shared by the Prometheus and Alertmanager renderers.

- ``dump_yaml``: PyYAML ``safe_dump`` with multi-line strings as literal blocks (readable PromQL);
  ``load_yaml``: ``safe_load`` with libyaml, for obsgen's own data files.
- Prometheus' template functions ``humanize``, ``humanizePercentage`` and ``humanizeDuration``,
  re-implemented closely enough to predict the annotations ``promtool test rules`` expects.
- ``le_matcher``: a bucket-bound matcher that selects the same bucket on Prometheus 2.x and 3.x.
- ``selector`` / ``series``: PromQL selectors and promtool input series from names and labels.
"""

from __future__ import annotations

import re
from decimal import Decimal

import yaml

# ---------------------------------------------------------------------------------------
# YAML output
# ---------------------------------------------------------------------------------------


# libyaml's emitter when PyYAML has it: same bytes, several times faster on large bundles.
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BaseDumper):
    """SafeDumper that writes multi-line strings as literal blocks and never aliases."""

    def ignore_aliases(self, data) -> bool:  # noqa: D102 - repeated label dicts must stay inline
        return True

    def represent_data(self, data):  # noqa: D102
        # PyYAML's representer looks each value's type up through its MRO and keeps alias
        # bookkeeping this dumper never uses; for the plain types of a config, the node is built
        # here the way SafeRepresenter builds it (block style: dump_yaml passes
        # default_flow_style=False and sort_keys=False). Anything else goes the usual way.
        kind = type(data)
        if kind is str:
            return yaml.ScalarNode(_STR, data, style="|" if "\n" in data else None)
        if self.sort_keys or self.default_flow_style is not False:
            return super().represent_data(data)
        if kind is dict:
            represent = self.represent_data
            return yaml.MappingNode(_MAP, [(represent(k), represent(v)) for k, v in data.items()], flow_style=False)
        if kind is list:
            represent = self.represent_data
            return yaml.SequenceNode(_SEQ, [represent(item) for item in data], flow_style=False)
        if kind is bool:
            return yaml.ScalarNode(_BOOL, "true" if data else "false")
        if kind is int:
            return yaml.ScalarNode(_INT, str(data))
        if data is None:
            return yaml.ScalarNode(_NULL, "null")
        return super().represent_data(data)

    def resolve(self, kind, value, implicit):  # noqa: D102
        # The serializer asks, for every scalar, which tag its text would resolve to: a pure
        # function of the class's resolver table, called 180,000 times for the 100-service
        # bundle over a few thousand distinct strings. Answered once per string.
        if kind is not yaml.ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = _RESOLVED.get(key)
        if tag is None:
            if len(_RESOLVED) >= _RESOLVED_LIMIT:
                _RESOLVED.clear()
            tag = _RESOLVED[key] = super().resolve(kind, value, implicit)
        return tag


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_BOOL, _INT, _NULL = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:null"
_RESOLVED: dict[tuple[str, tuple[bool, bool]], str] = {}
_RESOLVED_LIMIT = 200_000


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


# libyaml's loader when PyYAML has it, for the project's own data files (alert pack, dashboard
# definitions): the same data, several times faster. A user's spec goes through stack/load.py.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    """``yaml.safe_load`` of a file shipped with obsgen."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader, C or Python


def dump_yaml(data, header: str = "") -> str:
    """Serialise ``data`` deterministically; key order is the dicts' own (built in a fixed order)."""
    body = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096
    )
    if header:
        body = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + body
    return body


# ---------------------------------------------------------------------------------------
# Go float formatting, as Prometheus and its template functions print numbers
# ---------------------------------------------------------------------------------------


def go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64): shortest digits, exponent below 1e-4 and from 1e6."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text_digits = "".join(map(str, digits))
    decimal_point = len(text_digits) + exponent  # position of the point relative to the digits
    exp = decimal_point - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:  # Go switches to %e at 1e6 for the shortest form
        mantissa = text_digits[0] + ("." + text_digits[1:] if len(text_digits) > 1 else "")
        return f"{prefix}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if decimal_point <= 0:
        return f"{prefix}0.{'0' * -decimal_point}{text_digits}"
    if decimal_point >= len(text_digits):
        return f"{prefix}{text_digits}{'0' * (decimal_point - len(text_digits))}"
    return f"{prefix}{text_digits[:decimal_point]}.{text_digits[decimal_point:]}"


def openmetrics_float(value: float) -> str:
    """How Prometheus 3 (and the Python client) write a bucket bound: Go's form, with ".0" on integers."""
    text = go_float(value)
    if any(ch in text for ch in ".eIN"):
        return text
    return text + ".0"


def le_matcher(bound: float) -> str:
    """A matcher for the bucket ``bound`` that works on Prometheus 2.x and 3.x alike.

    Prometheus 2 stores ``le`` as the exporter wrote it: Go clients write ``1``, the Python client
    writes ``1.0``. Prometheus 3 rewrites every bound to the OpenMetrics form (``1.0``) on ingestion.
    Both forms are exact strings of the same float, so a non-integral bound (0.25) has one form and
    an equality matcher; an integral bound gets an anchored alternation of its two forms
    (``le=~"1|1[.]0"``), with the dot bracketed so it cannot match another character.
    """
    forms = sorted({go_float(bound), openmetrics_float(bound)}, key=len)
    if len(forms) == 1:
        return f'le="{forms[0]}"'
    return "le=~\"" + "|".join(re.sub(r"([.+])", r"[\1]", form) for form in forms) + '"'


# ---------------------------------------------------------------------------------------
# Prometheus template functions (used by our descriptions), for expected annotations
# ---------------------------------------------------------------------------------------


def _g4(value: float) -> str:
    # Python's %g follows the same rules as Go's %g (shortest of %e/%f, trailing zeros dropped).
    return "%.4g" % value


def humanize(value: float) -> str:
    if value == 0 or value != value or value in (float("inf"), float("-inf")):
        return _g4(value)
    if abs(value) >= 1:
        prefix = ""
        for unit in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(value) < 1000:
                break
            prefix = unit
            value /= 1000
        return f"{_g4(value)}{prefix}"
    value, prefix = _scaled_up(value)
    return f"{_g4(value)}{prefix}"


def _scaled_up(value: float) -> tuple[float, str]:
    """A magnitude below 1 as Prometheus' humanize writes it: times 1000 per SI prefix (m, u, n, ...)."""
    prefix = ""
    for unit in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix = unit
        value *= 1000
    return value, prefix


def humanize_percentage(value: float) -> str:
    return f"{_g4(value * 100)}%"


def humanize_duration(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return _g4(value)
    if value == 0:
        return f"{_g4(value)}s"
    if abs(value) >= 1:
        sign = "-" if value < 0 else ""
        value = abs(value)
        whole = int(value)
        seconds, minutes, hours, days = whole % 60, (whole // 60) % 60, (whole // 3600) % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(value)}s"
    value, prefix = _scaled_up(value)
    return f"{_g4(value)}{prefix}s"


TEMPLATE_FUNCTIONS = {
    "humanize": humanize,
    "humanizePercentage": humanize_percentage,
    "humanizeDuration": humanize_duration,
}
_TEMPLATE_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
_LABEL_ACTION = re.compile(r"^\s*\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\s*$")
_VALUE_ACTION = re.compile(r"^\s*\$value\s*\|\s*([a-zA-Z]+)\s*$")


def template_problems(text: str) -> list[str]:
    """Template actions in ``text`` that ``expand_template`` cannot predict."""
    problems = []
    for action in _TEMPLATE_ACTION.findall(text):
        if _LABEL_ACTION.match(action):
            continue
        value = _VALUE_ACTION.match(action)
        if value and value.group(1) in TEMPLATE_FUNCTIONS:
            continue
        problems.append("{{" + action + "}}")
    return problems


def expand_template(text: str, labels: dict[str, str], value: float) -> str:
    """Expand the subset of Prometheus' alert templating our descriptions use.

    Only ``{{ $labels.x }}`` and ``{{ $value | humanize* }}``; anything else is refused so a unit
    test never expects a guess.
    """
    problems = template_problems(text)
    if problems:
        raise ValueError(f"cannot predict template actions {', '.join(problems)}")

    def action(match: re.Match) -> str:
        label = _LABEL_ACTION.match(match.group(1))
        if label:
            return labels.get(label.group(1), "")
        function = _VALUE_ACTION.match(match.group(1)).group(1)
        return TEMPLATE_FUNCTIONS[function](value)

    return _TEMPLATE_ACTION.sub(action, text)


# ---------------------------------------------------------------------------------------
# Selectors and promtool input series
# ---------------------------------------------------------------------------------------


def quote(value: str) -> str:
    """A PromQL / promtool string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(name: str, matchers: list[str] | tuple[str, ...] = ()) -> str:
    matchers = [m for m in matchers if m]
    return f"{name}{{{','.join(matchers)}}}" if matchers else name


def series(name: str, labels: dict[str, str]) -> str:
    """A promtool input series: name{a="1",b="2"} with labels sorted."""
    inner = ",".join(f"{key}={quote(labels[key])}" for key in sorted(labels))
    return f"{name}{{{inner}}}" if inner else name


def number(value: float) -> str:
    """A number as promtool's series notation and PromQL accept it, without float noise."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return go_float(float(value))
