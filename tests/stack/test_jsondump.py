"""stack.jsondump writes what json.dumps(indent=2, sort_keys=True, ensure_ascii=False) writes."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from stack.jsondump import dump_json

LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
TREES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                     | st.dictionaries(st.text(), inner, max_size=4), max_leaves=40)


def stdlib(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)


@settings(max_examples=400, deadline=None)
@given(TREES)
def test_the_same_text_as_json_dumps(data):
    assert dump_json(data) == stdlib(data)


def test_special_floats_unicode_and_empty_containers():
    data = {"b": [math.nan, math.inf, -math.inf, -0.0, 1e100], "a": {"é": "\u2028\n\"", "": {}}, "c": [[], ()]}
    assert dump_json(data) == stdlib(data)


def test_anything_else_is_left_to_json_dumps():
    class Number(int):
        pass

    data = {"x": Number(3), "y": {1: "int key", 2.5: None}}
    assert dump_json(data) == stdlib(data)
