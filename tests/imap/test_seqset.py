"""Sequence sets are normalised once: thousands of overlapping ranges cost no more per
message than one (RFC 9051 §9 sequence-set)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.imap.errors import ParseError
from mxd.imap.parser import parse_bytes
from mxd.imap.values import SeqSet
from tests.imap.helpers import MSG1, Conn, make_store

ranges = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=12)


@given(ranges, st.integers(0, 45), st.integers(1, 40))
def test_contains_and_iter_agree_with_the_naive_reading(rs: list[tuple[int, int]], n: int,
                                                        star: int) -> None:
    s = SeqSet(tuple(rs))
    naive = any(min(a or star, b or star) <= n <= max(a or star, b or star) for a, b in rs)
    assert s.contains(n, star) == naive
    values = sorted({v for a, b in rs
                     for v in range(min(a or star, b or star), max(a or star, b or star) + 1)})
    assert list(s.iter_values(star, 30)) == [v for v in values if v <= 30]


def test_merged_ranges() -> None:
    s = SeqSet(((1, 0), (1, 0), (5, 3), (7, 8), (9, 9), (20, 22)))
    assert s.resolve(100) == [(1, 100)]
    assert SeqSet(((5, 3), (7, 8), (9, 9), (20, 22))).resolve(100) == [(3, 5), (7, 9), (20, 22)]
    assert s.resolve(2) == [(1, 5), (7, 9), (20, 22)]  # a new value of * renormalises


def test_uid_search_with_16000_ranges_is_fast() -> None:
    """Before: 11 s of reactor time on 3,000 messages (the set was rebuilt per message)."""
    store, acc = make_store()
    for _ in range(3000):
        store.put(acc, "INBOX", MSG1)
    c = Conn(store)
    c.login()
    c.select()
    big = ",".join(["1:*"] * 16000)
    c.cmd("W UID SEARCH UID 1:3")  # warm the code paths

    def run(command: str) -> tuple[float, bytes]:
        # The least CPU time of five runs: the cost of the work, not of the other
        # processes on a shared machine.
        best, out = float("inf"), b""
        for _ in range(5):
            started = time.process_time()
            out = c.cmd(command)
            best = min(best, time.process_time() - started)
        return best, out

    cpu, r = run(f"U UID SEARCH UID {big}")
    assert r.endswith(b"U OK UID SEARCH completed\r\n"), r[-200:]
    assert r.startswith(b"* SEARCH 1 2 3 ") and b" 3000\r\n" in r
    # Parsing the 64 KiB line and the 3,000-message scan: about 25 ms here (the goal is
    # under 50 ms); the bound leaves room for a loaded machine.  Before: 11 s.
    assert cpu < 0.1, cpu
    cpu, r = run(f"U UID SEARCH RETURN (COUNT) UID {big} NOT UID 5:2990")
    assert b"COUNT 14" in r, r
    assert cpu < 0.1, cpu


@pytest.mark.parametrize(("text", "ranges"), [
    ("1", ((1, 1),)), ("1:*", ((1, 0),)), ("*:4,7,9:10", ((0, 4), (7, 7), (9, 10))),
    ("4294967295", ((4294967295, 4294967295),)),
])
def test_parse_sequence_sets(text: str, ranges: tuple[tuple[int, int], ...]) -> None:
    cmd = parse_bytes(f"a FETCH {text} FLAGS".encode())
    assert cmd.args.seqset == SeqSet(ranges)


@pytest.mark.parametrize("text", ["0", "1:0", "1::2", "1:2:3", "1,,2", "1,", ",1", ":1",
                                  "4294967296", "1:a"])
def test_parse_bad_sequence_sets(text: str) -> None:
    with pytest.raises(ParseError):
        parse_bytes(f"a FETCH {text} FLAGS".encode())
