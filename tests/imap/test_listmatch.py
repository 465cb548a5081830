"""LIST wildcard matching (RFC 3501 §6.3.8) in linear time."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.imap.listmatch import compile_pattern, join_reference
from tests.imap.helpers import Conn, make_store


def _reference(pattern: str, name: str) -> bool:
    rx = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name, re.DOTALL) is not None


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("*", "a/b/c", True),
    ("%", "a", True),
    ("%", "a/b", False),
    ("a/%", "a/b", True),
    ("a/%", "a/b/c", False),
    ("a/*", "a/b/c", True),
    ("", "", True),
    ("", "a", False),
    ("a%b", "ab", True),
    ("a%b", "a/b", False),
    ("%/%", "x/y", True),
    ("*%", "x/y", True),
    ("%%", "x/y", False),
    ("inbox", "INBOX", True),
    ("InBox/%", "INBOX/x", True),
    ("INBOX*", "INBOX/a/b", True),
    ("Inbox", "Inboxes", False),
    ("***********X", "b" * 30, False),
    ("***********X", "b" * 30 + "X", True),
])
def test_table(pattern: str, name: str, expected: bool) -> None:
    assert compile_pattern(pattern).matches(name) is expected


@given(st.text(alphabet="ab/*%", max_size=10), st.text(alphabet="ab/", max_size=12))
def test_same_as_backtracking_reference(pattern: str, name: str) -> None:
    assert compile_pattern(pattern).matches(name) == _reference(pattern, name)


def test_join_reference() -> None:
    assert join_reference("a/", "b") == "a/b"
    assert join_reference("a/", "/b") == "a/b"
    assert join_reference("", "/b") == "/b"


@pytest.mark.parametrize("pattern", ["***********X", "%*%*%*%*%*%*%*%*%*%*%*X",
                                     "*b*b*b*b*b*b*b*b*b*b*b*b*X"])
def test_hostile_pattern_is_fast(pattern: str) -> None:
    """Before: 10 s on the reactor for 11 stars and a 30-character name (exponential)."""
    name = "b" * 1000
    m = compile_pattern(pattern)
    started = time.process_time()
    for _ in range(20):
        assert not m.matches(name)
    assert (time.process_time() - started) / 20 < 0.05


def test_hostile_list_command_is_fast() -> None:
    store, _ = make_store()
    c = Conn(store)
    c.login()
    assert b"C OK" in c.cmd("C CREATE " + "b" * 30)
    started = time.process_time()
    r = c.cmd('L LIST "" "***********X"')
    assert time.process_time() - started < 0.05
    assert r.endswith(b"L OK LIST completed\r\n") and b"bbb" not in r, r  # INBOX ends in X
    r = c.cmd('L LIST "" "*b"')
    assert b'"/" "' + b"b" * 30 + b'"' in r
