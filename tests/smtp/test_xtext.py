"""The one xtext codec (RFC 3461 §4) used by the server, the client and DSNs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.smtp import xtext


@pytest.mark.parametrize(("text", "wire"), [
    ("a+b=c d", "a+2Bb+3Dc+20d"), ("é", "+C3+A9"), ("", ""), ("rfc822;x@y", "rfc822;x@y"),
])
def test_encode_table(text: str, wire: str) -> None:
    """'+', '=', space and non-ASCII octets are escaped, upper-case hex."""
    assert xtext.encode(text) == wire and xtext.decode(wire) == text


@pytest.mark.parametrize("bad", ["a+zz", "a=b", "a+2", "a b", "a+2b"])
def test_strict_decoding_refuses_malformed(bad: str) -> None:
    """A client's malformed xtext is refused (lower-case hex is not xtext)."""
    with pytest.raises(xtext.XtextError):
        xtext.decode(bad)


@pytest.mark.parametrize(("stored", "text"), [("a+zz", "a+zz"), ("x+2", "x+2"),
                                              ("+41+2b", "A+"), ("é", "é")])
def test_lenient_decoding_keeps_what_it_cannot_read(stored: str, text: str) -> None:
    """Stored values are decoded as far as they can be; the rest is kept as is."""
    assert xtext.decode_lenient(stored) == text


@given(st.text())
def test_round_trip(text: str) -> None:
    """decode(encode(t)) == t for any text; the encoding is always valid xtext."""
    assert xtext.decode(xtext.encode(text)) == text
