"""The Loki renderer: by value, and every key against Loki 3.7.0's own configuration reference.

No Loki binary runs here (its go.mod has replace directives, so `go install` refuses it), so
`loki -verify-config` cannot check the file. The strongest check that runs: every key path the
renderer writes must exist in Loki v3.7.0's generated configuration reference, with a value of
the documented type (loki_3_7_0_config_keys.tsv, extracted by loki_reference_keys.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stack.renderers import loki
from stack.spec import Spec, parse_duration
from stack.topology import Topology

REFERENCE = Path(__file__).with_name("loki_3_7_0_config_keys.tsv")


def make_spec(**fields) -> Spec:
    return Spec.model_validate({"version": 1, "project": "demo", "services": [{"name": "api"}], **fields})


def rendered(spec: Spec) -> dict:
    files = loki.render(spec, Topology(spec))
    assert list(files) == ["loki/config.yaml"]
    return yaml.safe_load(files["loki/config.yaml"])


def reference() -> dict[str, str]:
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t") for line in lines if line and not line.startswith("#"))


def leaves(node, path=""):
    """(key path, value) of every leaf, list items as key[] as in the reference."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list) and node and isinstance(node[0], dict):
        for item in node:
            yield from leaves(item, f"{path}[]")
    else:
        yield path, node


def type_problem(kind: str, value) -> str | None:
    """Why ``value`` does not fit Loki's documented type, or None."""
    if kind == "<boolean>":
        ok = isinstance(value, bool)
    elif kind in ("<int>", "<float>"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "<string>":
        ok = isinstance(value, str)
    elif kind == "<duration>":
        ok = isinstance(value, str) and (value == "0" or _is_duration(value))
    elif kind == "<daytime>":
        ok = isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None
    else:
        return f"type {kind} is not checked by this test; extend type_problem"
    return None if ok else f"{value!r} is not a {kind}"


def _is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("target", ["compose", "local"])
def test_every_key_exists_in_loki_3_7_with_the_documented_type(target):
    known = reference()
    assert len(known) > 500  # the extracted reference, not an empty file
    problems = []
    for path, value in leaves(rendered(make_spec(target=target))):
        if path not in known:
            problems.append(f"{path}: not a Loki 3.7.0 config key")
        elif known[path] in ("block", "list"):
            problems.append(f"{path}: Loki expects a {known[path]} here, got {value!r}")
        elif (problem := type_problem(known[path], value)) is not None:
            problems.append(f"{path}: {problem}")
    assert problems == []


def test_the_reference_check_can_fail():
    known = reference()
    config = rendered(make_spec())
    config["limits_config"]["allow_structured_metadatas"] = True  # a typo Loki's strict YAML would refuse
    config["compactor"]["retention_enabled"] = "yes"
    found = [path for path, value in leaves(config)
             if path not in known or type_problem(known[path], value) is not None]
    assert found == ["limits_config.allow_structured_metadatas", "compactor.retention_enabled"]


def test_single_binary_with_tsdb_v13_and_otlp_ready_limits():
    config = rendered(make_spec())
    assert config["auth_enabled"] is False
    assert config["common"]["replication_factor"] == 1
    assert config["common"]["ring"] == {"kvstore": {"store": "inmemory"}}
    [period] = config["schema_config"]["configs"]
    assert (period["store"], period["schema"], period["object_store"]) == ("tsdb", "v13", "filesystem")
    assert period["index"]["period"] == "24h"
    assert config["limits_config"]["allow_structured_metadata"] is True


def test_retention_from_the_spec_and_a_compactor_that_applies_it():
    config = rendered(make_spec(components={"loki": {"retention": "720h"}}))
    assert config["limits_config"]["retention_period"] == "720h"
    assert config["compactor"]["retention_enabled"] is True
    assert config["compactor"]["delete_request_store"] == "filesystem"  # Loki refuses retention without it


def test_compose_paths_and_listeners():
    config = rendered(make_spec())
    assert config["server"]["http_listen_address"] == "0.0.0.0"
    assert config["server"]["http_listen_port"] == 3100
    assert config["server"]["grpc_listen_port"] == 9095
    assert config["common"]["path_prefix"] == "/loki"  # the image's own data dir, owned by its user
    assert config["common"]["storage"]["filesystem"]["chunks_directory"] == "/loki/chunks"
    assert config["compactor"]["working_directory"] == "/loki/compactor"
    assert "instance_addr" not in config["common"]


def test_local_paths_and_listeners():
    config = rendered(make_spec(target="local", components={"loki": {"ports": {"http": 3110, "grpc": 9195}}}))
    assert config["server"]["http_listen_address"] == "127.0.0.1"
    assert config["server"]["grpc_listen_address"] == "127.0.0.1"
    assert (config["server"]["http_listen_port"], config["server"]["grpc_listen_port"]) == (3110, 9195)
    assert config["common"]["path_prefix"] == "data/loki"
    assert config["common"]["instance_addr"] == "127.0.0.1"


def test_same_spec_same_bytes():
    spec = make_spec()
    assert loki.render(spec, Topology(spec)) == loki.render(spec, Topology(spec))


def test_retention_shorter_than_a_day_is_refused():
    with pytest.raises(ValidationError, match="shorter than 24h"):
        make_spec(components={"loki": {"retention": "12h"}})
