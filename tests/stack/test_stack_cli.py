"""The obsgen command line: exit codes, located errors, nothing written on a bad spec."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from stack.cli import main
from stack.load import default_spec_text, load_default_spec, load_spec_file
from stack.render import render_bundle
from stack.write import MANIFEST

SPECS = Path(__file__).parent / "specs"

VALID = """\
version: 1
project: demo
services:
  - name: ws
    metrics: {port: 9100}
"""


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def files_under(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


# (spec text, line, key path) for each kind of mistake the issue names.
BAD_SPECS = [
    pytest.param(VALID + "services: [\n", 7, "(yaml)", id="invalid-yaml"),
    pytest.param(VALID + "  - name: api\n    metrcs: {port: 9200}\n", 7, "services[1].metrcs", id="unknown-key"),
    pytest.param(VALID.replace("port: 9100", "port: high"), 5, "services[0].metrics.port", id="wrong-type"),
    pytest.param(VALID + "components:\n  loki:\n    retention: 2 weeks\n", 8, "components.loki.retention", id="bad-duration"),
    pytest.param(
        VALID + "alerts:\n  custom:\n    - {name: Bad, expr: 'rate(x[5m]', summary: s, description: d}\n",
        8, "alerts.custom[0].expr", id="promql",
    ),
    pytest.param(VALID + "  - name: ws\n", 6, "services[1].name", id="duplicate-name"),
    pytest.param(
        VALID + "notifications:\n  receivers:\n    - {type: pagerduty, name: pd, routing_key: abc123}\n",
        8, "notifications.receivers[0].routing_key", id="inline-secret",
    ),
    pytest.param(VALID.replace("version: 1", "version: 3"), 1, "version", id="wrong-version"),
]


@pytest.mark.parametrize("text, line, path", BAD_SPECS)
def test_a_bad_spec_exits_2_with_a_located_message_and_writes_nothing(tmp_path, text, line, path):
    spec = tmp_path / "obsgen.yaml"
    spec.write_text(text)
    out_dir = tmp_path / "out"
    code, stdout, stderr = run("render", str(spec), "--out", str(out_dir))
    assert code == 2
    assert f"{spec}:{line}:" in stderr
    assert f": {path}: " in stderr
    assert "Traceback" not in stderr
    assert "nothing written" in stderr
    assert not out_dir.exists()


def test_a_bad_spec_leaves_the_previous_bundle_untouched(tmp_path):
    out_dir = tmp_path / "out"
    assert run("render", "--out", str(out_dir))[0] == 0
    before = files_under(out_dir)
    spec = tmp_path / "bad.yaml"
    spec.write_text(VALID.replace("port: 9100", "port: -1"))
    assert run("render", str(spec), "--out", str(out_dir))[0] == 2
    assert files_under(out_dir) == before


def test_the_module_entry_point_reports_without_a_traceback(tmp_path):
    spec = tmp_path / "obsgen.yaml"
    spec.write_text(VALID + "bogus: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stack", "render", str(spec), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"{spec}:6:1: bogus: unknown key 'bogus'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_render_of_the_embedded_default_is_byte_identical_across_runs(tmp_path):
    assert run("render", "--out", str(tmp_path / "a"))[0] == 0
    assert run("render", "--out", str(tmp_path / "b"))[0] == 0
    first, second = files_under(tmp_path / "a"), files_under(tmp_path / "b")
    assert first == second
    expected = render_bundle(load_default_spec())
    assert {path: data for path, data in first.items() if path != MANIFEST} == dict(expected)


def test_render_over_an_earlier_render_then_check_is_clean(tmp_path):
    out_dir = tmp_path / "stack"
    assert run("render", "--out", str(out_dir))[0] == 0
    assert run("render", "--out", str(out_dir))[0] == 0
    code, stdout, _ = run("render", "--out", str(out_dir), "--check")
    assert code == 0
    assert "is up to date" in stdout


def test_check_flag_exits_1_listing_every_file_that_differs(tmp_path):
    out_dir = tmp_path / "stack"
    assert run("render", "--out", str(out_dir))[0] == 0
    rendered = sorted(path for path in files_under(out_dir) if path != MANIFEST)
    assert len(rendered) >= 2, "the renderers registered so far should write at least two files"
    (out_dir / rendered[0]).write_bytes(b"edited by hand\n")
    (out_dir / rendered[1]).unlink()
    stale = Path(rendered[0]).parent / "stale.yml"
    (out_dir / stale).write_text("left: over\n")
    code, stdout, stderr = run("render", "--out", str(out_dir), "--check")
    assert code == 1
    assert sorted(stdout.splitlines()) == sorted(
        [f"differs  {rendered[0]}", f"missing  {rendered[1]}", f"foreign  {stale.as_posix()}"]
    )
    assert "3 file(s)" in stderr
    assert (out_dir / stale).exists() and not (out_dir / rendered[1]).exists(), "--check changes nothing"


def test_files_obsgen_did_not_write_are_kept_by_render_and_listed_by_check(tmp_path):
    """What --out's help promises: obsgen's files are replaced, anything else at the top is kept."""
    out_dir = tmp_path / "stack"
    assert run("render", "--out", str(out_dir))[0] == 0
    (out_dir / "NOTES.md").write_text("mine\n")
    (out_dir / "data").mkdir()
    (out_dir / "data" / "tsdb").write_text("state\n")
    code, stdout, _ = run("render", "--out", str(out_dir), "--check")
    assert code == 0, stdout
    assert stdout.splitlines()[:2] == ["kept     NOTES.md", "kept     data/"]
    assert "2 entries obsgen did not write (kept by render)" in stdout
    assert run("render", "--out", str(out_dir), "--target", "local")[0] == 0
    assert (out_dir / "NOTES.md").read_text() == "mine\n" and (out_dir / "data" / "tsdb").exists()
    code, stdout, _ = run("render", "--out", str(out_dir))
    assert code == 0
    # A file an earlier render wrote and this one does not is "extra": the next render deletes it.
    code, stdout, _ = run("render", "--out", str(out_dir), "--check", "--target", "local")
    assert code == 1
    extra = [line.split()[1] for line in stdout.splitlines() if line.startswith("extra")]
    assert extra and all(path in (out_dir / MANIFEST).read_text() for path in extra)


def test_render_help_says_what_is_replaced_and_what_is_kept(capsys):
    assert run("render", "--help")[0] == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "replaced as a whole" not in text
    assert "anything else at its top (data/ of obsgen up, your notes) is kept" in text


def test_check_flag_on_a_missing_directory_lists_every_file(tmp_path):
    bundle = render_bundle(load_default_spec())
    code, stdout, _ = run("render", "--out", str(tmp_path / "none"), "--check")
    assert code == 1
    assert stdout.splitlines() == [f"missing  {path}" for path in bundle]
    assert not (tmp_path / "none").exists()


def test_target_flag_overrides_the_spec(tmp_path):
    code, stdout, _ = run("render", "--out", str(tmp_path / "local"), "--target", "local")
    assert code == 0
    assert "target local" in stdout
    local = load_default_spec().model_copy(update={"target": "local"})
    assert {p: d for p, d in files_under(tmp_path / "local").items() if p != MANIFEST} == dict(render_bundle(local))


def test_spec_from_stdin(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(VALID))
    code, stdout, _ = run("render", "-", "--out", str(tmp_path / "out"))
    assert code == 0
    assert "for demo" in stdout


def test_schema_is_a_json_schema_that_accepts_every_good_spec_and_refuses_a_bad_one():
    code, stdout, _ = run("schema")
    assert code == 0
    schema = json.loads(stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = [default_spec_text(), *(path.read_text() for path in sorted(SPECS.glob("*.yaml")))]
    for text in good:
        errors = list(validator.iter_errors(yaml.safe_load(text)))
        assert not errors, errors[0].message
    bad = yaml.safe_load(VALID + "servces: []\n")
    assert list(validator.iter_errors(bad))


def test_init_writes_a_starter_that_loads(tmp_path):
    path = tmp_path / "obsgen.yaml"
    code, stdout, _ = run("init", str(path))
    assert code == 0
    assert str(path) in stdout
    spec = load_spec_file(path)
    assert spec.version == 1
    assert "#" in path.read_text(), "the starter explains itself in comments"


def uncomment_examples(text: str) -> str:
    """The starter with its commented-out YAML examples switched on (its prose stays comments)."""
    lines = []
    for number, line in enumerate(text.splitlines()):
        match = re.match(r"^(\s*)# (\s*(?:[A-Za-z_][\w-]*:(?:\s.*)?|- .*))$", line)
        is_header = number < 12  # the opening prose and commands
        lines.append(match.group(1) + match.group(2) if match and not is_header else line)
    return "\n".join(lines) + "\n"


def test_init_starters_commented_examples_are_valid_too(tmp_path):
    starter = (Path(__file__).parents[2] / "stack" / "data" / "starter.yaml").read_text()
    path = tmp_path / "obsgen.yaml"
    path.write_text(uncomment_examples(starter))
    spec = load_spec_file(path)
    assert {r.type for r in spec.notifications.receivers} == {"webhook", "slack", "pagerduty", "email"}
    assert spec.alerts.thresholds and spec.dashboards.custom and spec.components.grafana.admin_password
    assert len(spec.slos) == 2 and spec.notifications.route is not None
    # An external service, one compose runs from an image, the built-in server.
    assert [(s.builtin, s.image is not None) for s in spec.services] == [(False, False), (False, True), (True, False)]


def test_init_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "obsgen.yaml"
    path.write_text("my own spec\n")
    code, _, stderr = run("init", str(path))
    assert code == 2
    assert "already exists; pass --force" in stderr
    assert path.read_text() == "my own spec\n"
    assert run("init", str(path), "--force")[0] == 0
    assert load_spec_file(path).project


def test_init_default_path_is_obsgen_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("init")[0] == 0
    assert (tmp_path / "obsgen.yaml").is_file()


def test_check_of_a_missing_directory_is_a_usage_error(tmp_path):
    code, _, stderr = run("check", str(tmp_path / "nothing"))
    assert code == 2
    assert "is not a directory" in stderr


def test_check_exit_code_follows_the_results(tmp_path):
    bundle = tmp_path / "bundle"
    dashboards = bundle / "grafana" / "dashboards"
    dashboards.mkdir(parents=True)
    (dashboards / "ok.json").write_text(json.dumps({"uid": "ok", "panels": [{"title": "p", "targets": [{"expr": "up"}]}]}))
    code, stdout, _ = run("check", str(bundle))
    assert code == 0, stdout
    assert "PASSED   dashboard uids" in stdout
    (dashboards / "bad.json").write_text(json.dumps({"uid": "x" * 41, "panels": []}))
    code, stdout, _ = run("check", str(bundle))
    assert code == 1
    assert "FAILED   dashboard uids" in stdout
    assert "41 characters" in stdout


def test_usage_errors_exit_2(tmp_path):
    assert run()[0] == 2
    assert run("render")[0] == 2  # --out is required
    code, _, stderr = run("render", "--out", str(tmp_path), "--target", "nomad")
    assert code == 2
    assert "invalid choice" in stderr


LOCATION = re.compile(r"^[^:\s]+(:\d+:\d+)?: ")  # a spec problem: file[:line:column]: key: what


def _error_cases(tmp_path: Path) -> list[tuple[str, list[str]]]:
    (tmp_path / "obsgen.yaml").write_text(VALID)
    (tmp_path / "bad.yaml").write_text(VALID + "servces: []\n")
    (tmp_path / "a-file").write_text("x\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "mine.txt").write_text("x\n")
    return [
        ("no command", []),
        ("unknown command", ["deploy"]),
        ("missing --out", ["render"]),
        ("bad --target", ["render", "--out", str(tmp_path / "o"), "--target", "nomad"]),
        ("unknown flag", ["check", str(tmp_path), "--fast"]),
        ("missing spec file", ["render", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]),
        ("bad spec", ["render", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]),
        ("--out is a file", ["render", "--out", str(tmp_path / "a-file")]),
        ("--out not written by obsgen", ["render", "--out", str(tmp_path / "foreign")]),
        ("drift", ["render", "--out", str(tmp_path / "o"), "--check"]),
        ("init over obsgen.yaml", ["init", str(tmp_path / "obsgen.yaml")]),
        ("init onto a directory", ["init", str(tmp_path / "foreign"), "--force"]),
        ("check of no directory", ["check", str(tmp_path / "none")]),
        ("up of no directory", ["up", str(tmp_path / "none")]),
        ("down of no directory", ["down", str(tmp_path / "none")]),
    ]


def test_every_error_ends_with_the_obsgen_prefix(tmp_path, monkeypatch):
    """Whatever fails, the user reads `obsgen: what went wrong` last; other lines are argparse's
    usage or a spec problem's file:line:column."""
    monkeypatch.chdir(tmp_path)
    for name, argv in _error_cases(tmp_path):
        code, _, stderr = run(*argv)
        lines = stderr.rstrip("\n").splitlines()
        assert code in (1, 2), (name, code, stderr)
        assert lines and lines[-1].startswith("obsgen: "), (name, stderr)
        assert not lines[-1].startswith("obsgen: obsgen"), (name, stderr)
        for line in lines:
            assert line.startswith(("obsgen: ", "usage: ", " ")) or LOCATION.match(line), (name, line)


def test_init_over_the_default_name_keeps_the_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "obsgen.yaml").write_text(VALID)
    code, _, stderr = run("init")
    assert (code, stderr) == (2, "obsgen: obsgen.yaml already exists; pass --force to overwrite it\n")


def test_help_and_version_exit_0(capsys):
    assert run("--help")[0] == 0
    assert run("--version")[0] == 0
    assert "obsgen" in capsys.readouterr().out
