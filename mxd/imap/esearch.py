"""ESEARCH responses (RFC 4731 §3.1, RFC 9051 §7.3.4) with the extensions that add to
them: ESORT order (RFC 5267 §3.1), PARTIAL (RFC 5267 §4.4, RFC 9394 §3.1), CONTEXT
updates (RFC 5267 §4.3: ADDTO and REMOVEFROM) and the MAILBOX/UIDVALIDITY correlators of
MULTISEARCH (RFC 7377 §2.1).  Pure: numbers in, response text out.
"""

from __future__ import annotations

from collections.abc import Sequence

from mxd.imap import response


def quote(s: str) -> bytes:
    """A quoted string (RFC 9051 §4.3) for the TAG correlator."""
    return b'"' + s.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


def partial_window(results: Sequence[int], rng: tuple[int, int]) -> list[int]:
    """The results at positions ``rng`` (RFC 9394 §3.1: 1-based, inclusive; negative
    positions count from the last result, -1 being the last)."""
    lo, hi = rng
    n = len(results)
    if lo < 0:
        # -1:-100 is the last 100; as positions from the start: n-99 .. n.
        lo, hi = n + lo + 1, n + hi + 1
    lo = max(lo, 1)
    if hi < lo:
        return []
    return list(results[lo - 1:hi])


def sorted_set(numbers: Sequence[int]) -> bytes:
    """RFC 5267 §3.1 ALL: a sequence set in sort order; only ascending runs of
    consecutive numbers are written as ranges ("4:6" only for 4, 5, 6 in that order)."""
    out: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(out).encode("ascii")


def partial_range_text(rng: tuple[int, int]) -> bytes:
    lo, hi = rng
    if lo < 0:
        return b"%d:%d" % (hi, lo)  # RFC 9394 §3.1 writes the last-range as -1:-100
    return b"%d:%d" % (lo, hi)


def correlator(tag: str, mailbox: bytes | None = None, uidvalidity: int | None = None) -> bytes:
    """``(TAG "t")``, with ``MAILBOX m UIDVALIDITY n`` for RFC 7377 §2.1."""
    out = b"(TAG " + quote(tag)
    if mailbox is not None:
        out += b" MAILBOX " + mailbox + b" UIDVALIDITY %d" % (uidvalidity or 0)
    return out + b")"


def render(tag: str, is_uid: bool, opts: Sequence[str], results: Sequence[int], *,
           partial: tuple[int, int] | None = None, in_order: bool = False,
           modseq: int | None = None, mailbox: bytes | None = None,
           uidvalidity: int | None = None) -> bytes:
    """One ESEARCH response (without ``* `` and CRLF).

    ``results`` are message numbers or UIDs, ascending for SEARCH, in sort order for
    ESORT (``in_order``: MIN/MAX are then the first and last, ALL keeps the order).
    ``opts`` are the RETURN options; RETURN () means ALL (RFC 4731 §3.1).  CONTEXT,
    UPDATE and SAVE add nothing to the response itself."""
    opts = tuple(opts) or ("ALL",)
    line = b"ESEARCH " + correlator(tag, mailbox, uidvalidity)
    if is_uid:
        line += b" UID"
    if results:
        if "MIN" in opts:
            line += b" MIN %d" % (results[0] if in_order else min(results))
        if "MAX" in opts:
            line += b" MAX %d" % (results[-1] if in_order else max(results))
        if "ALL" in opts:
            line += b" ALL " + (sorted_set(results) if in_order else response.seqset(results))
    if partial is not None and "PARTIAL" in opts:
        # RFC 9394 §3.1: PARTIAL (range set-or-NIL); always present when asked for.
        # Return data may come in any order (RFC 4731 §3.1); this is Dovecot's.
        window = partial_window(results, partial)
        if not window:
            body = b"NIL"
        else:
            body = sorted_set(window) if in_order else response.seqset(window)
        line += b" PARTIAL (" + partial_range_text(partial) + b" " + body + b")"
    if "COUNT" in opts:
        line += b" COUNT %d" % len(results)
    if modseq is not None:
        line += b" MODSEQ %d" % modseq
    return line


def update_lines(tag: str, is_uid: bool, removed: Sequence[tuple[int, Sequence[int]]],
                 added: Sequence[tuple[int, Sequence[int]]]) -> list[bytes]:
    """RFC 5267 §4.3 notifications: ``ESEARCH (TAG "t") [UID] REMOVEFROM (pos set)`` and
    ``ADDTO (pos set)``; each item is (context position, numbers).  Position 0 for an
    unsorted SEARCH (the client knows where a number goes), the 1-based position in the
    sorted result for a SORT."""
    out = []
    head = b"ESEARCH " + correlator(tag) + (b" UID" if is_uid else b"")
    if removed:
        out.append(head + b"".join(b" REMOVEFROM (%d " % pos + _set(nums, pos) + b")"
                                   for pos, nums in removed))
    if added:
        out.append(head + b"".join(b" ADDTO (%d " % pos + _set(nums, pos) + b")"
                                   for pos, nums in added))
    return out


def _set(nums: Sequence[int], pos: int) -> bytes:
    return response.seqset(nums) if pos == 0 else sorted_set(nums)
