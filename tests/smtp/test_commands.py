"""The command table (RFC 5321 §4.1.1): one line in, one typed command or error reply out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.smtp import commands as c
from mxd.smtp.address import Address

TABLE = [
    (b"EHLO client.example", c.Helo("client.example", True)),
    (b"helo [192.0.2.1]", c.Helo("[192.0.2.1]", False)),
    (b"MAIL FROM:<a@b.example> SIZE=5", c.Mail(Address("a", "b.example"), {"SIZE": "5"})),
    (b"mail from: <a@b.example>", c.Mail(Address("a", "b.example"), {})),
    (b"RCPT TO:<x@y.example> NOTIFY=NEVER", c.Rcpt(Address("x", "y.example"), {"NOTIFY": "NEVER"})),
    (b"DATA", c.Data()),
    (b"BDAT 100", c.Bdat(100, False)),
    (b"BDAT 0 LAST", c.Bdat(0, True)),
    (b"RSET", c.Rset()),
    (b"NOOP anything", c.Noop()),
    (b"QUIT", c.Quit()),
    (b"VRFY alice", c.Vrfy("alice")),
    (b"STARTTLS", c.StartTLS()),
    (b"AUTH PLAIN", c.Auth("PLAIN", None)),
    (b"auth plain =", c.Auth("PLAIN", b"")),
    (b"AUTH PLAIN AGFsaWNlAHB3", c.Auth("PLAIN", b"\0alice\0pw")),
    ("MAIL FROM:<ü@bücher.test> SMTPUTF8".encode(), c.Mail(Address("ü", "bücher.test"), {"SMTPUTF8": None})),
]

ERRORS = [
    (b"", 500), (b"FROB", 500), (b"EHLO", 501), (b"EHLO a b", 501), (b"DATA now", 501),
    (b"BDAT", 501), (b"BDAT x", 501), (b"BDAT 1 NOTLAST", 501), (b"MAIL FROM:a@b", 501),
    (b"RCPT TO:<>", 501), (b"AUTH", 501), (b"AUTH PLAIN !!!", 501), (b"AUTH PL@IN", 504),
    (b"STARTTLS now", 501), (b"NOOP\nMAIL", 500), (b"QUIT\r", 500), (b"\xff\xfe", 501),
    (b"MAIL FROM:<a\x00@b>", 501),
]


@pytest.mark.parametrize(("line", "expected"), TABLE)
def test_commands_parse(line: bytes, expected: c.Command) -> None:
    """Each valid line gives its typed command."""
    assert c.parse_command(line) == expected


@pytest.mark.parametrize(("line", "code"), ERRORS)
def test_command_errors(line: bytes, code: int) -> None:
    """Each invalid line raises CommandError with the expected reply code."""
    with pytest.raises(c.CommandError) as e:
        c.parse_command(line)
    assert e.value.reply.code == code


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_command_error(line: bytes) -> None:
    """No input makes the parser raise anything but CommandError."""
    try:
        c.parse_command(line)
    except c.CommandError as e:
        assert 500 <= e.reply.code < 600


VERBS = st.sampled_from(["EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "AUTH", "RSET", "VRFY"])


@given(VERBS, st.text(max_size=120))
def test_verbs_with_any_argument(verb: str, arg: str) -> None:
    """Known verbs with arbitrary arguments parse or raise CommandError with a 5xx reply."""
    try:
        c.parse_command(f"{verb} {arg}".encode("utf-8", "surrogatepass"))
    except c.CommandError as e:
        assert 500 <= e.reply.code < 600
