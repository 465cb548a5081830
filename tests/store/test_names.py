"""Mailbox names and flags as the store keeps them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.store import names
from mxd.store.interfaces import InvalidFlag, InvalidMailboxName


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("INBOX", "INBOX"),
        ("inbox", "INBOX"),
        ("InBoX/Sub", "INBOX/Sub"),
        ("Inboxes", "Inboxes"),
        ("Work/", "Work"),
        ("Work/Projects", "Work/Projects"),
        ("Entw\u00fcrfe", "Entw\u00fcrfe"),
        ("Entwu\u0308rfe", "Entw\u00fcrfe"),  # NFC
        ("sub/inbox", "sub/inbox"),  # only the top level is special
    ],
)
def test_normalize_mailbox_name(raw: str, stored: str) -> None:
    """INBOX is case-insensitive at the top level, names are NFC, one trailing / drops."""
    assert names.normalize_mailbox_name(raw) == stored


@pytest.mark.parametrize("raw", ["", "/", "a//b", "/a", "a\x00b", "a\nb", "x" * 1001])
def test_invalid_mailbox_names(raw: str) -> None:
    """Empty names, empty levels, control characters and huge names are refused."""
    with pytest.raises(InvalidMailboxName):
        names.normalize_mailbox_name(raw)


def test_parents_and_inferiors() -> None:
    """Superiors are listed outermost first; inferiority is by whole levels."""
    assert names.parents("a/b/c") == ["a", "a/b"]
    assert names.parents("a") == []
    assert names.is_inferior("a/b", "a")
    assert not names.is_inferior("ab", "a")
    assert not names.is_inferior("a", "a")


@pytest.mark.parametrize(
    ("raw", "canon"),
    [("\\seen", "\\Seen"), ("\\DELETED", "\\Deleted"), ("$Junk", "$Junk"), ("NonJunk", "NonJunk"),
     ("\\Custom", "\\Custom")],
)
def test_canonical_flag(raw: str, canon: str) -> None:
    """System flags take their canonical case; keywords keep theirs."""
    assert names.canonical_flag(raw) == canon


@pytest.mark.parametrize("raw", ["", "a b", "(x", "x]", "\\", "\\Recent", "a\x7f", "%", '"q"'])
def test_invalid_flags(raw: str) -> None:
    """Non-atoms and \\Recent cannot be stored."""
    with pytest.raises(InvalidFlag):
        names.canonical_flag(raw)


def test_clean_flags_drops_recent_and_duplicates() -> None:
    """\\Recent is dropped silently and case variants collapse to one flag."""
    assert names.clean_flags(["\\Recent", "\\seen", "\\Seen", "foo", "FOO"]) in (
        frozenset({"\\Seen", "foo"}), frozenset({"\\Seen", "FOO"}))


@pytest.mark.parametrize(
    ("current", "given", "mode", "result"),
    [
        ({"\\Seen"}, {"\\Flagged"}, "set", {"\\Flagged"}),
        ({"\\Seen"}, {"\\Flagged"}, "add", {"\\Seen", "\\Flagged"}),
        ({"\\Seen", "Foo"}, {"foo"}, "remove", {"\\Seen"}),
        ({"Foo"}, {"foo"}, "add", {"Foo"}),
        (set(), {"\\Seen"}, "remove", set()),
    ],
)
def test_apply_flags(current: set[str], given: set[str], mode: str, result: set[str]) -> None:
    """STORE FLAGS / +FLAGS / -FLAGS, keywords compared case-insensitively."""
    assert names.apply_flags(frozenset(current), frozenset(given), mode) == frozenset(result)


flag = st.from_regex(r"\A\\?[A-Za-z$][A-Za-z0-9$_.-]{0,10}\Z").filter(lambda f: f.lower() != "\\recent")


@given(st.frozensets(flag, max_size=6))
def test_flags_text_round_trip(flags: frozenset[str]) -> None:
    """The stored text form gives back the same flags and marks each with spaces."""
    clean = names.clean_flags(flags)
    text = names.flags_to_text(clean)
    assert names.flags_from_text(text) == clean
    for f in clean:
        assert f" {f} " in text
