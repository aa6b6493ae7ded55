"""Authentication during the HTTP upgrade: a signed JWT (HS256) from a header or a cookie.

The token comes from ``Authorization: Bearer <token>`` or from a cookie (for browsers, which
cannot set headers on a WebSocket upgrade). It is never read from the URL: query strings end up
in proxy logs and browser history. The ``Origin`` header is checked against an allow-list to
stop cross-site WebSocket hijacking.

Pure functions and one small class; the secret is passed in (reading its file is the caller's
job), and the current time is a parameter so expiry is testable without a clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, Iterable, Mapping

import jwt

from instrumented_server.permissions import Grants, PermissionConfigError
from instrumented_server.protocol import CloseCode

DEFAULT_COOKIE = "obsgen_token"
ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    expires_at: float  # unix seconds
    grants: Grants

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class AuthError(Exception):
    """Why a token was refused: ``code`` is the close code (4001 or 4002), ``reason`` is safe to show."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def token_from_headers(headers: Mapping[str, str] | Any, cookie_name: str = DEFAULT_COOKIE) -> str | None:
    """The token from ``Authorization: Bearer`` or the named cookie; None when neither is there."""
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for cookie_header in _all(headers, "Cookie"):
        try:
            cookies = SimpleCookie(cookie_header)
        except CookieError:
            continue
        morsel = cookies.get(cookie_name)
        if morsel is not None and morsel.value:
            return morsel.value
    return None


def _all(headers: Any, name: str) -> list[str]:
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:
        return list(get_all(name))
    value = headers.get(name)
    return [value] if value else []


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    """No Origin header (a non-browser client) is allowed; a browser Origin must be listed, or ``*``."""
    if origin is None:
        return True
    allowed = tuple(allowed)
    return "*" in allowed or origin in allowed


class Authenticator:
    def __init__(self, secret: str | bytes, *, audience: str | None = None, issuer: str | None = None,
                 leeway: float = 0.0) -> None:
        if not secret:
            raise ValueError("the JWT secret is empty")
        self.secret = secret
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    def verify(self, token: str | None, now: float | None = None) -> Identity:
        """The identity a token proves, or ``AuthError`` (4001 when absent, 4002 when refused)."""
        if not token:
            raise AuthError(CloseCode.AUTH_REQUIRED, "authentication required: send Authorization: Bearer <token> or a token cookie")
        now = time.time() if now is None else now
        try:
            # Times (exp, nbf) are checked below against ``now``, so every check uses one clock.
            claims = jwt.decode(
                token, self.secret, algorithms=[ALGORITHM], audience=self.audience, issuer=self.issuer,
                options={"require": ["sub", "exp"], "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": self.audience is not None, "verify_iss": self.issuer is not None},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(CloseCode.AUTH_FAILED, f"authentication failed: {_describe(exc)}") from None
        user, exp = claims.get("sub"), claims.get("exp")
        if not isinstance(user, str) or not user:
            raise AuthError(CloseCode.AUTH_FAILED, "authentication failed: sub must be a non-empty string")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise AuthError(CloseCode.AUTH_FAILED, "authentication failed: exp must be a number")
        if now >= exp + self.leeway:
            raise AuthError(CloseCode.AUTH_FAILED, "authentication failed: token expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, (int, float)) or now < nbf - self.leeway):
            raise AuthError(CloseCode.AUTH_FAILED, "authentication failed: token not yet valid")
        try:
            grants = Grants.from_claims(claims)
        except PermissionConfigError as exc:
            raise AuthError(CloseCode.AUTH_FAILED, f"authentication failed: {exc}") from None
        return Identity(user, float(exp) + self.leeway, grants)

    def mint(self, user: str, ttl: float = 3600.0, now: float | None = None, **claims: Any) -> str:
        """A token for ``user`` (for the load generator, tests and local tooling)."""
        now = time.time() if now is None else now
        payload = {"sub": user, "iat": int(now), "exp": int(now + ttl), **claims}
        if self.audience is not None:
            payload.setdefault("aud", self.audience)
        if self.issuer is not None:
            payload.setdefault("iss", self.issuer)
        return jwt.encode(payload, self.secret, algorithm=ALGORITHM)


def _describe(exc: jwt.InvalidTokenError) -> str:
    # Short, fixed texts: never echo the token or the library's internals to the client.
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    return "malformed token"


def read_secret(text: str) -> str:
    """The secret from a secret file's content (surrounding whitespace and newline stripped)."""
    secret = text.strip()
    if len(secret.encode()) < 32:
        # RFC 7518 3.2: an HS256 key must be at least as long as the hash (32 bytes).
        raise ValueError("the JWT secret is shorter than 32 bytes; use e.g. `head -c 32 /dev/urandom | base64`")
    return secret
