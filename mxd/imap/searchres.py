"""SEARCHRES (RFC 5182): the saved search result and ``$``.

The session keeps the saved result as UIDs, so it follows expunges by itself (RFC 5182
§2.1: "$" names the saved messages that still exist).  Before a command runs,
``substitute`` replaces ``$`` in its sequence set or search program with the saved
messages: UIDs in UID commands and in a ``UID $`` search key, message sequence numbers
otherwise."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from mxd.imap.values import Command, SearchKey, SeqSet


def as_seqset(numbers: Iterable[int]) -> SeqSet:
    """Numbers as a sequence set of ascending ranges (empty: a set naming nothing)."""
    vals = sorted(set(numbers))
    ranges: list[tuple[int, int]] = []
    for v in vals:
        if ranges and v == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], v)
        else:
            ranges.append((v, v))
    return SeqSet(tuple(ranges))


def _seqs(uids: Sequence[int], saved: Iterable[int]) -> list[int]:
    out = []
    for u in saved:
        i = bisect.bisect_left(uids, u)
        if i < len(uids) and uids[i] == u:
            out.append(i + 1)
    return out


def _key(k: SearchKey, uid_set: SeqSet, seq_set: SeqSet) -> SearchKey:
    if k.name in ("SEQ", "UID") and k.args and isinstance(k.args[0], SeqSet) and k.args[0].saved:
        return SearchKey(k.name, (uid_set if k.name == "UID" else seq_set,))
    if any(isinstance(a, SearchKey) for a in k.args):
        return SearchKey(k.name, tuple(_key(a, uid_set, seq_set) if isinstance(a, SearchKey) else a
                                       for a in k.args))
    return k


def uses_saved(k: SearchKey) -> bool:
    """Does a search program use ``$`` (RFC 5182 §2.1)?"""
    return any((isinstance(a, SeqSet) and a.saved) or (isinstance(a, SearchKey) and uses_saved(a))
               for a in k.args)


def substitute(cmd: Command, saved: Sequence[int], uids: Sequence[int]) -> Command:
    """``cmd`` with ``$`` replaced by the saved messages (``saved``: UIDs; ``uids``: the
    selected mailbox's UIDs in order)."""
    args: Any = cmd.args
    seqset = getattr(args, "seqset", None)
    if isinstance(seqset, SeqSet) and seqset.saved:
        is_uid = cmd.name.startswith("UID ")
        seqs = _seqs(uids, saved)
        new = as_seqset([uids[q - 1] for q in seqs] if is_uid else seqs)
        return attrs.evolve(cmd, args=attrs.evolve(args, seqset=new))
    key = getattr(args, "key", None)
    if isinstance(key, SearchKey) and uses_saved(key):
        seqs = _seqs(uids, saved)
        new_key = _key(key, as_seqset([uids[q - 1] for q in seqs]), as_seqset(seqs))
        return attrs.evolve(cmd, args=attrs.evolve(args, key=new_key))
    return cmd


def to_save(opts: tuple[str, ...], results: list[int]) -> list[int]:
    """What SEARCH RETURN (SAVE ...) saves (RFC 5182 §2.4): with MIN and/or MAX but
    neither ALL nor COUNT, only the minimum and/or maximum; otherwise every match."""
    if results and ("MIN" in opts or "MAX" in opts) and "ALL" not in opts and "COUNT" not in opts:
        picked = []
        if "MIN" in opts:
            picked.append(min(results))
        if "MAX" in opts:
            picked.append(max(results))
        return picked
    return list(results)
