"""SEARCHRES (RFC 5182): SEARCH RETURN (SAVE) and ``$`` in later commands."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mxd.imap.searchres import as_seqset, to_save
from tests.imap.test_sort import _session


@given(st.lists(st.integers(1, 60), max_size=30))
def test_as_seqset_names_exactly_the_numbers(nums: list[int]) -> None:
    """The sequence set built for ``$`` contains the saved numbers and nothing else."""
    s = as_seqset(nums)
    assert {n for n in range(1, 62) if s.contains(n, 61)} == set(nums)


def test_to_save_rfc5182_section_2_4() -> None:
    """SAVE with MIN and/or MAX alone saves those; with ALL or COUNT every match."""
    assert to_save(("SAVE",), [4, 2, 9]) == [4, 2, 9]
    assert to_save(("SAVE", "MIN"), [4, 2, 9]) == [2]
    assert to_save(("MAX", "SAVE", "MIN"), [4, 2, 9]) == [2, 9]
    assert to_save(("SAVE", "MIN", "ALL"), [4, 2, 9]) == [4, 2, 9]
    assert to_save(("SAVE", "MIN"), []) == []


def test_save_then_dollar_in_fetch_store_search() -> None:
    """RFC 5182 §2.4/§3: SAVE alone answers no ESEARCH; "$" then names the saved
    messages in FETCH, UID FETCH, STORE and SEARCH (also inside OR)."""
    c = _session()
    assert c.cmd("A282 SEARCH RETURN (SAVE) SUBJECT b") == b"A282 OK SEARCH completed\r\n"
    assert c.cmd("A283 FETCH $ (UID)") == (
        b"* 3 FETCH (UID 3)\r\n* 4 FETCH (UID 4)\r\nA283 OK FETCH completed\r\n")
    assert c.cmd("a UID FETCH $ (FLAGS)").count(b" FETCH (") == 2
    assert c.cmd("b SEARCH $").startswith(b"* SEARCH 3 4\r\n")
    assert c.cmd("c SEARCH OR $ 1").startswith(b"* SEARCH 1 3 4\r\n")
    assert c.cmd("d UID SEARCH UID $").startswith(b"* SEARCH 3 4\r\n")
    assert b"d2 OK" in c.cmd("d2 STORE $ +FLAGS.SILENT (\\Flagged)")
    assert c.cmd("e SEARCH FLAGGED").startswith(b"* SEARCH 3 4\r\n")


def test_save_min_max_and_uid_search() -> None:
    """SAVE MIN MAX answers ESEARCH and saves only those two; UID SEARCH saves UIDs."""
    c = _session()
    assert c.cmd("a SEARCH RETURN (SAVE MIN MAX) 2:4").startswith(
        b'* ESEARCH (TAG "a") MIN 2 MAX 4\r\n')
    assert c.cmd("b SEARCH $").startswith(b"* SEARCH 2 4\r\n")
    assert c.cmd("c UID SEARCH RETURN (SAVE) 5").startswith(b"c OK")
    assert c.cmd("d FETCH $ (UID)").startswith(b"* 5 FETCH (UID 5)\r\n")


def test_saved_result_follows_expunge_and_resets() -> None:
    """RFC 5182 §2.1: expunged messages leave the saved result; SELECT and UNSELECT
    empty it; a failed SEARCH with SAVE empties it too."""
    c = _session()
    c.cmd("a SEARCH RETURN (SAVE) 2:3")
    c.cmd("b STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert b"* 2 EXPUNGE" in c.cmd("c EXPUNGE")
    assert c.cmd("d FETCH $ (UID)").startswith(b"* 2 FETCH (UID 3)\r\n")  # UID 3 is now 2
    assert c.cmd("e SEARCH RETURN (SAVE) CHARSET KOI8-R ALL").startswith(b"e NO [BADCHARSET")
    assert c.cmd("f SEARCH $").startswith(b"* SEARCH\r\n")
    c.cmd("g SEARCH RETURN (SAVE) ALL")
    assert c.cmd("h UNSELECT").startswith(b"h OK")
    c.select()
    assert c.cmd("i SEARCH $").startswith(b"* SEARCH\r\n")
    assert c.cmd("j FETCH $ (UID)") == b"j OK FETCH completed\r\n"
    assert b" SEARCHRES" in c.cmd("k CAPABILITY")
