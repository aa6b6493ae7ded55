"""Tokens from the upgrade request (header or cookie, never the URL), verification, origin checks."""

from __future__ import annotations

import jwt
import pytest
from websockets.datastructures import Headers

from instrumented_server.auth import AuthError, Authenticator, origin_allowed, read_secret, token_from_headers
from instrumented_server.protocol import CloseCode

SECRET = "s" * 32
NOW = 1_800_000_000.0


@pytest.fixture
def auth():
    return Authenticator(SECRET)


def test_token_from_bearer_header():
    assert token_from_headers(Headers({"Authorization": "Bearer abc.def"})) == "abc.def"
    assert token_from_headers(Headers({"Authorization": "bearer   abc"})) == "abc"


def test_token_from_cookie_among_others():
    headers = Headers([("Cookie", "theme=dark"), ("Cookie", "obsgen_token=tok123; other=1")])
    assert token_from_headers(headers) == "tok123"
    assert token_from_headers(headers, cookie_name="other") == "1"


def test_no_token_in_basic_auth_or_absent():
    assert token_from_headers(Headers({"Authorization": "Basic dXNlcjpwdw=="})) is None
    assert token_from_headers(Headers({"Cookie": "garbage;;=="})) is None
    assert token_from_headers(Headers()) is None


def test_valid_token_gives_identity(auth):
    token = auth.mint("alice", ttl=60, now=NOW, channels=["$private:x"])
    identity = auth.verify(token, now=NOW + 1)
    assert identity.user == "alice"
    assert identity.expires_at == NOW + 60
    assert not identity.expired(NOW + 59)
    assert identity.expired(NOW + 60)


def test_missing_token_is_4001(auth):
    with pytest.raises(AuthError) as info:
        auth.verify(None, now=NOW)
    assert info.value.code == CloseCode.AUTH_REQUIRED


@pytest.mark.parametrize("make, reason", [
    (lambda: Authenticator("t" * 32).mint("alice", now=NOW), "bad signature"),
    (lambda: Authenticator(SECRET).mint("alice", ttl=10, now=NOW - 100), "token expired"),
    (lambda: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "missing claim exp"),
    (lambda: jwt.encode({"exp": NOW + 60}, SECRET, algorithm="HS256"), "missing claim sub"),
    (lambda: jwt.encode({"sub": "", "exp": NOW + 60}, SECRET, algorithm="HS256"), "sub must be"),
    (lambda: jwt.encode({"sub": "a", "exp": NOW + 60}, SECRET * 2, algorithm="HS512"), "algorithm not allowed"),
    (lambda: jwt.encode({"sub": "a", "exp": NOW + 60, "nbf": NOW + 30}, SECRET, algorithm="HS256"), "not yet valid"),
    (lambda: jwt.encode({"sub": "a", "exp": NOW + 60, "channels": "all"}, SECRET, algorithm="HS256"), "claim 'channels'"),
    (lambda: jwt.encode({"sub": "a", "exp": NOW + 60, "namespaces": {"x": ["fly"]}}, SECRET, algorithm="HS256"), "expected a list of actions"),
    (lambda: "not-a-jwt", "malformed token"),
])
def test_refused_tokens_are_4002_with_a_safe_reason(auth, make, reason):
    token = make()
    with pytest.raises(AuthError) as info:
        auth.verify(token, now=NOW)
    assert info.value.code == CloseCode.AUTH_FAILED
    assert reason in info.value.reason
    assert token not in info.value.reason


def test_unsigned_token_is_refused(auth):
    token = jwt.encode({"sub": "a", "exp": NOW + 60}, key=None, algorithm="none")
    with pytest.raises(AuthError):
        auth.verify(token, now=NOW)


def test_audience_and_issuer_when_configured():
    strict = Authenticator(SECRET, audience="ws", issuer="me")
    assert strict.verify(strict.mint("a", now=NOW), now=NOW).user == "a"
    other = Authenticator(SECRET, audience="other", issuer="me")
    with pytest.raises(AuthError, match="wrong audience"):
        strict.verify(other.mint("a", now=NOW), now=NOW)


def test_origin_allow_list():
    assert origin_allowed(None, ())  # not a browser
    assert not origin_allowed("https://evil.example", ())
    assert origin_allowed("https://app.example", ("https://app.example",))
    assert not origin_allowed("https://app.example.evil", ("https://app.example",))
    assert origin_allowed("https://any.example", ("*",))


def test_secret_file_content():
    assert read_secret("  " + "k" * 40 + "\n") == "k" * 40
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        read_secret("short\n")


def test_a_token_signed_with_the_raw_secret_file_is_4002_and_with_its_stripped_text_passes(tmp_path):
    """What docs/server.md tells a client that mints its own tokens: the key is the file's text with
    surrounding whitespace stripped (as the server and the load generator read it), not its bytes."""
    from instrumented_server.config import read_secret_file

    path = tmp_path / "jwt-secret"
    path.write_text("k" * 44 + "\n")  # what `head -c 32 /dev/urandom | base64 > jwt-secret` writes
    server = Authenticator(read_secret_file(str(path)))
    raw = jwt.encode({"sub": "alice", "exp": NOW + 60}, path.read_bytes(), algorithm="HS256")
    with pytest.raises(AuthError) as info:
        server.verify(raw, now=NOW)
    assert (info.value.code, info.value.code.value) == (CloseCode.AUTH_FAILED, 4002)
    assert "bad signature" in info.value.reason
    stripped = jwt.encode({"sub": "alice", "exp": NOW + 60}, path.read_text().strip(), algorithm="HS256")
    assert server.verify(stripped, now=NOW).user == "alice"
