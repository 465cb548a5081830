"""Annotations (RFC 5464) in the store: the SQLite table and the memory fake behave alike
(one contract, run against both)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mxd.store.metadata import (
    SERVER,
    Depth,
    MemoryMetadata,
    MetadataLimits,
    MetadataTooLarge,
    MetadataTooMany,
    SQLiteMetadata,
    below,
)
from mxd.store.testing import MemoryStore
from tests.store.helpers import StoreHarness, open_pg_store, open_store

LIMITS = MetadataLimits(max_entry_size=100, max_entries=5, max_total=300)


def run(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred did not fire at once"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


class Case:
    def __init__(self, store: Any, md: Any) -> None:
        self.store = store
        self.md = md
        self.account = run(store.add_account("alice", "{}")).id
        self.inbox = run(store.get_mailbox(self.account, "INBOX")).id

    def get(self, mailbox: int, *names: str, depth: Depth = Depth.ZERO) -> list[tuple[str, bytes]]:
        return list(run(self.md.get_metadata(self.account, mailbox, names, depth)))

    def set(self, mailbox: int, *items: tuple[str, bytes | None]) -> None:
        run(self.md.set_metadata(self.account, mailbox, items))


def _open(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> StoreHarness:
    if kind == "postgresql":
        return open_pg_store(request.getfixturevalue("pg_dsn"), tmp_path / "blobs", inline=True)
    return open_store(tmp_path / "data", inline=True)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    if request.param == "memory":
        yield Case(MemoryStore(), MemoryMetadata(LIMITS))
        return
    h = _open(request, request.param, tmp_path)
    try:
        yield Case(h.store, SQLiteMetadata(h.store, LIMITS))
    finally:
        h.close()


def test_set_get_and_remove(case: Case) -> None:
    """Server and mailbox entries are separate; NIL (None) removes an entry."""
    case.set(SERVER, ("/shared/comment", b"server"))
    case.set(case.inbox, ("/private/comment", b"mine"), ("/shared/comment", b"ours"))
    assert case.get(SERVER, "/shared/comment") == [("/shared/comment", b"server")]
    assert case.get(case.inbox, "/private/comment", "/shared/comment") == [
        ("/private/comment", b"mine"), ("/shared/comment", b"ours")]
    case.set(case.inbox, ("/private/comment", None))
    assert case.get(case.inbox, "/private/comment") == []


def test_depth(case: Case) -> None:
    """RFC 5464 §4.2.2: DEPTH 1 adds the children, infinity everything below."""
    case.set(case.inbox, ("/private/a", b"1"), ("/private/a/b", b"2"), ("/private/a/b/c", b"3"),
             ("/private/ab", b"4"))
    assert [n for n, _ in case.get(case.inbox, "/private/a")] == ["/private/a"]
    assert [n for n, _ in case.get(case.inbox, "/private/a", depth=Depth.ONE)] == [
        "/private/a", "/private/a/b"]
    assert [n for n, _ in case.get(case.inbox, "/private/a", depth=Depth.INFINITY)] == [
        "/private/a", "/private/a/b", "/private/a/b/c"]


def test_limits_all_or_nothing(case: Case) -> None:
    """RFC 5464 §4.3: a value over the entry limit (MAXSIZE) or an account over its count
    or total (TOOMANY) fails the whole command; nothing of it is stored."""
    with pytest.raises(MetadataTooLarge) as e:
        case.set(case.inbox, ("/private/ok", b"x"), ("/private/big", b"y" * 101))
    assert e.value.limit == 100
    assert case.get(case.inbox, "/private/ok") == []
    with pytest.raises(MetadataTooMany):
        case.set(case.inbox, *[(f"/private/n{i}", b"v") for i in range(6)])
    assert case.get(case.inbox, "/private", depth=Depth.INFINITY) == []
    case.set(SERVER, ("/private/a", b"a" * 100), ("/private/b", b"b" * 100))
    with pytest.raises(MetadataTooMany):  # 300 octets in total is the limit
        case.set(case.inbox, ("/private/c", b"c" * 100), ("/private/d", b"d"))
    case.set(case.inbox, ("/private/c", b"c" * 100))  # exactly at the limit


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_entries_go_with_their_mailbox(request: pytest.FixtureRequest, kind: str,
                                       tmp_path: Path) -> None:
    """RFC 5464 §3.2: deleting a mailbox deletes its annotations (a trigger), and a
    rename keeps them (the mailbox keeps its id)."""
    h = _open(request, kind, tmp_path)
    try:
        case = Case(h.store, SQLiteMetadata(h.store, LIMITS))
        box = run(h.store.create_mailbox(case.account, "Work")).id
        case.set(box, ("/private/color", b"red"))
        run(h.store.rename_mailbox(case.account, "Work", "Job"))
        assert case.get(box, "/private/color") == [("/private/color", b"red")]
        run(h.store.delete_mailbox(case.account, "Job"))
        rows = h.run(h.store.transact(lambda conn: conn.execute(
            "SELECT count(*) FROM metadata").fetchone()[0]))
        assert rows == 0
    finally:
        h.close()


@pytest.mark.parametrize(("name", "asked", "depth", "hit"), [
    ("/private/a", "/private/a", Depth.ZERO, True),
    ("/private/a/b", "/private/a", Depth.ZERO, False),
    ("/private/a/b", "/private/a", Depth.ONE, True),
    ("/private/a/b/c", "/private/a", Depth.ONE, False),
    ("/private/a/b/c", "/private/a", Depth.INFINITY, True),
    ("/private/ab", "/private/a", Depth.INFINITY, False),
])
def test_below(name: str, asked: str, depth: Depth, hit: bool) -> None:
    """Which entries a GETMETADATA of ``asked`` at ``depth`` returns."""
    assert below(name, asked, depth) is hit
