"""No input crashes a session (Hypothesis): any bytes give well-formed replies or a close."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.smtp.helpers import Session

REPLY_LINE = re.compile(rb"\A[2-5][0-9][0-9][ -].*\Z|\A334 .*\Z", re.S)

FRAGMENTS = st.sampled_from([
    b"EHLO x.example\r\n", b"HELO x\r\n", b"MAIL FROM:<a@b.example>\r\n", b"MAIL FROM:<>\r\n",
    b"RCPT TO:<alice@example.test>\r\n", b"RCPT TO:<x@far.example>\r\n", b"DATA\r\n",
    b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b".\r\n", b"\r\n", b"\n.\n", b"RSET\r\n", b"NOOP\r\n",
    b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"*\r\n", b"AUTH PLAIN =\r\n", b"Subject: x\r\n",
    b"..dots\r\n", b"QUIT\r\n", b"\r", b"\x00", b"MAIL FROM:<\xff@x>\r\n",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(FRAGMENTS, st.binary(max_size=30)), max_size=25),
       st.sampled_from(["smtp", "submission"]))
def test_any_input_gives_wellformed_replies(parts: list[bytes], role: str) -> None:
    """Random command soup never raises; every output line is a valid reply line."""
    s = Session(role)
    for p in parts:
        s.send(p)
    s.clock.advance(1000)  # timeouts fire too
    out = s.transport.value()
    for line in out.split(b"\r\n")[:-1]:
        assert REPLY_LINE.match(line), line
    assert out.endswith(b"\r\n")
