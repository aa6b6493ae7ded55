"""Per-message authorization: namespaces, private and user-limited channels, token grants."""

from __future__ import annotations

import pytest

from instrumented_server.permissions import (
    Grants,
    Namespace,
    PermissionConfigError,
    Permissions,
    load_namespaces,
    parse_channel,
)
from instrumented_server.protocol import ErrorCode

NAMESPACES = load_namespaces({
    "namespaces": {
        "": {},
        "chat": {"publish": "subscribers", "presence": "all"},
        "news": {"publish": "claims"},
        "secure": {"private": True},
        "quiet": {"presence": "none", "history": "none", "join_leave": False},
    }
})
PERMISSIONS = Permissions(NAMESPACES)
NO_GRANTS = Grants()


def check(action, channel, user="alice", grants=NO_GRANTS, subscribed=False):
    return PERMISSIONS.check(action, parse_channel(channel), user, grants, subscribed)


def test_channel_names_taken_apart():
    assert parse_channel("room") == parse_channel("room")
    c = parse_channel("chat:room-1")
    assert (c.namespace, c.private, c.users) == ("chat", False, None)
    assert parse_channel("$chat:room").private and parse_channel("$chat:room").namespace == "chat"
    assert parse_channel("chat:$room").private
    assert parse_channel("$room").namespace == "" and parse_channel("$room").private
    assert parse_channel("dm:x#alice,bob").users == frozenset({"alice", "bob"})


# (action, channel, subscribed, expected) for a client whose token grants nothing
MATRIX = [
    ("subscribe", "room", False, None),
    ("publish", "room", False, None),
    ("presence", "room", False, ErrorCode.FORBIDDEN),  # default: subscribers only
    ("presence", "room", True, None),
    ("history", "room", False, ErrorCode.FORBIDDEN),
    ("history", "room", True, None),
    ("publish", "chat:a", False, ErrorCode.FORBIDDEN),
    ("publish", "chat:a", True, None),
    ("presence", "chat:a", False, None),
    ("publish", "news:a", True, ErrorCode.FORBIDDEN),
    ("subscribe", "news:a", False, None),
    ("subscribe", "secure:a", False, ErrorCode.FORBIDDEN),
    ("subscribe", "$room", False, ErrorCode.FORBIDDEN),
    ("subscribe", "chat:$room", False, ErrorCode.FORBIDDEN),
    ("publish", "$room", True, ErrorCode.FORBIDDEN),
    ("history", "quiet:a", True, ErrorCode.FORBIDDEN),
    ("presence", "quiet:a", True, ErrorCode.FORBIDDEN),
    ("subscribe", "nope:a", False, ErrorCode.UNKNOWN_NAMESPACE),
    ("subscribe", "dm:x#alice,bob", False, ErrorCode.UNKNOWN_NAMESPACE),
    ("subscribe", "room#alice,bob", False, None),
    ("subscribe", "room#bob,carol", False, ErrorCode.FORBIDDEN),
]


@pytest.mark.parametrize("action, channel, subscribed, expected", MATRIX)
def test_matrix_without_grants(action, channel, subscribed, expected):
    assert check(action, channel, subscribed=subscribed) is expected


def test_grants_open_private_channels_action_by_action():
    grants = Grants.from_claims({"channels": {"$room": ["subscribe"], "secure:*": ["subscribe", "publish"]}})
    assert check("subscribe", "$room", grants=grants) is None
    assert check("publish", "$room", grants=grants, subscribed=True) is ErrorCode.FORBIDDEN
    assert check("history", "$room", grants=grants, subscribed=True) is ErrorCode.FORBIDDEN
    assert check("publish", "secure:anything", grants=grants) is None
    assert check("subscribe", "securex:a", grants=grants) is ErrorCode.UNKNOWN_NAMESPACE


def test_list_grant_means_read_actions():
    grants = Grants.from_claims({"channels": ["$room"]})
    for action in ("subscribe", "presence", "history"):
        assert check(action, "$room", grants=grants) is None
    assert check("publish", "$room", grants=grants) is ErrorCode.FORBIDDEN


def test_namespace_grant_and_none_policy_wins():
    grants = Grants.from_claims({"namespaces": {"news": ["publish"], "quiet": ["history"]}})
    assert check("publish", "news:x", grants=grants) is None
    assert check("history", "quiet:x", grants=grants, subscribed=True) is ErrorCode.FORBIDDEN


def test_grant_opens_a_user_limited_channel():
    grants = Grants.from_claims({"channels": {"room#bob": ["subscribe"]}})
    assert check("subscribe", "room#bob", grants=grants) is None


@pytest.mark.parametrize("document, message", [
    ({"chat": {"publish": "everyone"}}, "publish must be one of"),
    ({"chat": {"subscribe": "subscribers"}}, "subscribe must be one of"),
    ({"chat": {"private": "yes"}}, "private must be true or false"),
    ({"chat": {"colour": "red"}}, "unknown option"),
    ({"bad name!": {}}, "namespace name"),
    (["chat"], "must be a mapping"),
])
def test_bad_namespace_config_is_refused_with_a_reason(document, message):
    with pytest.raises(PermissionConfigError, match=message):
        load_namespaces(document)


def test_default_namespace_is_public_with_subscriber_presence():
    assert Permissions().namespaces == {"": Namespace("")}
