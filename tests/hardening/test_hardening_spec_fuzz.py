"""Spec fuzzing: any YAML document either renders a bundle the real validators accept, or exits 2
with a located message. Never a traceback, never exit 3, never half a bundle.

Two kinds of input:

- arbitrary documents: random YAML-able data (and raw text that is often not YAML at all);
- near-valid specs: the embedded default and every spec in tests/stack/specs, mutated a few times
  over (a key dropped, renamed or retyped; a value replaced by an awkward one; a value nested one
  level deeper; a subtree moved elsewhere; a line of the text deleted, duplicated or re-indented).

Each example runs ``stack.cli.main(["render", SPEC, "--out", DIR])`` over a copy of an earlier
bundle. On exit 0 the directory holds exactly the new bundle (its manifest included), and the
bundle goes through ``stack.check``: the cheap validators for every distinct bundle, the slow ones
(``promtool test rules``, ``docker-compose config``) for a deterministic share of them, so the
whole module stays within its time budget. On exit 2 the earlier bundle is untouched and every
line of the report names the spec file and a line or a key path.

Counterexamples found by this module are kept below as ``@example``s, each with what it broke.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from stack import check
from stack.cli import main
from stack.load import default_spec_text
from stack.write import MANIFEST, read_manifest

REPO = Path(__file__).resolve().parents[2]
SPECS_DIR = REPO / "tests" / "stack" / "specs"
SPEC_NAME = "obsgen.yaml"

# Checks that cost little (well under a second each) run for every distinct rendered bundle.
CHEAP_CHECKS = (
    check.check_promtool_config, check.check_promtool_rules, check.check_amtool_config, check.check_amtool_routes,
    check.check_otelcol, check.check_jaeger, check.check_loki, check.check_runbooks, check.check_dashboard_uids,
    check.check_promql,
)
# Not here: "secret files exist" checks the host the stack runs on, not the bundle (a mutated
# `file:` names a file that is not there, rightly). test_hardening_secrets covers secret files.
# promtool test rules takes ~7 s and docker-compose config ~2 s on this machine: one bundle in
# SLOW_CHECK_SHARE gets them, chosen by the bundle's digest so a replayed example gets the same.
SLOW_CHECKS = (check.check_promtool_tests, check.check_compose)
SLOW_CHECK_SHARE = 4
TOOLS = ("promtool", "amtool", "docker-compose")


# ---------------------------------------------------------------------------------------
# The seeds
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def seed_texts() -> dict[str, str]:
    texts = {"default": default_spec_text()}
    for path in sorted(SPECS_DIR.glob("*.yaml")):
        texts[path.stem] = path.read_text(encoding="utf-8")
    return texts


@lru_cache(maxsize=1)
def seed_documents() -> dict[str, Any]:
    return {name: yaml.safe_load(text) for name, text in seed_texts().items()}


# Values that have broken config generators: template syntax of the tools that read the output
# (Go templates, Grafana's $, compose's $), quotes, YAML-significant text, control characters,
# numbers at the edges, and the wrong type altogether.
AWKWARD_STRINGS = [
    "", " ", "a", "A", "x" * 300, "{{ $value }}", "{{", "}}", "{{ end }}", "$", "$$", "${X}", "$__rate_interval",
    '"', "'", "\\", "\\n", "\n", "a\nb", "#", ": ", "- x", "[", "{", "*", "&a", "!tag", "%s", "`", "\t",
    "é", "💥", "null", "true", "0", "1e3", "0s", "1ms", "99999y", "1h30m", "30d", "-1s",
    'severity="critical"', 'a="b\\"c"', "up", "vector(1)", "sum(rate(x_total[$window]))",
    "http://127.0.0.1:5001/x", "https://user:pw@example.com/", "a@b", "smtp.example.com:25", "#chan",
    "/", "/metrics", "../../etc/passwd", "secrets/x", "ws-server", "0.0.0.0", "::1",
]
AWKWARD_SCALARS = [
    None, True, False, 0, 1, -1, 7, 65535, 65536, 2**31, 2**63, 10**30, 0.0, -0.5, 0.1, 99.999, 1e308,
    float("inf"), float("nan"),
]
AWKWARD_CONTAINERS = [[], {}, [1], ["a"], [{}], {"a": 1}, {"file": "x"}, {"env": "X"}, [[]], {"": None}]
AWKWARD = st.one_of(st.sampled_from(AWKWARD_STRINGS), st.sampled_from(AWKWARD_SCALARS),
                    st.sampled_from(AWKWARD_CONTAINERS), st.text(max_size=20), st.integers())


# Weighted: a value replaced by an awkward one of the same type keeps most specs valid, so it is
# the one that reaches the renderers and the validators most often.
MUTATIONS = ["same-type"] * 6 + ["drop", "rename", "replace", "retype", "nest", "graft", "duplicate"]


NAME_KEYS = {"name", "project", "receiver"}  # lowercase names: most awkward strings are refused there


def same_type_values(value: Any, key: Any = None) -> st.SearchStrategy:
    if isinstance(value, str) and key in NAME_KEYS:
        return st.one_of(st.from_regex(r"\A[a-z][a-z0-9-]{0,62}\Z"), st.sampled_from(AWKWARD_STRINGS))
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.sampled_from([0, 1, -1, 2, 59, 1000, 65535, 65536, 2**31, 10**12]), st.integers())
    if isinstance(value, float):
        return st.one_of(st.sampled_from([0.0, 0.001, 0.1, 1.0, 50.0, 99.0, 99.999, 100.0, 1e9]), st.floats())
    if isinstance(value, str):
        return st.one_of(st.sampled_from(AWKWARD_STRINGS), st.text(max_size=40))
    if isinstance(value, list):
        return st.sampled_from([[], value[:1], value[1:], value + value[:1]])
    if isinstance(value, dict):
        return st.sampled_from([{}, dict(list(value.items())[:1]), dict(list(value.items())[1:])])
    return st.just(value)


# ---------------------------------------------------------------------------------------
# Mutations of a document (pure: they return a new document)
# ---------------------------------------------------------------------------------------


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``node`` (mapping keys and list indexes), outermost first."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((*prefix, index))
            found.extend(paths(value, (*prefix, index)))
    return found


def get(node: Any, path: tuple) -> Any:
    for step in path:
        node = node[step]
    return node


def mutate(doc: Any, data: st.DataObject) -> Any:
    doc = copy.deepcopy(doc)
    where = paths(doc)
    if not where:
        return data.draw(AWKWARD, label="replacement document")
    text_leaves = [p for p in where if isinstance(get(doc, p), str)]
    if text_leaves and data.draw(st.booleans(), label="a text leaf"):
        where = text_leaves  # free text (summaries, titles, queries) is where awkward values reach the renderers
    path = data.draw(st.sampled_from(where), label="path")
    parent, last = get(doc, path[:-1]), path[-1]
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    value = parent[last]
    if kind == "same-type":
        parent[last] = data.draw(same_type_values(value, last), label="value of the same type")
    elif kind == "drop":
        del parent[last]
    elif kind == "rename" and isinstance(parent, dict):
        new = data.draw(st.one_of(
            st.sampled_from([str(last) + "s", str(last)[:-1], str(last).upper(), str(last).replace("_", "-"), "",
                             "<<", "version", "type", "name", "file", "env", "1"]),
            st.sampled_from([k for p in paths(doc) for k in p if isinstance(k, str)] or ["x"]),
        ), label="new key")
        items = [(new if k == last else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)
    elif kind == "replace":
        parent[last] = data.draw(AWKWARD, label="value")
    elif kind == "retype":
        parent[last] = (str(value) if not isinstance(value, str) else
                        [value] if data.draw(st.booleans(), label="as list") else {"value": value})
    elif kind == "nest":
        parent[last] = data.draw(st.sampled_from([[value], {"x": value}, {str(last): value}]), label="nesting")
    elif kind == "graft":
        donor = data.draw(st.sampled_from(sorted(seed_documents())), label="donor")
        donor_paths = paths(seed_documents()[donor])
        if donor_paths:
            parent[last] = copy.deepcopy(get(seed_documents()[donor], data.draw(st.sampled_from(donor_paths),
                                                                                 label="donor path")))
    elif kind == "duplicate" and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(value))
    else:  # rename or duplicate where it does not apply: replace instead
        parent[last] = data.draw(AWKWARD, label="value")
    return doc


def mutate_text(text: str, data: st.DataObject) -> str:
    """Line-level damage that data-level mutations cannot make: indentation, truncation, tabs."""
    lines = text.splitlines()
    if not lines:
        return text
    index = data.draw(st.integers(0, len(lines) - 1), label="line")
    kind = data.draw(st.sampled_from(["delete", "duplicate", "indent", "dedent", "tab", "truncate", "insert"]),
                     label="text mutation")
    line = lines[index]
    if kind == "delete":
        del lines[index]
    elif kind == "duplicate":
        lines.insert(index, line)
    elif kind == "indent":
        lines[index] = "  " + line
    elif kind == "dedent":
        lines[index] = line.lstrip()
    elif kind == "tab":
        lines[index] = "\t" + line
    elif kind == "truncate":
        lines[index] = line[: data.draw(st.integers(0, len(line)), label="cut")]
    else:
        lines.insert(index, data.draw(st.sampled_from(["---", "...", "? a", "<<: *x", "&x a: 1", "- ", "{", "'",
                                                        "%YAML 1.1", "!!python/object:os.system x"]),
                                      label="inserted line"))
    return "\n".join(lines) + "\n"


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@st.composite
def near_valid_specs(draw) -> str:
    data = draw(st.data())
    seed = draw(st.sampled_from(sorted(seed_texts())), label="seed")
    doc = seed_documents()[seed]
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]), label="mutations")):
        doc = mutate(doc, data)
    text = dump(doc)
    if draw(st.integers(0, 9), label="text damage") == 0:
        text = mutate_text(text, data)
    return text


# Keys whose value is free text the spec passes on to the configs (annotations, titles, legends).
FREE_TEXT_KEYS = {"summary", "description", "title", "legend", "runbook", "unit", "auth_username", "admin_user",
                  "host", "channel", "selector"}


@st.composite
def specs_that_mostly_render(draw) -> str:
    """Only values replaced by awkward ones of the same type, so most specs still load and the
    renderers and validators see the awkward text (quotes, template syntax, $, unicode)."""
    data = draw(st.data())
    doc = copy.deepcopy(seed_documents()[draw(st.sampled_from(sorted(seed_texts())), label="seed")])
    for _ in range(draw(st.integers(1, 4), label="replacements")):
        leaves = [p for p in paths(doc) if p[-1] != "version" and (
            isinstance(get(doc, p), (int, float)) or p[-1] in FREE_TEXT_KEYS or (len(p) > 1 and p[-2] == "labels"))]
        if not leaves:
            break
        path = data.draw(st.sampled_from(leaves), label="leaf")
        parent = get(doc, path[:-1])
        parent[path[-1]] = data.draw(same_type_values(parent[path[-1]], path[-1]), label="value")
    return dump(doc)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30))
yaml_keys = st.one_of(st.text(max_size=12), st.sampled_from(["version", "project", "services", "target", "alerts",
                                                            "slos", "notifications", "dashboards", "components"]))
yaml_data = st.recursive(yaml_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(yaml_keys, children, max_size=5)), max_leaves=25)


@st.composite
def arbitrary_documents(draw) -> str:
    kind = draw(st.sampled_from(["data", "data", "spec-shaped", "text"]), label="document kind")
    if kind == "text":
        return draw(st.text(max_size=200), label="raw text")
    if kind == "spec-shaped":
        extra = draw(st.dictionaries(yaml_keys, yaml_data, max_size=4), label="extra keys")
        return dump({"version": 1, "project": "fuzz", "services": [{"name": "api"}], **extra})
    return dump(draw(yaml_data, label="data"))


# ---------------------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------------------


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# file:line[:column]: key.path: message, or (not tied to a line) file: key.path: message. A key
# path may itself hold ": " (a key written ':' is reported as ": :: unknown key ':'").
ISSUE_LINE = r"^{file}(:\d+(:\d+)?: .+|: [^\n]+?: [^\n]+)$"
checked_bundles: dict[str, list[check.CheckResult]] = {}


def validate(bundle_dir: Path) -> list[check.CheckResult]:
    """The real validators over a bundle, memoised by content (their verdict depends on nothing else)."""
    files = files_under(bundle_dir)
    digest = hashlib.sha256(b"".join(p.encode() + b"\0" + d for p, d in sorted(files.items()))).hexdigest()
    if digest not in checked_bundles:
        checks = CHEAP_CHECKS + (SLOW_CHECKS if int(digest, 16) % SLOW_CHECK_SHARE == 0 else ())
        results: list[check.CheckResult] = []
        for run in checks:
            outcome = run(bundle_dir.resolve())
            results.extend(outcome if isinstance(outcome, list) else [outcome])
        checked_bundles[digest] = results
    return checked_bundles[digest]


def render_and_judge(text: str, earlier: Path) -> int:
    """Render ``text`` over a copy of the bundle ``earlier`` and hold the outcome to the property."""
    with tempfile.TemporaryDirectory(prefix="obsgen-fuzz-") as temp:
        root = Path(temp)
        spec = root / SPEC_NAME
        spec.write_text(text, encoding="utf-8")
        shutil.copytree(SPECS_DIR / "secrets", root / "secrets")  # the seeds' relative secret files
        out_dir = root / "bundle"
        shutil.copytree(earlier, out_dir)
        before = files_under(out_dir)
        out, err = io.StringIO(), io.StringIO()

        code = main(["render", str(spec), "--out", str(out_dir)], out=out, err=err)  # an exception fails the test
        event(f"exit {code}")

        report = err.getvalue()
        assert "Traceback" not in report + out.getvalue()
        assert code in (0, 2), f"exit {code}:\n{report}"
        if code == 2:
            lines = report.rstrip("\n").split("\n")
            assert re.fullmatch(r"obsgen: (\d+) problems? in the spec; nothing written", lines[-1]), report
            issues = lines[:-1]
            assert issues and len(issues) == int(lines[-1].split()[1]), report
            pattern = ISSUE_LINE.format(file=re.escape(str(spec)))
            unlocated = [line for line in issues if not re.match(pattern, line)]
            assert not unlocated, f"issue lines without file and line or key path:\n{report}"
            assert files_under(out_dir) == before, "a refused spec changed the earlier bundle"
            return code
        written = files_under(out_dir)
        listed = read_manifest(out_dir)
        assert listed is not None and sorted(listed) == sorted(p for p in written if p != MANIFEST), \
            "the directory does not hold exactly the bundle its manifest lists"
        failed = [r for r in validate(out_dir) if r.status == "failed"]
        assert not failed, "a rendered bundle was refused:\n" + check.format_report(failed) + f"\n--- spec:\n{text}"
        return code


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A bundle rendered once from the default spec; every example renders over a copy of it."""
    from tests.conftest import require_binary

    for tool in TOOLS:
        require_binary(tool)
    directory = tmp_path_factory.mktemp("earlier") / "bundle"
    assert main(["render", "--out", str(directory)], out=io.StringIO(), err=io.StringIO()) == 0
    return directory


