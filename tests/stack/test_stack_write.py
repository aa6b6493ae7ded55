"""stack.write: a bundle written all or nothing, and drift between a bundle and a directory."""

from __future__ import annotations

import os
import stat

import pytest

import stack.write as write
from stack.write import MANIFEST, BundleWriteError, Drift, check_drift, read_manifest, write_bundle

BUNDLE = {
    "alertmanager/alertmanager.yml": b"route: {receiver: team}\n",
    "prometheus/prometheus.yml": b"global: {}\n",
    "prometheus/rules/ws.yml": b"groups: []\n",
    "secrets/README": b"names only\n",
    "docker-compose.yml": b"services: {}\n",
}


def tree(root) -> dict[str, tuple[bytes, int]]:
    """Every file under root: bytes and permission bits."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = (open(path, "rb").read(), stat.S_IMODE(os.stat(path).st_mode))
    return found


def leftovers(parent) -> list[str]:
    return sorted(name for name in os.listdir(parent) if name.startswith("."))


def test_writes_exactly_the_bundle_and_a_manifest(tmp_path):
    out = tmp_path / "stack"
    write_bundle(BUNDLE, out)
    files = tree(out)
    assert set(files) == set(BUNDLE) | {MANIFEST}
    for path, data in BUNDLE.items():
        assert files[path][0] == data
    assert read_manifest(out) == sorted(BUNDLE)
    assert leftovers(tmp_path) == []


def test_modes_are_explicit_credentials_private(tmp_path):
    out = tmp_path / "stack"
    old_umask = os.umask(0o077)  # a strict umask must not make configs unreadable to containers
    try:
        write_bundle(BUNDLE, out)
    finally:
        os.umask(old_umask)
    files = tree(out)
    assert files["secrets/README"][1] == 0o600
    assert files["prometheus/prometheus.yml"][1] == 0o644
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "prometheus" / "rules").st_mode) == 0o755


def test_same_bundle_same_files(tmp_path):
    write_bundle(BUNDLE, tmp_path / "a")
    write_bundle(BUNDLE, tmp_path / "b")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_rewrite_removes_stale_files_and_keeps_what_obsgen_did_not_write(tmp_path):
    out = tmp_path / "stack"
    write_bundle(BUNDLE, out)
    # What `obsgen up` leaves in a local bundle: data, logs, a state file.
    (out / "data" / "prometheus").mkdir(parents=True)
    (out / "data" / "prometheus" / "chunk").write_bytes(b"tsdb")
    (out / ".obsgen-up.json").write_text("{}")
    smaller = {path: data for path, data in BUNDLE.items() if path != "prometheus/rules/ws.yml"}
    smaller["prometheus/prometheus.yml"] = b"global: {scrape_interval: 30s}\n"
    write_bundle(smaller, out)
    files = tree(out)
    assert "prometheus/rules/ws.yml" not in files
    assert files["prometheus/prometheus.yml"][0] == b"global: {scrape_interval: 30s}\n"
    assert files["data/prometheus/chunk"][0] == b"tsdb"
    assert files[".obsgen-up.json"][0] == b"{}"
    assert leftovers(tmp_path) == []


def test_a_failure_while_writing_leaves_the_previous_bundle_intact(tmp_path, monkeypatch):
    out = tmp_path / "stack"
    write_bundle(BUNDLE, out)
    before = tree(out)
    new = {path: data + b"# changed\n" for path, data in BUNDLE.items()}
    real_write_file = write._write_file
    calls = []

    def failing_write_file(root, path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write_file(root, path, data)

    monkeypatch.setattr(write, "_write_file", failing_write_file)
    with pytest.raises(BundleWriteError, match=r"\(No space left on device\); the previous contents are unchanged"):
        write_bundle(new, out)
    assert tree(out) == before
    assert leftovers(tmp_path) == []  # no half-written staging directory left behind


def test_a_failure_at_the_swap_puts_everything_back(tmp_path, monkeypatch):
    out = tmp_path / "stack"
    write_bundle(BUNDLE, out)
    (out / "data").mkdir()
    (out / "data" / "keep").write_bytes(b"state")
    before = tree(out)
    real_rename = os.rename

    def rename(src, dst):
        if os.fspath(dst) == os.fspath(out) and ".new-" in os.fspath(src):
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(write.os, "rename", rename)
    with pytest.raises(BundleWriteError):
        write_bundle({"other.yml": b"x\n"}, out)
    monkeypatch.undo()
    assert tree(out) == before
    assert leftovers(tmp_path) == []


def test_refuses_to_replace_a_directory_obsgen_did_not_write(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BundleWriteError, match="not empty and was not written by obsgen"):
        write_bundle(BUNDLE, out)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_refuses_to_drop_a_file_obsgen_did_not_write_inside_its_directories(tmp_path):
    out = tmp_path / "stack"
    write_bundle(BUNDLE, out)
    (out / "prometheus" / "rules" / "hand-written.yml").write_text("groups: []\n")
    with pytest.raises(BundleWriteError, match="prometheus/rules/hand-written.yml"):
        write_bundle(BUNDLE, out)
    assert (out / "prometheus" / "rules" / "hand-written.yml").exists()


def test_refuses_to_drop_a_file_obsgen_did_not_write_with_a_directory_the_new_bundle_lacks(tmp_path):
    out = tmp_path / "stack"
    write_bundle(BUNDLE, out)
    (out / "alertmanager" / "notes.md").write_text("mine\n")
    without_alertmanager = {p: d for p, d in BUNDLE.items() if not p.startswith("alertmanager/")}
    with pytest.raises(BundleWriteError, match="alertmanager/notes.md"):
        write_bundle(without_alertmanager, out)
    assert (out / "alertmanager" / "notes.md").read_text() == "mine\n"


def test_an_empty_existing_directory_is_used(tmp_path):
    out = tmp_path / "stack"
    out.mkdir()
    write_bundle(BUNDLE, out)
    assert set(tree(out)) == set(BUNDLE) | {MANIFEST}


def test_a_file_in_the_way_is_an_error(tmp_path):
    out = tmp_path / "stack"
    out.write_text("not a directory")
    with pytest.raises(BundleWriteError, match="is not a directory"):
        write_bundle(BUNDLE, out)


def test_drift_lists_every_differing_missing_extra_foreign_and_kept_file(tmp_path):
    out = tmp_path / "stack"
    write_bundle({**BUNDLE, "prometheus/rules/stale.yml": b"groups: []\n"}, out)
    assert check_drift(BUNDLE, out) == [Drift("prometheus/rules/stale.yml", "extra")]
    (out / "prometheus" / "prometheus.yml").write_bytes(b"global: {scrape_interval: 1s}\n")
    (out / "docker-compose.yml").unlink()
    (out / "prometheus" / "rules" / "by-hand.yml").write_bytes(b"groups: []\n")
    (out / "data").mkdir()
    (out / "data" / "tsdb").write_bytes(b"not part of the bundle, not drift")
    (out / "NOTES.md").write_bytes(b"mine")
    found = check_drift(BUNDLE, out)
    assert found == [
        Drift("NOTES.md", "kept"),
        Drift("data/", "kept"),
        Drift("docker-compose.yml", "missing"),
        Drift("prometheus/prometheus.yml", "differs"),
        Drift("prometheus/rules/by-hand.yml", "foreign"),
        Drift("prometheus/rules/stale.yml", "extra"),
    ]
    assert [d.path for d in found if not d.is_drift] == ["NOTES.md", "data/"]


def test_drift_in_a_directory_obsgen_did_not_write_calls_everything_foreign(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert Drift("notes.txt", "foreign") in check_drift(BUNDLE, out)


def test_drift_against_a_directory_that_does_not_exist(tmp_path):
    assert check_drift(BUNDLE, tmp_path / "nothing") == sorted(Drift(path, "missing") for path in BUNDLE)
