"""CONTEXT=SEARCH and CONTEXT=SORT updates (RFC 5267 §4): SEARCH/SORT RETURN (UPDATE)
keep a result that the server updates with ``ESEARCH (TAG "t") ADDTO/REMOVEFROM``
notifications as messages arrive, change or go, until CANCELUPDATE or the mailbox is
closed.

The result is kept as UIDs (in sort order for SORT, with each member's sort key), so it
follows expunges without work.  When the session reports changes (``sync``), only the
messages that arrived or changed are tested against the search program again.  The pure
part (``diff_search``, ``diff_sort``) computes the notifications from the membership.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from mxd.imap import esearch
from mxd.imap.sort import key_function
from mxd.imap.values import SearchKey, SeqSet

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

# At most this many searches of one session are updated (RFC 5267 §4.2 lets a server
# refuse more with NOUPDATE); each costs a re-test of every arriving or changed message.
MAX_CONTEXTS = 8

# Keys whose answer changes without the message changing (sequence numbers shift with
# expunges, \Recent and the age keys with time, $ with the next SEARCH): results that use
# them are not updated (RFC 5267 §4.2: NOUPDATE).
_UNSTABLE = frozenset({"SEQ", "RECENT", "NEW", "OLD", "OLDER", "YOUNGER"})


def stable(key: SearchKey) -> bool:
    if key.name in _UNSTABLE:
        return False
    for a in key.args:
        if isinstance(a, SearchKey) and not stable(a):
            return False
        if isinstance(a, SeqSet) and a.saved:
            return False
    return True


@attrs.define
class Context:
    """One updated search: its members as UIDs; for SORT also in sort order with their
    sort keys (``uids``/``keys`` parallel, ``key_of`` by UID), so that a member's
    position is found by bisection, not by a walk over the result."""

    tag: str
    is_uid: bool
    key: SearchKey
    criteria: tuple[tuple[str, bool], ...] | None
    members: set[int]
    uids: list[int] = attrs.field(factory=list)
    keys: list[tuple[Any, ...]] = attrs.field(factory=list)
    key_of: dict[int, tuple[Any, ...]] = attrs.field(factory=dict)

    @classmethod
    def sorted(cls, tag: str, is_uid: bool, key: SearchKey,
               criteria: tuple[tuple[str, bool], ...],
               pairs: Sequence[tuple[tuple[Any, ...], int]]) -> Context:
        """A SORT context from (sort key, UID) pairs in sort order."""
        return cls(tag, is_uid, key, criteria, {u for _, u in pairs}, [u for _, u in pairs],
                   [k for k, _ in pairs], {u: k for k, u in pairs})


# -- pure: notifications from membership changes ---------------------------------------------

def diff_search(members: set[int], removed: Iterable[int],
                verdicts: dict[int, bool]) -> tuple[list[int], list[int]]:
    """(removed, added) UIDs of an unsorted result after expunges (``removed``) and
    fresh verdicts on arrived or changed messages; ``members`` is updated."""
    gone = sorted(u for u in set(removed) if u in members)
    members.difference_update(gone)
    added, dropped = [], []
    for uid, hit in sorted(verdicts.items()):
        if hit and uid not in members:
            members.add(uid)
            added.append(uid)
        elif not hit and uid in members:
            members.discard(uid)
            dropped.append(uid)
    return sorted(gone + dropped), added


def diff_sort(ctx: Context, removed: Iterable[int],
              added: Sequence[tuple[tuple[Any, ...], int]]
              ) -> tuple[list[tuple[int, list[int]]], list[tuple[int, list[int]]]]:
    """Apply removals and additions ((sort key, UID) pairs) to a sorted context;
    returns the REMOVEFROM and ADDTO items as (1-based position, UIDs in order).

    Removals are listed from the last position to the first, so each position holds
    when the client applies it; additions from the first final position up, runs of
    neighbours together (RFC 5267 §4.3)."""
    gone = sorted(((ctx.key_of[u], u) for u in set(removed) if u in ctx.members),
                  reverse=True)
    rem: list[tuple[int, list[int]]] = []
    for k, uid in gone:
        i = bisect.bisect_left(ctx.keys, k)
        del ctx.keys[i]
        del ctx.uids[i]
        del ctx.key_of[uid]
        ctx.members.discard(uid)
        rem.append((i + 1, [uid]))
    placed: list[tuple[int, int]] = []
    for k, uid in sorted(added):
        if uid in ctx.members:
            continue
        i = bisect.bisect_left(ctx.keys, k)
        ctx.keys.insert(i, k)
        ctx.uids.insert(i, uid)
        ctx.key_of[uid] = k
        ctx.members.add(uid)
        placed.append((i, uid))
    # Inserted in ascending key order, so each later one lands after the earlier ones:
    # the indexes recorded are final.
    add: list[tuple[int, list[int]]] = []
    for i, uid in placed:
        if add and add[-1][0] + len(add[-1][1]) == i + 1:
            add[-1][1].append(uid)
        else:
            add.append((i + 1, [uid]))
    return rem, add


# -- the session side ----------------------------------------------------------------------------

def start(s: IMAPSession, tag: str, is_uid: bool, key: SearchKey,
          criteria: tuple[tuple[str, bool], ...] | None, uids: list[int],
          partial: tuple[int, int] | None,
          keys: Sequence[tuple[Any, ...]] | None = None) -> None:
    """Keep the result of a SEARCH/SORT RETURN (UPDATE), or say why not (RFC 5267 §4.2:
    an untagged ``NO [NOUPDATE "tag"]``, and the result is answered as usual)."""
    contexts: dict[str, Context] = s.contexts
    why = None
    if partial is not None:
        why = "Updates of a PARTIAL result are not supported"
    elif not stable(key):
        why = "The search uses keys that change by themselves"
    elif tag in contexts:
        why = "A search with this tag is already updated"
    elif len(contexts) >= MAX_CONTEXTS:
        why = f"At most {MAX_CONTEXTS} searches are updated"
    if why is not None:
        s.untagged(b"NO [NOUPDATE " + esearch.quote(tag) + b"] " + why.encode())
        return
    if criteria is None:
        contexts[tag] = Context(tag, is_uid, key, None, set(uids))
    else:
        contexts[tag] = Context.sorted(tag, is_uid, key, criteria,
                                       list(zip(keys or [], uids, strict=True)))


def cancel(s: IMAPSession, tag: str) -> None:
    s.contexts.pop(tag, None)


def removed(s: IMAPSession, expunged: Sequence[tuple[int, int]]) -> None:
    """REMOVEFROM for expunged members, sent before the EXPUNGE/VANISHED responses while
    their sequence numbers still hold (``expunged``: (seq, UID), as reported)."""
    if not s.contexts or not expunged:
        return
    seq_of = {uid: seq for seq, uid in expunged}
    for ctx in list(s.contexts.values()):
        if ctx.criteria is None:
            gone, _ = diff_search(ctx.members, seq_of, {})
            if gone:
                nums = gone if ctx.is_uid else [seq_of[u] for u in gone]
                for line in esearch.update_lines(ctx.tag, ctx.is_uid, [(0, nums)], []):
                    s.untagged(line)
        else:
            rem, _ = diff_sort(ctx, seq_of, [])
            items = [(pos, us if ctx.is_uid else [seq_of[u] for u in us]) for pos, us in rem]
            for line in esearch.update_lines(ctx.tag, ctx.is_uid, items, []):
                s.untagged(line)


async def touched(s: IMAPSession, uids: Iterable[int]) -> None:
    """Test arrived or changed messages against each updated search and send ADDTO and
    REMOVEFROM for the ones that joined or left its result."""
    view = s.view
    todo = sorted(set(uids))
    if not s.contexts or view is None or not todo:
        return
    from mxd.imap.searchcmd import selected_matches
    from mxd.imap.sortcmd import sort_item

    now = datetime.fromtimestamp(s.clock.seconds(), UTC)
    contexts: list[Context] = list(s.contexts.values())
    for ctx in contexts:
        try:
            hits = {uid for _, uid, _ in await selected_matches(s, ctx.key, now, todo)}
        except ValueError:
            continue
        if s.view is not view or s.contexts.get(ctx.tag) is not ctx:
            return
        verdicts = {u: u in hits for u in todo if view.seq_of(u) is not None}
        if ctx.criteria is None:
            gone, added = diff_search(ctx.members, (), verdicts)
            rem_items = [(0, gone)] if gone else []
            add_items = [(0, added)] if added else []
        else:
            key = key_function(ctx.criteria)
            leaving = [u for u, hit in verdicts.items() if not hit]
            joining = []
            for u, hit in verdicts.items():
                m = view.msgs.get(u)
                if hit and m is not None and u not in ctx.members:
                    joining.append((key(sort_item(s, m, u, u)), u))
            rem_items, add_items = diff_sort(ctx, leaving, joining)
        if not ctx.is_uid:
            def seqs(us: list[int]) -> list[int]:
                return [q for u in us if (q := view.seq_of(u)) is not None]
            rem_items = [(p, seqs(us)) for p, us in rem_items]
            add_items = [(p, seqs(us)) for p, us in add_items]
        for line in esearch.update_lines(ctx.tag, ctx.is_uid, rem_items, add_items):
            s.untagged(line)