# Reproducible by default (CI runs the same examples every time); OBSGEN_FUZZ_RANDOM=1 explores.
EXAMPLES = int(os.environ.get("OBSGEN_FUZZ_EXAMPLES", "20"))
RANDOM = os.environ.get("OBSGEN_FUZZ_RANDOM", "") == "1"


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=not RANDOM, database=None if not RANDOM else
                    settings.default.database, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------
# Counterexamples this module found, replayed first on every run
# ---------------------------------------------------------------------------------------


def with_custom_alert(**fields: Any) -> str:
    """The minimal seed plus one custom alert (with a unit test input) whose fields are ``fields``."""
    doc = copy.deepcopy(seed_documents()["minimal"])
    alert = {"name": "ApiDown", "expr": 'up{job="api"} == 0', "for": "1m", "summary": "The API is down.",
             "description": "The API is down.", "labels": {"team": "edge"},
             "tests": {"input": [{"series": 'up{job="api",instance="a"}', "values": "0x30"}],
                       "labels": {"job": "api", "instance": "a"}}}
    alert.update(fields)
    doc["alerts"] = {"custom": [alert]}
    return dump(doc)


# A control character: PyYAML's reader raised before the loader's error handling (a traceback).
CONTROL_CHARACTER = "\x08"
# A key holding a newline: the problem's key path broke the one-line-per-problem report.
NEWLINE_KEY = "? '\n\n  '\n: null\n"
# Broken Go templates in alert text: accepted, then refused by `promtool check rules`.
UNCLOSED_ACTION = with_custom_alert(description="Only {{ $value instances")
STRAY_END = with_custom_alert(labels={"team": "{{ end }}"}, tests=None)
# A webhook url the spec took ('', ftp://, http://a:b/) and Alertmanager refused (amtool check-config).
EMPTY_WEBHOOK_URL = dump({**seed_documents()["local"], "notifications": {"receivers": [
    {"type": "webhook", "name": "local-sink", "url": ""}]}})
