"""Address and parameter syntax (RFC 5321 §4.1.2, RFC 6531, RFC 3461 xtext)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.smtp.address import (
    Address,
    AddressError,
    decode_xtext,
    encode_xtext,
    parse_mail_argument,
    parse_notify,
    parse_orcpt,
    parse_path,
    parse_rcpt_argument,
)

GOOD_PATHS = [
    ("<a@b.example>", Address("a", "b.example")),
    ("<first.last+tag@sub.example.com>", Address("first.last+tag", "sub.example.com")),
    ('<"with space"@example.com>', Address('"with space"', "example.com")),
    ('<"quoted\\"q"@example.com>', Address('"quoted\\"q"', "example.com")),
    ("<user@[192.0.2.1]>", Address("user", "[192.0.2.1]")),
    ("<user@[IPv6:2001:db8::1]>", Address("user", "[IPv6:2001:db8::1]")),
    ("<@relay.example,@r2.example:u@final.example>", Address("u", "final.example")),
    ("<用户@例子.测试>", Address("用户", "例子.测试")),
    ("<" + "a" * 64 + "@x.example>", Address("a" * 64, "x.example")),
]

BAD_PATHS = [
    "a@b.example", "<a@b.example", "<@b.example>", "<a@>", "<a..b@c.example>", "<.a@c.example>",
    "<a@-b.example>", "<a@b..example>", "<a b@c.example>", "<a@[999.1.1.1]>",
    "<" + "a" * 65 + "@x.example>", "<a@" + "b" * 64 + ".example>", "<a@b.example@c>",
    '<"unterminated@x.example>', "<a\x00@b.example>", "<a@b_c.example>",
]


@pytest.mark.parametrize(("text", "expected"), GOOD_PATHS)
def test_good_paths(text: str, expected: Address) -> None:
    """Valid RFC 5321/6531 paths parse into local part and domain."""
    assert parse_path(text, null_ok=False) == expected


@pytest.mark.parametrize("text", BAD_PATHS)
def test_bad_paths(text: str) -> None:
    """Invalid paths raise AddressError."""
    with pytest.raises(AddressError):
        parse_path(text, null_ok=False)


def test_null_path_only_for_mail() -> None:
    """<> is the null reverse-path for MAIL and invalid for RCPT."""
    assert parse_mail_argument("FROM:<>").sender is None
    with pytest.raises(AddressError):
        parse_rcpt_argument("TO:<>")


def test_parameters_parsed_and_uppercased() -> None:
    """Parameters become an uppercase-keyed dict; repeated keys are refused."""
    m = parse_mail_argument("from:<a@b.example> size=10 BODY=8BITMIME SMTPUTF8")
    assert m.params == {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None}
    with pytest.raises(AddressError):
        parse_mail_argument("FROM:<a@b.example> SIZE=1 SIZE=2")
    with pytest.raises(AddressError):
        parse_mail_argument("FROM:<a@b.example>SIZE=1")


def test_postmaster_without_domain() -> None:
    """RFC 5321 §4.1.1.3: RCPT TO:<Postmaster> has no domain and is valid."""
    assert parse_rcpt_argument("TO:<Postmaster>").recipient is None


def test_normalised_form() -> None:
    """normalised(): unquoted local part, lowercase A-label domain."""
    assert Address("Alice", "EXAMPLE.Test").normalised() == "Alice@example.test"
    assert Address("u", "Bücher.test").normalised() == "u@xn--bcher-kva.test"
    assert Address('"a b"', "x.example").normalised() == "a b@x.example"


def test_xtext_examples() -> None:
    """RFC 3461 §4: "+" and "=" and non-printables are hex-escaped."""
    assert encode_xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert decode_xtext("a+2Bb+3Dc+20d") == "a+b=c d"
    with pytest.raises(AddressError):
        decode_xtext("a+zz")
    with pytest.raises(AddressError):
        decode_xtext("a=b")


@given(st.text(max_size=50))
def test_xtext_round_trip(text: str) -> None:
    """decode(encode(x)) == x for any text."""
    assert decode_xtext(encode_xtext(text)) == text


def test_notify_and_orcpt() -> None:
    """NOTIFY is NEVER or a SUCCESS/FAILURE/DELAY list; ORCPT is addr-type;xtext."""
    assert parse_notify("never") == frozenset({"NEVER"})
    assert parse_notify("SUCCESS,DELAY") == frozenset({"SUCCESS", "DELAY"})
    for bad in ("NEVER,SUCCESS", "", "SOMETIMES", "SUCCESS,SUCCESS"):
        with pytest.raises(AddressError):
            parse_notify(bad)
    assert parse_orcpt("rfc822;a+2Bb@c.example") == "rfc822;a+2Bb@c.example"
    with pytest.raises(AddressError):
        parse_orcpt("nosemicolon")


@given(st.text(max_size=300))
def test_mail_argument_never_crashes(text: str) -> None:
    """Any text either parses or raises AddressError, nothing else."""
    try:
        parse_mail_argument(text)
    except AddressError:
        pass


@given(st.from_regex(r"\A(TO|to):<[a-zA-Z0-9.@\[\]:\"\\ ,_-]{0,40}>( [A-Z]+=[^ ]{0,10}){0,3}\Z"))
def test_rcpt_argument_never_crashes(text: str) -> None:
    """Near-valid RCPT arguments either parse or raise AddressError."""
    try:
        parse_rcpt_argument(text)
    except AddressError:
        pass
