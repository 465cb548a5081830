"""SCRAM cores: RFC 5802 / RFC 7677 vectors, gs2 and message parsing, server policy."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.sasl.api import ChannelBindings
from mxd.sasl.credentials import ScramSecret
from mxd.sasl.scram import (
    ScramClient,
    ScramError,
    ScramErrorCode,
    ScramServer,
    build_gs2_header,
    decode_saslname,
    encode_saslname,
    parse_client_final,
    parse_client_first,
    parse_gs2_header,
    parse_server_final,
    parse_server_first,
)

# RFC 5802 §5 (SCRAM-SHA-1) and RFC 7677 §3 (SCRAM-SHA-256), user "user", password "pencil".
VECTORS = [
    pytest.param(
        "SCRAM-SHA-1", "fyko+d2lbbFgONRv9qkxdawL", "3rfcNHYJY1ZVvWVs7j", "QSXCR+Q6sek8bf92",
        b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        id="rfc5802",
    ),
    pytest.param(
        "SCRAM-SHA-256", "rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "W22ZaJ0SNY7soEsUEjb6gQ==",
        b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        id="rfc7677",
    ),
]


@pytest.mark.parametrize(("mech", "cnonce", "snonce", "salt", "c1", "s1", "c2", "s2"), VECTORS)
def test_rfc_examples_byte_for_byte(mech, cnonce, snonce, salt, c1, s1, c2, s2) -> None:
    """Our client and server reproduce the RFC example exchange exactly, both ways."""
    hash_name = "SHA-1" if mech == "SCRAM-SHA-1" else "SHA-256"
    secret = ScramSecret.derive(hash_name, "pencil", 4096, base64.b64decode(salt))
    client = ScramClient(mech, "user", "pencil", nonce=cnonce)
    server = ScramServer(mech, None, plus_advertised=False, nonce=snonce)
    assert client.first() == c1
    server.client_first(c1)
    assert server.server_first(secret) == s1
    assert client.final(s1) == c2
    assert server.client_final(c2) == s2
    client.verify(s2)  # raises if the server signature were wrong


def test_wrong_password_fails_with_invalid_proof() -> None:
    """A proof computed from another password fails with e=invalid-proof."""
    secret = ScramSecret.derive("SHA-256", "pencil", 16)
    client = ScramClient("SCRAM-SHA-256", "user", "crayon")
    server = ScramServer("SCRAM-SHA-256", None, plus_advertised=False)
    server.client_first(client.first())
    with pytest.raises(ScramError) as ei:
        server.client_final(client.final(server.server_first(secret)))
    assert ei.value.code is ScramErrorCode.INVALID_PROOF
    assert ei.value.server_final == b"e=invalid-proof"


def test_client_rejects_forged_server_signature() -> None:
    """The client refuses a v= that does not come from the password's ServerKey."""
    secret = ScramSecret.derive("SHA-1", "pencil", 16)
    client = ScramClient("SCRAM-SHA-1", "user", "pencil")
    server = ScramServer("SCRAM-SHA-1", None, plus_advertised=False)
    server.client_first(client.first())
    client.final(server.server_first(secret))
    with pytest.raises(ScramError) as ei:
        client.verify(b"v=" + base64.b64encode(b"\0" * 20))
    assert ei.value.code is ScramErrorCode.INVALID_PROOF


def test_client_reports_server_error() -> None:
    """An e= server-final raises ScramError with that code; unknown codes are other-error."""
    with pytest.raises(ScramError) as ei:
        parse_server_final(b"e=channel-bindings-dont-match")
    assert ei.value.code is ScramErrorCode.CHANNEL_BINDINGS_DONT_MATCH
    with pytest.raises(ScramError) as ei:
        parse_server_final(b"e=whatever-new")
    assert ei.value.code is ScramErrorCode.OTHER_ERROR


