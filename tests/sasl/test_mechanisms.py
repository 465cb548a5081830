"""PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195) and SASLprep (RFC 4013) cores."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.sasl import cram_md5, login, plain
from mxd.sasl.credentials import CramMD5Secret
from mxd.sasl.saslprep import saslprep

# --- CRAM-MD5 ----------------------------------------------------------------------------

RFC2195_CHALLENGE = base64.b64decode("PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+")
RFC2195_RESPONSE = base64.b64decode("dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")


def test_cram_md5_rfc2195_example() -> None:
    """The RFC 2195 §2 example: our client's answer and the server check from stored pads."""
    assert RFC2195_CHALLENGE == b"<1896.697170952@postoffice.reston.mci.net>"
    assert cram_md5.respond("tim", "tanstaaftanstaaf", RFC2195_CHALLENGE) == RFC2195_RESPONSE
    resp = cram_md5.parse_response(RFC2195_RESPONSE)
    assert (resp.username, resp.digest) == ("tim", "b913a602c7eda7a495b4e6e7334d3890")
    secret = CramMD5Secret.derive("tanstaaftanstaaf")
    assert cram_md5.verify(secret, RFC2195_CHALLENGE, resp.digest)
    assert not cram_md5.verify(CramMD5Secret.derive("tanstaaf"), RFC2195_CHALLENGE, resp.digest)


def test_cram_md5_challenge_shape() -> None:
    """The challenge is <random.timestamp@hostname> and differs per call."""
    ch = cram_md5.make_challenge("mx.example.test", 1_700_000_000.5, b"\0\0\0\0\0\0\1\2")
    assert ch == b"<258.1700000000@mx.example.test>"
    assert cram_md5.make_challenge("h", 1.0) != cram_md5.make_challenge("h", 1.0)


@pytest.mark.parametrize("data", [
    b"", b"tim", b"tim ", b" b913a602c7eda7a495b4e6e7334d3890", b"tim b913a602c7eda7a495b4e6e7334d389",
    b"tim b913a602c7eda7a495b4e6e7334d3890x", b"tim zz13a602c7eda7a495b4e6e7334d3890", b"\xff b913a602c7eda7a495b4e6e7334d3890",
])
def test_cram_md5_rejects_malformed(data: bytes) -> None:
    """Malformed responses raise CramMD5Error."""
    with pytest.raises(cram_md5.CramMD5Error):
        cram_md5.parse_response(data)


def test_cram_md5_user_with_space() -> None:
    """A user name containing a space is split at the last space."""
    resp = cram_md5.parse_response(b"john smith B913A602C7EDA7A495B4E6E7334D3890")
    assert (resp.username, resp.digest) == ("john smith", "b913a602c7eda7a495b4e6e7334d3890")


@given(st.binary(max_size=200))
def test_cram_md5_parser_raises_only_its_error(data: bytes) -> None:
    """parse_response returns or raises CramMD5Error on any input."""
    try:
        parse = cram_md5.parse_response(data)
    except cram_md5.CramMD5Error:
        return
    assert len(parse.digest) == 32


# --- PLAIN -------------------------------------------------------------------------------


def test_plain_with_authzid() -> None:
    """RFC 4616 §4 example shapes: with and without authzid."""
    m = plain.parse_plain(b"Ursel\0Kurt\0xipj3plmq")
    assert (m.authzid, m.authcid, m.password) == ("Ursel", "Kurt", "xipj3plmq")
    m = plain.parse_plain(b"\0tim\0tanstaaftanstaaf")
    assert (m.authzid, m.authcid, m.password) == (None, "tim", "tanstaaftanstaaf")
    assert plain.build_plain("Kurt", "xipj3plmq", "Ursel") == b"Ursel\0Kurt\0xipj3plmq"


def test_plain_repr_hides_password() -> None:
    """The parsed message never shows the password in its repr (logs, tracebacks)."""
    assert "xipj3plmq" not in repr(plain.parse_plain(b"\0Kurt\0xipj3plmq"))


@pytest.mark.parametrize("data", [
    b"", b"\0", b"\0\0", b"a\0b", b"\0user\0", b"\0\0pw", b"a\0b\0c\0d", b"\0\xff\0pw",
    b"\0" + b"u" * 256 + b"\0pw",
])
def test_plain_rejects_malformed(data: bytes) -> None:
    """Malformed PLAIN messages raise PlainError."""
    with pytest.raises(plain.PlainError):
        plain.parse_plain(data)


@given(st.binary(max_size=300))
def test_plain_parser_raises_only_its_error(data: bytes) -> None:
    """parse_plain returns or raises PlainError on any input."""
    try:
        m = plain.parse_plain(data)
    except plain.PlainError:
        return
    assert m.authcid and m.password


# --- LOGIN -------------------------------------------------------------------------------


def test_login_server_asks_username_then_password() -> None:
    """Without an initial response the server asks Username: then Password:."""
    core = login.LoginServer()
    assert core.step(None) == b"Username:"
    assert core.step(b"alice") == b"Password:"
    creds = core.step(b"s3cret")
    assert creds == login.LoginCredentials("alice", "s3cret")
    assert "s3cret" not in repr(creds)


def test_login_server_takes_username_as_initial_response() -> None:
    """A user name sent as initial response skips the Username: challenge."""
    core = login.LoginServer()
    assert core.step(b"alice") == b"Password:"
    assert core.step(b"pw") == login.LoginCredentials("alice", "pw")


def test_login_client_answers_in_order() -> None:
    """The client answers the two challenges with user name then password, then refuses."""
    c = login.LoginClient("alice", "pw")
    assert c.respond(b"Username:") == b"alice"
    assert c.respond(b"Password:") == b"pw"
    with pytest.raises(login.LoginError):
        c.respond(b"More:")


@pytest.mark.parametrize("steps", [[None, b""], [None, b"\xff"], [None, b"a", b"p\0w"]])
def test_login_rejects_bad_values(steps) -> None:
    """Empty or non-UTF-8 user names and NULs raise LoginError."""
    core = login.LoginServer()
    with pytest.raises(login.LoginError):
        for s in steps:
            core.step(s)


# --- SASLprep (RFC 4013 §3 examples) -----------------------------------------------------

@pytest.mark.parametrize(("given_", "expected"), [
    ("I\u00adX", "IX"),  # SOFT HYPHEN mapped to nothing
    ("user", "user"),
    ("USER", "USER"),  # case preserved
    ("\u00aa", "a"),  # NFKC
    ("\u2168", "IX"),  # NFKC
    ("a\u00a0b", "a b"),  # non-ASCII space mapped to SPACE
    ("", ""),
])
def test_saslprep_examples(given_: str, expected: str) -> None:
    """RFC 4013 §3 examples (and the space mapping) prepare as the RFC says."""
    assert saslprep(given_) == expected


@pytest.mark.parametrize("bad", ["\u0007", "\u0627\u0031", "a\u200eb", "\ue000", "\u0221"])
def test_saslprep_prohibited(bad: str) -> None:
    """Control characters, bad bidi, private use and unassigned code points are refused."""
    with pytest.raises(ValueError):
        saslprep(bad)


def test_saslprep_unassigned_allowed_for_queries() -> None:
    """allow_unassigned admits code points unassigned in Unicode 3.2 (RFC 4013 §2.5)."""
    assert saslprep("\u0221", allow_unassigned=True) == "\u0221"
