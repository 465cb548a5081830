"""The doomed list (mxd.store.leftovers): what it holds at each step, on disk."""

from __future__ import annotations

import secrets
from pathlib import Path

from mxd.store.leftovers import COMPACT_AFTER, DoomedList, is_list_of, list_owner, read_ids


def _ids(n: int) -> list[str]:
    return [secrets.token_hex(16) for _ in range(n)]


def test_the_file_holds_every_body_not_yet_removed(tmp_path: Path) -> None:
    """Noted ids are on disk at once (appended); removed ones leave it at a rewrite, and
    the file goes when nothing is left; a repeated note adds nothing."""
    d = DoomedList(tmp_path, "mx1.example-42")
    assert is_list_of(d.path.name, "mx1.example-42", ".doomed")
    a, b = _ids(2)
    d.note([a])
    d.note([a, b])
    assert read_ids(d.path) == [a, b]
    assert d.path.read_text().split() == [a, b]  # no repeat
    d.done([a])
    assert set(read_ids(d.path)) >= {b} and d.listed == {b}
    d.done([b])
    assert not d.path.exists() and d.listed == set()
    d.done([a])  # nothing listed: nothing happens
    assert not d.path.exists()


def test_a_long_list_is_rewritten_without_the_removed_ones(tmp_path: Path) -> None:
    d = DoomedList(tmp_path, "mx1-7")
    keep = _ids(3)
    gone = _ids(COMPACT_AFTER)
    d.note(keep + gone)
    d.done(gone[:-1])
    assert len(read_ids(d.path)) == len(keep) + len(gone)  # not yet worth a rewrite
    d.done(gone[-1:])
    assert sorted(read_ids(d.path)) == sorted(keep)
    assert not list(tmp_path.glob("*.new"))
    d.close()
    assert not d.path.exists()


def test_process_names_of_list_files() -> None:
    """Host names may hold dots and dashes; the pid is the digits after the last dash."""
    assert list_owner("mail-2.example.org-1234") == ("mail-2.example.org", 1234)
    assert list_owner("nodash") is None
    assert list_owner("host-x1") is None
    assert is_list_of("h-12.abcd.doomed", "h-12", ".doomed")
    assert not is_list_of("h-123.abcd.doomed", "h-12", ".doomed")