def test_client_checks_server_nonce_and_iterations() -> None:
    """The server nonce must extend the client's; huge iteration counts are refused."""
    client = ScramClient("SCRAM-SHA-1", "user", "pencil", nonce="abc", max_iterations=10_000)
    with pytest.raises(ScramError):
        client.final(b"r=xyzdef,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(ScramError):
        client.final(b"r=abc,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(ScramError):
        client.final(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=4000000")


def test_server_rejects_wrong_combined_nonce() -> None:
    """A client-final whose r= is not cnonce+snonce fails."""
    secret = ScramSecret.derive("SHA-1", "pencil", 16)
    server = ScramServer("SCRAM-SHA-1", None, plus_advertised=False, nonce="SRV")
    server.client_first(b"n,,n=user,r=CLI")
    server.server_first(secret)
    with pytest.raises(ScramError) as ei:
        server.client_final(b"c=biws,r=CLIXXX,p=" + base64.b64encode(b"\0" * 20))
    assert ei.value.code is ScramErrorCode.OTHER_ERROR


def test_server_checks_cbind_input_for_plain_scram() -> None:
    """Without binding, c= must repeat the gs2 header exactly (here with authzid)."""
    secret = ScramSecret.derive("SHA-1", "pencil", 16)
    client = ScramClient("SCRAM-SHA-1", "user", "pencil", authzid="user")
    server = ScramServer("SCRAM-SHA-1", None, plus_advertised=False)
    first = server.client_first(client.first())
    assert first.gs2.authzid == "user"
    final = client.final(server.server_first(secret))
    tampered = final.replace(b"c=" + base64.b64encode(b"n,a=user,"), b"c=biws")
    assert tampered != final
    with pytest.raises(ScramError) as ei:
        server.client_final(tampered)
    assert ei.value.code is ScramErrorCode.CHANNEL_BINDINGS_DONT_MATCH


# --- gs2 header ------------------------------------------------------------------------

GS2_OK = [
    (b"n,,n=u,r=x", "n", None, None, b"n,,"),
    (b"y,,n=u,r=x", "y", None, None, b"y,,"),
    (b"p=tls-unique,,n=u,r=x", "p", "tls-unique", None, b"p=tls-unique,,"),
    (b"p=tls-exporter,a=bob,n=u,r=x", "p", "tls-exporter", "bob", b"p=tls-exporter,a=bob,"),
    (b"n,a=a=2Cb=3Dc,n=u,r=x", "n", None, "a,b=c", b"n,a=a=2Cb=3Dc,"),
    (b"n,a=J\xc3\xbcrgen,n=u", "n", None, "J\u00fcrgen", b"n,a=J\xc3\xbcrgen,"),
]


@pytest.mark.parametrize(("msg", "flag", "cb", "authzid", "raw"), GS2_OK)
def test_gs2_header_parses(msg, flag, cb, authzid, raw) -> None:
    """Valid gs2 headers yield flag, binding name, decoded authzid and the raw header."""
    gs2, rest = parse_gs2_header(msg)
    assert (gs2.flag, gs2.cb_name, gs2.authzid, gs2.raw) == (flag, cb, authzid, raw)
    assert raw + rest == msg


GS2_BAD = [
    b"",  # nothing
    b"n",  # no commas
    b"n,",  # one comma
    b"x,,n=u,r=x",  # unknown flag
    b"F,n,,n=u,r=x",  # GSS-API non-standard prefix is not SCRAM-in-SASL
    b"p=,,n=u,r=x",  # empty cb-name
    b"p=tls_unique,,n=u,r=x",  # "_" is not allowed in cb-name
    b"n,b=bob,n=u,r=x",  # authzid must be a=
    b"n,a=,n=u,r=x",  # empty authzid
    b"n,a=b=2Xc,n=u,r=x",  # bad escape
    b"n,a=b=,n=u,r=x",  # truncated escape
    b"\xff,,n=u,r=x",  # not UTF-8
]


@pytest.mark.parametrize("msg", GS2_BAD)
def test_gs2_header_rejects(msg) -> None:
    """Malformed gs2 headers raise ScramError(invalid-encoding)."""
    with pytest.raises(ScramError) as ei:
        parse_gs2_header(msg)
    assert ei.value.code is ScramErrorCode.INVALID_ENCODING


def test_gs2_build_round_trips() -> None:
    """build_gs2_header escapes the authzid so that parsing gives it back."""
    raw = build_gs2_header("p", "tls-server-end-point", "a,b=c")
    gs2, rest = parse_gs2_header(raw + b"n=u,r=x")
    assert (gs2.flag, gs2.cb_name, gs2.authzid, rest) == ("p", "tls-server-end-point", "a,b=c", b"n=u,r=x")


@given(st.text(min_size=1).filter(lambda s: "\0" not in s))
def test_saslname_round_trip(name: str) -> None:
    """encode_saslname/decode_saslname are inverse for any name without NUL."""
    assert decode_saslname(encode_saslname(name)) == name


# --- messages --------------------------------------------------------------------------

CLIENT_FIRST_BAD = [
    (b"n,,", ScramErrorCode.INVALID_ENCODING),
    (b"n,,r=abc,n=user", ScramErrorCode.INVALID_ENCODING),
    (b"n,,n=user", ScramErrorCode.INVALID_ENCODING),
    (b"n,,n=user,r=", ScramErrorCode.INVALID_ENCODING),
    (b"n,,n=user,r=a\x7fb", ScramErrorCode.INVALID_ENCODING),
    (b"n,,m=ext,n=user,r=abc", ScramErrorCode.EXTENSIONS_NOT_SUPPORTED),
    (b"n,,n=us=2Xer,r=abc", ScramErrorCode.INVALID_USERNAME_ENCODING),
    (b"n,,n=,r=abc", ScramErrorCode.INVALID_USERNAME_ENCODING),
    (b"n,,n=user,r=abc,,", ScramErrorCode.INVALID_ENCODING),
]


@pytest.mark.parametrize(("msg", "code"), CLIENT_FIRST_BAD)
def test_client_first_rejects(msg, code) -> None:
    """Malformed client-first-messages fail with the RFC 5802 §7 error named."""
    with pytest.raises(ScramError) as ei:
        parse_client_first(msg)
    assert ei.value.code is code


def test_client_first_ignores_unknown_extensions() -> None:
    """RFC 5802 §7: unrecognised optional attributes after the nonce are ignored."""
    first = parse_client_first(b"n,,n=user,r=abc,x=whatever")
    assert (first.username, first.nonce, first.bare) == ("user", "abc", "n=user,r=abc,x=whatever")


def test_client_final_keeps_extensions_in_auth_message() -> None:
    """Extensions before p= stay in client-final-message-without-proof."""
    final = parse_client_final(b"c=biws,r=abc,x=1,p=AAAA")
    assert final.without_proof == "c=biws,r=abc,x=1"
    assert final.proof == b"\0\0\0"


@pytest.mark.parametrize("msg", [
    b"r=abc,s=QSXCR+Q6sek8bf92,i=0", b"r=abc,s=QSXCR+Q6sek8bf92,i=-1",
    b"r=abc,s=QSXCR+Q6sek8bf92,i=x", b"r=abc,s=!!,i=1", b"s=QSXC,r=abc,i=1",
    b"m=1,r=abc,s=QSXCR+Q6sek8bf92,i=1", b"r=abc,s=QSXCR+Q6sek8bf92",
])
def test_server_first_rejects(msg) -> None:
    """The client refuses malformed server-first-messages with ScramError."""
    with pytest.raises(ScramError):
        parse_server_first(msg)


# --- Hypothesis: parsers raise only ScramError -----------------------------------------

_alphabet = st.sampled_from(list(b"nyp=a,rcsiev-tlsuqx0123456789+/AZ\xff\x00"))
_msgs = st.one_of(st.binary(max_size=120), st.lists(_alphabet, max_size=60).map(bytes))


@settings(max_examples=300, deadline=None)
@given(_msgs)
def test_parsers_raise_only_scram_error(data: bytes) -> None:
    """Every SCRAM parser either returns or raises ScramError, whatever the bytes."""
    for parse in (parse_gs2_header, parse_client_first, parse_server_first,
                  parse_client_final, parse_server_final):
        try:
            parse(data)
        except ScramError:
            pass


@settings(max_examples=200, deadline=None)
@given(_msgs, _msgs)
def test_server_machine_raises_only_scram_error(first: bytes, final: bytes) -> None:
    """The server state machine fails only with ScramError on arbitrary client input."""
    secret = ScramSecret.derive("SHA-1", "pencil", 2)
    cb = ChannelBindings("TLSv1.3", tls_exporter=b"e" * 32, tls_server_end_point=b"s" * 32)
    for mech in ("SCRAM-SHA-1", "SCRAM-SHA-1-PLUS"):
        server = ScramServer(mech, cb, plus_advertised=True)
        try:
            server.client_first(b"n,,n=user,r=abc" if not first else first)
            server.server_first(secret)
            server.client_final(final)
        except ScramError:
            pass


# --- server policy (RFC 5802 §6) ---------------------------------------------------------

CB13 = ChannelBindings("TLSv1.3", tls_exporter=b"E" * 32, tls_server_end_point=b"S" * 32)

POLICY = [
    # mechanism, gs2 header, plus advertised, expected error (None: accepted)
    ("SCRAM-SHA-256", b"n,,", True, None),
    ("SCRAM-SHA-256", b"y,,", False, None),
    ("SCRAM-SHA-256", b"y,,", True, ScramErrorCode.SERVER_DOES_SUPPORT_CHANNEL_BINDING),
    ("SCRAM-SHA-256", b"p=tls-exporter,,", True, ScramErrorCode.CHANNEL_BINDING_NOT_SUPPORTED),
    ("SCRAM-SHA-256", b"p=tls-unique,,", False, ScramErrorCode.CHANNEL_BINDING_NOT_SUPPORTED),
    ("SCRAM-SHA-256-PLUS", b"p=tls-exporter,,", True, None),
    ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,", True, None),
    ("SCRAM-SHA-256-PLUS", b"p=tls-unique,,", True, ScramErrorCode.UNSUPPORTED_CHANNEL_BINDING_TYPE),
    ("SCRAM-SHA-256-PLUS", b"p=made-up,,", True, ScramErrorCode.UNSUPPORTED_CHANNEL_BINDING_TYPE),
    ("SCRAM-SHA-256-PLUS", b"n,,", True, ScramErrorCode.OTHER_ERROR),
    ("SCRAM-SHA-256-PLUS", b"y,,", True, ScramErrorCode.OTHER_ERROR),
    ("SCRAM-SHA-1", b"n,a=other,", False, ScramErrorCode.OTHER_ERROR),
    ("SCRAM-SHA-1", b"n,a=user,", False, None),
]


@pytest.mark.parametrize(("mech", "gs2", "plus", "error"), POLICY)
def test_server_gs2_policy(mech, gs2, plus, error) -> None:
    """The server accepts or refuses each gs2 header as RFC 5802 §6 and mxd's policy say."""
    server = ScramServer(mech, CB13, plus_advertised=plus)
    if error is None:
        assert server.client_first(gs2 + b"n=user,r=abc").username == "user"
    else:
        with pytest.raises(ScramError) as ei:
            server.client_first(gs2 + b"n=user,r=abc")
        assert ei.value.code is error


def test_plus_without_tls_is_not_supported() -> None:
    """A -PLUS exchange on a connection without bindings fails channel-binding-not-supported."""
    server = ScramServer("SCRAM-SHA-1-PLUS", None, plus_advertised=False)
    with pytest.raises(ScramError) as ei:
        server.client_first(b"p=tls-unique,,n=user,r=abc")
    assert ei.value.code is ScramErrorCode.CHANNEL_BINDING_NOT_SUPPORTED


def test_username_is_saslprepped() -> None:
    """The server's authcid is the SASLprep form of n= (RFC 5802 §5.1)."""
    server = ScramServer("SCRAM-SHA-1", None, plus_advertised=False)
    server.client_first("n,,n=I\u00adX,r=abc".encode())
    assert server.username == "IX"


def test_username_failing_saslprep_is_refused() -> None:
    """A user name with a prohibited character fails invalid-username-encoding."""
    server = ScramServer("SCRAM-SHA-1", None, plus_advertised=False)
    with pytest.raises(ScramError) as ei:
        server.client_first("n,,n=a\u0007b,r=abc".encode())
    assert ei.value.code is ScramErrorCode.INVALID_USERNAME_ENCODING


def test_wrong_proof_length_fails() -> None:
    """A proof of the wrong size fails invalid-proof rather than crashing."""
    secret = ScramSecret.derive("SHA-256", "pencil", 2)
    server = ScramServer("SCRAM-SHA-256", None, plus_advertised=False, nonce="S")
    server.client_first(b"n,,n=user,r=C")
    server.server_first(secret)
    with pytest.raises(ScramError) as ei:
        server.client_final(b"c=biws,r=CS,p=" + base64.b64encode(b"\1" * 20))
    assert ei.value.code is ScramErrorCode.INVALID_PROOF


def _prepable(s: str) -> bool:
    from mxd.sasl.saslprep import saslprep

    try:
        return bool(saslprep(s))
    except ValueError:
        return False


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(_prepable),
       st.text(min_size=1, max_size=20).filter(_prepable),
       st.sampled_from(["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"]))
def test_round_trip_any_credentials(user: str, password: str, mech: str) -> None:
    """Client and server agree for any SASLprep-valid user name (commas and = included)
    and password; the server's authcid is the prepared user name."""
    from mxd.sasl.saslprep import saslprep

    hash_name = "SHA-256" if "256" in mech else "SHA-1"
    secret = ScramSecret.derive(hash_name, password, 2)
    cb = ChannelBindings("TLSv1.3", tls_exporter=b"\x00,=" * 10)
    plus = mech.endswith("-PLUS")
    client = ScramClient(mech, user, password, cb_type="tls-exporter" if plus else None,
                         cb_data=cb.tls_exporter if plus else None)
    server = ScramServer(mech, cb, plus_advertised=True)
    server.client_first(client.first())
    assert server.username == saslprep(user)
    client.verify(server.client_final(client.final(server.server_first(secret))))
