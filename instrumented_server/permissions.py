"""Per-message authorization: may this identity do this action on this channel?

Checked on every subscribe, publish, presence and history command, never once per connection:
a connected socket is not trusted globally.

A channel is ``namespace:name`` (or just ``name``, in the default namespace ``""``). Each
namespace sets a policy per action:

- ``all``: any authenticated client;
- ``subscribers``: only a client subscribed to that channel (publish, presence, history);
- ``claims``: only a token that grants it (``channels`` or ``namespaces`` claims);
- ``none``: nobody, whatever the token says.

A private channel (name or channel starting with ``$``, or any channel of a namespace with
``private: true``) needs a grant for every action. A channel ending in ``#alice,bob`` is for
those users only (a grant can still open it to others).

Token grants (claims of the JWT)::

    {"channels": ["chat:lobby", "$secret:*"]}                     # read: subscribe, presence, history
    {"channels": {"news:*": ["subscribe", "publish"]}}           # explicit actions
    {"namespaces": {"chat": ["subscribe", "publish", "presence", "history"]}}

A pattern ending in ``*`` matches every channel that starts with what precedes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from instrumented_server.protocol import ErrorCode

ACTIONS = ("subscribe", "publish", "presence", "history")
READ_ACTIONS = frozenset({"subscribe", "presence", "history"})
POLICIES = ("all", "subscribers", "claims", "none")


class PermissionConfigError(ValueError):
    """A namespace configuration or a claim that does not follow the documented shape."""


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    subscribe: str = "all"
    publish: str = "all"
    presence: str = "subscribers"
    history: str = "subscribers"
    # Send join/leave events to the channel's subscribers. Off by default: each join is a fan-out
    # to every subscriber, so N clients joining cost N²/2 events.
    join_leave: bool = False
    private: bool = False

    def policy(self, action: str) -> str:
        return getattr(self, action)

    @classmethod
    def from_mapping(cls, name: str, options: Mapping[str, Any] | None) -> "Namespace":
        options = dict(options or {})
        values: dict[str, Any] = {}
        for action in ACTIONS:
            if action in options:
                value = options.pop(action)
                allowed = POLICIES if action != "subscribe" else ("all", "claims", "none")
                if value not in allowed:
                    raise PermissionConfigError(
                        f"namespace {name!r}: {action} must be one of {', '.join(allowed)}, not {value!r}")
                values[action] = value
        for flag in ("join_leave", "private"):
            if flag in options:
                value = options.pop(flag)
                if not isinstance(value, bool):
                    raise PermissionConfigError(f"namespace {name!r}: {flag} must be true or false, not {value!r}")
                values[flag] = value
        if options:
            raise PermissionConfigError(
                f"namespace {name!r}: unknown option(s) {', '.join(sorted(map(str, options)))}; "
                f"known: {', '.join(ACTIONS + ('join_leave', 'private'))}")
        return cls(name, **values)


DEFAULT_NAMESPACES: Mapping[str, Namespace] = {"": Namespace("")}


def load_namespaces(document: Any) -> dict[str, Namespace]:
    """Namespaces from a parsed config document ``{"namespaces": {name: options}}`` (or the inner mapping)."""
    if isinstance(document, Mapping) and "namespaces" in document:
        document = document["namespaces"]
    if not isinstance(document, Mapping):
        raise PermissionConfigError("namespaces must be a mapping of namespace name to options")
    namespaces: dict[str, Namespace] = {}
    for name, options in document.items():
        name = "" if name is None else str(name)
        if name and not all(c.isalnum() or c in "_.-" for c in name):
            raise PermissionConfigError(f"namespace name {name!r}: use letters, digits, _ . -")
        if options is not None and not isinstance(options, Mapping):
            raise PermissionConfigError(f"namespace {name!r}: options must be a mapping")
        namespaces[name] = Namespace.from_mapping(name, options)
    return namespaces


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel name taken apart once, when a client first names it."""

    name: str
    namespace: str
    private: bool
    users: frozenset[str] | None  # only these users (from "#a,b"), or None