BAD_PORT_WEBHOOK_URL = EMPTY_WEBHOOK_URL.replace("url: ''", "url: http://127.0.0.1:port/alerts")
# A key written ':': a correct report the line check first took for unlocated.
COLON_KEY = "':': null\n"
# Templated summary or label with a unit test: the test expected the text unexpanded (promtool test rules failed).
TEMPLATED_SUMMARY = with_custom_alert(summary="{{ $labels.instance }} is down")
TEMPLATED_LABEL = with_custom_alert(labels={"team": "{{ $labels.job }}"})


@fuzz_settings(EXAMPLES)
@given(text=near_valid_specs())
@example(text=UNCLOSED_ACTION)
@example(text=STRAY_END)
@example(text=TEMPLATED_SUMMARY)
@example(text=TEMPLATED_LABEL)
@example(text=with_custom_alert())  # the same alert with nothing wrong renders and passes
@example(text=EMPTY_WEBHOOK_URL)
@example(text=BAD_PORT_WEBHOOK_URL)
def test_near_valid_specs_render_a_valid_bundle_or_exit_2_located(text, earlier):
    render_and_judge(text, earlier)


@fuzz_settings(EXAMPLES)
@given(text=specs_that_mostly_render())
def test_awkward_values_in_valid_places_render_a_valid_bundle_or_exit_2_located(text, earlier):
    render_and_judge(text, earlier)


