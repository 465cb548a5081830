"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §3-4), and Dovecot's THREAD=REFS.  Pure: the adapter
(``mxd.imap.threadcmd``) hands in per-message ``ThreadData``; base subjects come from
``mxd.imap.sort`` (RFC 5256 §2.1, shared with SORT).

Trees are walked without recursion so that a long reply chain cannot exhaust the
Python stack.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from email.message import Message

import attrs

from mxd.imap.message import raw_all, unfold
from mxd.imap.sort import base_subject_reply, casemap, chunked_sort, header_text

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES", "REFS")

# RFC 5322 §3.6.4 msg-id = "<" id-left "@" id-right ">"; anything else is not a valid
# Message ID for threading (RFC 5256 §2.2 / REFERENCES step 1).
_MSGID = re.compile(r"<\s*([^<>\s@]+@[^<>\s]+?)\s*>")


@attrs.frozen
class ThreadData:
    """What THREAD reads of one message."""

    seq: int
    uid: int
    sent: float  # RFC 5256 §2.2 sent date, UTC POSIX seconds
    subject: str  # base subject, casemapped
    reply: bool  # the subject was a reply or forward (RFC 5256 §2.1)
    message_id: str | None
    references: tuple[str, ...]  # References, else the first In-Reply-To id


def msg_ids(value: str) -> list[str]:
    return _MSGID.findall(unfold(value))


def thread_data(seq: int, uid: int, sent: float, h: Message) -> ThreadData:
    subj = raw_all(h, "Subject")
    base, reply = base_subject_reply(header_text(subj[0])) if subj else ("", False)
    mid = next((i for v in raw_all(h, "Message-ID") for i in msg_ids(v)), None)
    refs = [i for v in raw_all(h, "References") for i in msg_ids(v)]
    if not refs:
        # REFERENCES step 1A: no valid References, so the first valid In-Reply-To id.
        irt = [i for v in raw_all(h, "In-Reply-To") for i in msg_ids(v)]
        refs = irt[:1]
    return ThreadData(seq, uid, sent, casemap(base), reply, mid, tuple(refs))


class Node:
    """A thread tree node; ``msg`` is None for a dummy (a referenced message that is
    not among the searched ones, or a subject-merge parent)."""

    __slots__ = ("msg", "parent", "children")

    def __init__(self, msg: ThreadData | None = None) -> None:
        self.msg = msg
        self.parent: Node | None = None
        self.children: list[Node] = []

    def is_descendant_of(self, other: Node) -> bool:
        n: Node | None = self
        while n is not None:
            if n is other:
                return True
            n = n.parent
        return False


def _loops(parent: Node, child: Node) -> bool:
    """Would making ``child`` a child of ``parent`` make a loop?  Only when ``parent`` is
    ``child`` or below it; a childless node has nothing below it (the common case,
    checked first so a long chain does not cost a walk per message)."""
    return parent is child or (bool(child.children) and parent.is_descendant_of(child))


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _first_msg(n: Node) -> ThreadData:
    while n.msg is None:
        n = n.children[0]
    return n.msg


def _date_key(n: Node) -> tuple[float, int]:
    # RFC 5256 steps 5 and 7: by sent date, a dummy by its first child's; equal dates
    # keep mailbox order.
    m = _first_msg(n)
    return (m.sent, m.seq)


def _sort_tree(roots: list[Node], chunk: int) -> Iterator[None]:
    """Step 7: sort every set of siblings, deepest first (a dummy's date is its first
    child's, so children are sorted before their parents)."""
    order: list[Node] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
        if len(order) % chunk == 0:
            yield None
    for i, n in enumerate(reversed(order)):
        if len(n.children) > 1:  # most messages have no reply: nothing to sort
            n.children.sort(key=_date_key)
        if i % chunk == 0:
            yield None
    roots.sort(key=_date_key)


def references(msgs: Iterable[ThreadData], out: list[Node], chunk: int = 2000) -> Iterator[None]:
    """RFC 5256 §3 THREAD=REFERENCES, steps 1-7: the thread roots in order into
    ``out``, yielding between units of about ``chunk`` messages."""
    roots: list[Node] = []
    yield from _link_references(msgs, roots, chunk)
    roots = _prune(roots)
    yield None
    yield from _sort_tree(roots, chunk)  # step 5 (all levels: step 7 sorts again after merging)
    roots = _merge_subjects(roots)
    yield None
    yield from _sort_tree(roots, chunk)  # step 7
    out.extend(roots)


def refs(msgs: Iterable[ThreadData], out: list[Node], chunk: int = 2000) -> Iterator[None]:
    """THREAD=REFS, Dovecot's variant of REFERENCES (no RFC; defined by Dovecot 2.3's
    index-thread-finish.c, which the differential test compares with): the same links
    (steps 1-3), dummies pruned (a root dummy with one child keeps its place in the
    order, as a dummy), no subject merging (steps 5-6), siblings by sent date, and
    threads ordered by their newest message's sent date (ties: the root's UID, a dummy
    root first), so the thread with the latest reply comes last."""
    roots: list[Node] = []
    yield from _link_references(msgs, roots, chunk)
    roots = _prune(roots, keep_root_dummies=True)
    yield None
    yield from _sort_tree(roots, chunk)
    newest: dict[int, float] = {}
    for k, r in enumerate(roots, 1):
        if k % chunk == 0:
            yield None
        top = float("-inf")
        stack = [r]
        while stack:
            n = stack.pop()
            if n.msg is not None and n.msg.sent > top:
                top = n.msg.sent
            stack.extend(n.children)
        newest[id(r)] = top
    roots.sort(key=lambda r: (newest[id(r)], r.msg.uid if r.msg is not None else 0))
    # A root dummy with one child is written as that child (Dovecot writes no dummy
    # level around it); it kept its place in the order above.
    for r in roots:
        if r.msg is None and len(r.children) == 1:
            r = r.children[0]
            r.parent = None
        out.append(r)