def parse_channel(name: str) -> Channel:
    base, sep, users_text = name.partition("#")
    users = frozenset(u for u in users_text.split(",") if u) if sep else None
    namespace, sep, short = base.lstrip("$").partition(":")
    if not sep:
        namespace, short = "", namespace
    private = base.startswith("$") or short.startswith("$")
    return Channel(name, namespace, private, users)


@dataclass(frozen=True, slots=True)
class Grants:
    """What a token's claims allow, compiled once per token."""

    exact: Mapping[str, frozenset[str]] = field(default_factory=dict)
    prefixes: tuple[tuple[str, frozenset[str]], ...] = ()
    namespaces: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allows(self, action: str, channel: Channel) -> bool:
        actions = self.exact.get(channel.name)
        if actions is not None and action in actions:
            return True
        for prefix, actions in self.prefixes:
            if action in actions and channel.name.startswith(prefix):
                return True
        actions = self.namespaces.get(channel.namespace)
        return actions is not None and action in actions

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> "Grants":
        exact: dict[str, frozenset[str]] = {}
        prefixes: list[tuple[str, frozenset[str]]] = []
        channels = claims.get("channels")
        if channels is not None:
            if isinstance(channels, list):
                items: Iterable[tuple[Any, Any]] = ((pattern, None) for pattern in channels)
            elif isinstance(channels, Mapping):
                items = channels.items()
            else:
                raise PermissionConfigError("claim 'channels' must be a list of channel patterns or a mapping")
            for pattern, actions in items:
                if not isinstance(pattern, str) or not pattern:
                    raise PermissionConfigError("claim 'channels': every pattern must be a non-empty string")
                granted = READ_ACTIONS if actions is None else _actions(actions, f"channels[{pattern!r}]")
                if pattern.endswith("*"):
                    prefixes.append((pattern[:-1], granted))
                else:
                    exact[pattern] = exact.get(pattern, frozenset()) | granted
        namespaces: dict[str, frozenset[str]] = {}
        ns_claim = claims.get("namespaces")
        if ns_claim is not None:
            if not isinstance(ns_claim, Mapping):
                raise PermissionConfigError("claim 'namespaces' must be a mapping of namespace to actions")
            for ns, actions in ns_claim.items():
                if not isinstance(ns, str):
                    raise PermissionConfigError("claim 'namespaces': keys must be strings")
                namespaces[ns] = _actions(actions, f"namespaces[{ns!r}]")
        return cls(exact, tuple(prefixes), namespaces)


def _actions(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(a, str) and a in ACTIONS for a in value):
        raise PermissionConfigError(f"claim {where}: expected a list of actions from {', '.join(ACTIONS)}")
    return frozenset(value)


class Permissions:
    """The server's namespaces, consulted for every command that names a channel."""

    def __init__(self, namespaces: Mapping[str, Namespace] | None = None) -> None:
        self.namespaces = dict(namespaces if namespaces is not None else DEFAULT_NAMESPACES)

    def namespace(self, channel: Channel) -> Namespace | None:
        return self.namespaces.get(channel.namespace)

    def check(self, action: str, channel: Channel, user: str, grants: Grants, subscribed: bool) -> ErrorCode | None:
        """None when allowed, else the error code to reply with."""
        namespace = self.namespaces.get(channel.namespace)
        if namespace is None:
            return ErrorCode.UNKNOWN_NAMESPACE
        policy = namespace.policy(action)
        if policy == "none":
            return ErrorCode.FORBIDDEN
        if grants.allows(action, channel):
            return None
        if channel.private or namespace.private or policy == "claims":
            return ErrorCode.FORBIDDEN
        if channel.users is not None and user not in channel.users:
            return ErrorCode.FORBIDDEN
        if policy == "subscribers" and not subscribed:
            return ErrorCode.FORBIDDEN
        return None