@fuzz_settings(EXAMPLES * 2)
@given(text=arbitrary_documents())
@example(text=CONTROL_CHARACTER)
@example(text=NEWLINE_KEY)
@example(text=COLON_KEY)
def test_arbitrary_documents_render_or_exit_2_located(text, earlier):
    render_and_judge(text, earlier)


@pytest.mark.parametrize("text, code, where", [
    (CONTROL_CHARACTER, 2, ":1:1: (yaml): invalid YAML: unacceptable character #x0008"),
    (NEWLINE_KEY, 2, ":1:3: '\\n': unknown key '\\n'"),
    (UNCLOSED_ACTION, 2, "alerts.custom[0].description: a template action {{ is never closed"),
    (STRAY_END, 2, "alerts.custom[0].labels.team: a template {{ end }} without its"),
    (TEMPLATED_SUMMARY, 2, "alerts.custom[0].summary: the summary is static"),
    (TEMPLATED_LABEL, 2, "alerts.custom[0].labels.team: a templated label cannot be checked"),
    (EMPTY_WEBHOOK_URL, 2, "notifications.receivers[0].url: expected an http:// or https:// URL with a host"),
    (BAD_PORT_WEBHOOK_URL, 2, "notifications.receivers[0].url: not a valid URL: Port could not be cast"),
    (COLON_KEY, 2, ":1:1: :: unknown key ':'"),
    (with_custom_alert(), 0, ""),
])
def test_regressions_exit_with_the_right_code_and_message(tmp_path, text, code, where):
    spec = tmp_path / SPEC_NAME
    spec.write_text(text, encoding="utf-8")
    err = io.StringIO()
    assert main(["render", str(spec), "--out", str(tmp_path / "out")], out=io.StringIO(), err=err) == code
    assert where in err.getvalue()
