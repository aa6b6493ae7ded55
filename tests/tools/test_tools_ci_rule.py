"""The rule tests/conftest.py enforces: a test that cannot find a tool skips, but under CI=true fails.

Checked by running a one-test file in a child pytest, with and without CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

TEST_FILE = textwrap.dedent("""\
    from tests.conftest import require_binary

    def test_needs_a_tool():
        require_binary("obsgen-no-such-tool")
""")


def run_child(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_child.py").write_text(TEST_FILE, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env.update({"PYTHONPATH": str(REPO), "OBSGEN_TOOLS": str(tmp_path / "tools")})
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path / "test_child.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_a_missing_tool_skips_outside_ci_naming_every_place_looked(tmp_path):
    done = run_child(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout
    assert f"obsgen-no-such-tool not found; looked in $OBSGEN_TOOLS/bin ({tmp_path / 'tools' / 'bin'})" in done.stdout


def test_a_missing_tool_fails_under_ci_true(tmp_path):
    done = run_child(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    assert "1 failed" in done.stdout
    assert "CI=true: obsgen-no-such-tool not found; looked in" in done.stdout