def _link_references(msgs: Iterable[ThreadData], roots: list[Node],
                     chunk: int) -> Iterator[None]:
    """REFERENCES steps 1-2: link the messages by their references; the root set
    into ``roots``."""
    table: dict[str, Node] = {}
    nodes: list[Node] = []
    for k, m in enumerate(msgs, 1):
        if k % chunk == 0:
            yield None
        # Step 1B (done first so that 1A sees this message's container): a message
        # without a Message-ID, or repeating one, gets a container of its own.
        node = table.get(m.message_id) if m.message_id else None
        if node is None or node.msg is not None:
            node = Node(m)
            if m.message_id and m.message_id not in table:
                table[m.message_id] = node
        else:
            node.msg = m
        nodes.append(node)
        # Step 1A: link the References in order, parent before child, unless the child
        # already has a parent or the link would make a loop.
        if not m.references:
            _unlink(node)  # step 1C: no references, a root
            continue
        chain = []
        for r in m.references:
            c = table.get(r)
            if c is None:
                c = table[r] = Node()
            chain.append(c)
        for p, c in zip(chain, chain[1:], strict=False):
            if c.parent is None and not _loops(p, c):
                _link(p, c)
        # Step 1C: the last reference is the parent (replacing any parent found so
        # far), unless that would make a loop; no references: a root.
        if chain and not _loops(chain[-1], node):
            _link(chain[-1], node)
        elif not chain:
            _unlink(node)
    # Step 2: the root set; step 3: the id table is no longer needed.
    seen: set[int] = set()
    for n in list(table.values()) + nodes:
        if n.parent is None and id(n) not in seen:
            seen.add(id(n))
            roots.append(n)
    yield None


def _prune(roots: list[Node], keep_root_dummies: bool = False) -> list[Node]:
    """Step 4: a dummy without children goes; a dummy with children is replaced by
    them, except at the root when it has more than one child (with
    ``keep_root_dummies``, any child)."""
    holder = Node()
    for r in roots:
        holder.children.append(r)
        r.parent = holder
    stack = [holder]
    while stack:
        n = stack.pop()
        out: list[Node] = []
        work = deque(n.children)
        while work:
            c = work.popleft()
            if c.msg is None and (n is not holder or not c.children or (
                    len(c.children) == 1 and not keep_root_dummies)):
                for g in c.children:
                    g.parent = n
                work.extendleft(reversed(c.children))  # promoted children are pruned in turn
                continue
            out.append(c)
            stack.append(c)
        n.children = out
    for r in holder.children:
        r.parent = None
    return holder.children


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """Step 6: gather root threads with the same base subject."""
    def subject(n: Node) -> tuple[str, bool]:
        m = n.msg if n.msg is not None else n.children[0].msg
        return (m.subject, m.reply) if m is not None else ("", False)

    table: dict[str, Node] = {}
    for r in roots:  # 6A-C: the subject table
        s, reply = subject(r)
        if not s:
            continue
        t = table.get(s)
        if t is None or (t.msg is not None and (r.msg is None or (subject(t)[1] and not reply))):
            table[s] = r
    slots: list[Node | None] = list(roots)
    where = {id(r): i for i, r in enumerate(roots)}
    for i, r in enumerate(roots):  # 6D-E: merge
        if slots[i] is not r:
            continue  # replaced by a dummy: it is in the table already
        s, reply = subject(r)
        t = table.get(s) if s else None
        if t is None or t is r:
            continue
        slots[i] = None
        if r.msg is None and t.msg is None:
            for c in r.children:
                c.parent = t
            t.children.extend(r.children)
        elif t.msg is None or (reply and not subject(t)[1]):
            _link(t, r)
        else:
            dummy = Node()
            j = where[id(t)]
            _link(dummy, t)
            _link(dummy, r)
            table[s] = dummy
            slots[j] = dummy
            where[id(dummy)] = j
    return [n for n in slots if n is not None]


def ordered_subject(msgs: Iterable[ThreadData], out: list[Node], chunk: int = 2000) -> Iterator[None]:
    """RFC 5256 §3 THREAD=ORDEREDSUBJECT: sorted by base subject then sent date, split
    by base subject; the first message of a thread is its root, the others its
    children; threads in the order of their first message's sent date."""
    ordered: list[ThreadData] = []
    yield from chunked_sort(list(msgs), lambda m: (m.subject, m.sent, m.seq), ordered, chunk)
    roots: list[Node] = []
    for k, m in enumerate(ordered, 1):
        if k % chunk == 0:
            yield None
        if roots and roots[-1].msg is not None and roots[-1].msg.subject == m.subject:
            _link(roots[-1], Node(m))
        else:
            roots.append(Node(m))
    roots.sort(key=_date_key)
    out.extend(roots)


def render(roots: list[Node], uid: bool) -> bytes:
    """RFC 5256 §4 thread-list: "(" (thread-members / thread-nested) *thread-nested ")";
    a lone child continues its parent's member list, two or more are nested lists."""
    out: list[str] = []
    # Work items: a Node to write, or a literal string.
    for r in roots:
        stack: list[Node | str] = [")", r, "("]
        while stack:
            it = stack.pop()
            if isinstance(it, str):
                out.append(it)
                continue
            if it.msg is not None:
                out.append(str(it.msg.uid if uid else it.msg.seq))
                if len(it.children) == 1:
                    stack += [it.children[0], " "]
                    continue
                if it.children:
                    out.append(" ")
            for c in reversed(it.children):
                stack += [")", c, "("]
    return ("THREAD" + (" " if out else "") + "".join(out)).encode()
