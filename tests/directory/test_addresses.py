"""Address normalisation for directory lookups (RFC 5321 §2.4, RFC 6531, RFC 5890)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.directory.addresses import (
    InvalidAddress,
    base_address,
    normalize_address,
    normalize_domain,
    normalize_local,
    strip_separator,
)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("alice@example.test", "alice@example.test"),
        ("Alice@EXAMPLE.Test", "alice@example.test"),
        ("<alice@example.test>", "alice@example.test"),
        ("alice@example.test.", "alice@example.test"),
        ("alice@B\u00fccher.example", "alice@xn--bcher-kva.example"),
        ("alice@xn--bcher-kva.example", "alice@xn--bcher-kva.example"),
        ("J\u00f6rg@example.test", "j\u00f6rg@example.test"),  # ASCII letters lowered only
        ("\u00c9lise@example.test", "\u00c9lise@example.test"),  # non-ASCII case kept
        ("e\u0301lise@example.test", "\u00e9lise@example.test"),  # NFC
        ("\u7528\u6237@\u4f8b\u5b50.\u6d4b\u8bd5", "\u7528\u6237@xn--fsqu00a.xn--0zwm56d"),
        ('"john doe"@example.test', "john doe@example.test"),
        ('"a\\"b"@example.test', 'a"b@example.test'),
        ('"x@y"@example.test', "x@y@example.test"),
    ],
)
def test_normalize_address(raw: str, norm: str) -> None:
    """Domains become lowercase A-labels; local parts are unquoted, NFC, ASCII-lowered."""
    assert normalize_address(raw) == norm


@pytest.mark.parametrize(
    "raw",
    ["", "alice", "@example.test", "alice@", "alice@[127.0.0.1]", "alice@exa mple.test",
     "a\x00b@example.test", "a" * 65 + "@example.test", "alice@-bad-.test", "alice@a..b", "alice@_dmarc.example.test"],
)
def test_invalid_addresses(raw: str) -> None:
    """Malformed addresses, literals and overlong local parts are refused."""
    with pytest.raises(InvalidAddress):
        normalize_address(raw)


@pytest.mark.parametrize(
    ("local", "sep", "base"),
    [
        ("alice+tag", "+", "alice"),
        ("alice+tag+more", "+", "alice"),
        ("alice", "+", "alice"),
        ("+tag", "+", "+tag"),
        ("alice-tag", "-", "alice"),
        ("alice+tag", None, "alice+tag"),
        ("alice+tag", "", "alice+tag"),
        ("alice--x", "--", "alice"),
    ],
)
def test_strip_separator(local: str, sep: str | None, base: str) -> None:
    """The sub-address tag goes, unless nothing would be left before the separator."""
    assert strip_separator(local, sep) == base


def test_base_address_keeps_domain() -> None:
    """base_address strips the tag in the local part only."""
    assert base_address("a+b@x+y.test", "+") == "a@x+y.test"


def test_normalize_domain_rejects_literal() -> None:
    """An address literal is never a local mail domain."""
    with pytest.raises(InvalidAddress):
        normalize_domain("[127.0.0.1]")


local_parts = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                           blacklist_characters='@"\\'),
    min_size=1, max_size=20)


@given(local_parts)
def test_normalize_local_idempotent(local: str) -> None:
    """Normalising a normalised local part changes nothing."""
    try:
        once = normalize_local(local)
    except InvalidAddress:
        return
    assert normalize_local(once) == once
    assert all(not c.isascii() or not c.isupper() for c in once)
