"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256): the pure module, the
parser and the session."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap.errors import ParseError
from mxd.imap.message import parse_headers
from mxd.imap.parser import parse_bytes
from mxd.imap.sort import base_subject_reply
from mxd.imap.thread import Node, ThreadData, ordered_subject, references, render, thread_data
from tests.imap.helpers import Conn, make_store


def _msg(seq: int, sent: float = 0.0, subject: str = "", mid: str | None = None,
         refs: tuple[str, ...] = (), reply: bool = False) -> ThreadData:
    return ThreadData(seq, seq * 100, sent or float(seq), subject, reply, mid, refs)


def _tree(spec: object) -> Node:
    """(seq, [children...]) or None-rooted dummy: (None, [...])."""
    assert isinstance(spec, tuple)
    n = Node(_msg(spec[0]) if spec[0] is not None else None)
    for c in spec[1]:
        child = _tree(c)
        child.parent = n
        n.children.append(child)
    return n


def _run(gen_fn: object, msgs: list[ThreadData]) -> bytes:
    out: list[Node] = []
    for _ in gen_fn(msgs, out, chunk=2):  # type: ignore[operator]
        pass
    return render(out, uid=False)


def test_render_rfc5256_example_byte_exact() -> None:
    """RFC 5256 §4: the example tree renders as "(2)(3 6 (4 23)(44 7 96))", and a
    dummy parent as "((3)(5))"."""
    roots = [_tree((2, [])), _tree((3, [(6, [(4, [(23, [])]), (44, [(7, [(96, [])])])])]))]
    assert render(roots, uid=False) == b"THREAD (2)(3 6 (4 23)(44 7 96))"
    assert render([_tree((None, [(3, []), (5, [])]))], uid=False) == b"THREAD ((3)(5))"
    assert render([], uid=False) == b"THREAD"
    assert render([_tree((1, [(2, [])]))], uid=True) == b"THREAD (100 200)"


@pytest.mark.parametrize("subject,base,reply", [
    ("hello", "hello", False), ("Re: hello", "hello", True), ("hello (fwd)", "hello", True),
    ("[fwd: hello]", "hello", True), ("[list] hello", "hello", False),
    ("Re[2]: hello", "hello", True), ("  hello ", "hello", False),
])
def test_reply_or_forward(subject: str, base: str, reply: bool) -> None:
    """RFC 5256 §2.1: a subj-refwd, a "(fwd)" trailer or a "[fwd:" wrapper makes the
    message a reply or forward; list tags and whitespace do not."""
    assert base_subject_reply(subject) == (base, reply)


def test_thread_data_from_headers() -> None:
    """Message-ID, References (else the first In-Reply-To id) and the base subject."""
    h = parse_headers(b"Message-ID: <m1@x>\r\nIn-Reply-To: <p@x> <q@x>\r\nSubject: Re: Hi\r\n\r\n")
    d = thread_data(1, 1, 0.0, h)
    assert d.message_id == "m1@x" and d.references == ("p@x",) and d.subject == "HI" and d.reply
    h = parse_headers(b"Message-ID: junk\r\nReferences: <a@x> bad <b@x>\r\nIn-Reply-To: <p@x>\r\n\r\n")
    d = thread_data(2, 2, 0.0, h)
    assert d.message_id is None and d.references == ("a@x", "b@x") and d.subject == ""


def test_ordered_subject() -> None:
    """RFC 5256 §3 ORDEREDSUBJECT: grouped by base subject, the first by date is the
    root and the rest its children; threads by their first message's date."""
    msgs = [_msg(1, 5, "B"), _msg(2, 1, "A"), _msg(3, 3, "B"), _msg(4, 2, "C"), _msg(5, 4, "A"),
            _msg(6, 9, "B")]
    assert _run(ordered_subject, msgs) == b"THREAD (2 5)(4)(3 (1)(6))"


def test_references_links_prunes_and_merges() -> None:
    """RFC 5256 §3 REFERENCES: parents from References, a missing parent becomes a
    dummy (pruned when it has one child), and root threads with one base subject are
    merged: a reply under the original, two originals under a dummy."""
    msgs = [
        _msg(1, 1, "HELLO", "a@x"),
        _msg(2, 2, "HELLO", "b@x", ("a@x",), reply=True),
        _msg(3, 3, "HELLO", "c@x", ("a@x", "b@x"), reply=True),
        _msg(4, 4, "TOPIC", "d@x", ("gone@x",)),  # dummy parent with one child: promoted
        _msg(5, 5, "HELLO", "e@x", (), reply=True),  # merged under 1 by subject
        _msg(6, 6, "OTHER", "f@x", ("lost@x",)),
        _msg(7, 7, "ELSE", "g@x", ("lost@x",)),  # dummy root with two children stays
        _msg(8, 8, "TOPIC", "h@x"),  # same subject as 4, neither a reply: a new dummy
    ]
    assert _run(references, msgs) == b"THREAD (1 (2 3)(5))((4)(8))((6)(7))"


def test_references_loops_and_duplicates() -> None:
    """References that would make a loop are not linked; a repeated Message-ID gets a
    container of its own."""
    msgs = [_msg(1, 1, "", "a@x", ("b@x",)), _msg(2, 2, "", "b@x", ("a@x",)),
            _msg(3, 3, "", "a@x")]
    out = _run(references, msgs)
    assert sorted(re.findall(rb"\d+", out)) == [b"1", b"2", b"3"]
    assert out == b"THREAD (2 1)(3)"


def test_long_chain_no_recursion() -> None:
    """A reply chain far deeper than Python's recursion limit threads and renders."""
    n = 5000
    msgs = [_msg(i, float(i), "", f"{i}@x", (f"{i - 1}@x",) if i > 1 else ()) for i in range(1, n + 1)]
    out = _run(references, msgs)
    assert out == b"THREAD (" + b" ".join(b"%d" % i for i in range(1, n + 1)) + b")"


_ids = st.sampled_from([f"{c}@x" for c in "abcdefg"])


@given(st.lists(st.tuples(st.none() | _ids, st.lists(_ids, max_size=4), st.sampled_from(["", "S", "T"]),
                          st.booleans(), st.integers(0, 3)), max_size=25),
       st.sampled_from([references, ordered_subject]))
@settings(max_examples=300)
def test_every_message_once(rows: list[tuple[str | None, list[str], str, bool, int]], alg: object) -> None:
    """Whatever the headers, every message appears exactly once and the list is well
    formed (balanced parentheses, no empty list)."""
    msgs = [ThreadData(i + 1, i + 1, float(d), s, r, mid, tuple(refs))
            for i, (mid, refs, s, r, d) in enumerate(rows)]
    out = _run(alg, msgs)
    nums = sorted(int(x) for x in re.findall(rb"\d+", out))
    assert nums == list(range(1, len(msgs) + 1))
    depth = 0
    for ch in out[len(b"THREAD"):]:
        depth += {ord("("): 1, ord(")"): -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0 and b"()" not in out


def test_parse_thread() -> None:
    """RFC 5256 §3 examples parse; unknown algorithms and missing keys do not."""
    c = parse_bytes(b"A283 THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000")
    assert c.args.algorithm == "ORDEREDSUBJECT" and c.args.charset == "UTF-8"
    c = parse_bytes(b"A285 UID THREAD references UTF-8 SINCE 5-MAR-2000")
    assert c.name == "UID THREAD" and c.args.algorithm == "REFERENCES"
    for bad in (b"a THREAD REFSX UTF-8 ALL", b"a THREAD REFERENCES UTF-8", b"a THREAD REFERENCES"):
        with pytest.raises(ParseError):
            parse_bytes(bad)


@given(st.binary(max_size=60))
@settings(max_examples=300)
def test_parse_thread_fuzz(tail: bytes) -> None:
    """Any bytes after "THREAD " either parse or raise ParseError."""
    try:
        parse_bytes(b"a THREAD " + tail.replace(b"\r", b"").replace(b"\n", b""))
    except ParseError:
        pass


MSGS = [
    b"Message-ID: <1@x>\r\nSubject: hello\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n1",
    b"Message-ID: <2@x>\r\nReferences: <1@x>\r\nSubject: Re: hello\r\n"
    b"Date: Tue, 02 Jan 2024 00:00:00 +0000\r\n\r\n2",
    b"Message-ID: <3@x>\r\nSubject: other\r\nDate: Mon, 01 Jan 2024 12:00:00 +0000\r\n\r\n3",
    b"Message-ID: <4@x>\r\nIn-Reply-To: <1@x>\r\nSubject: Re: hello\r\n"
    b"Date: Wed, 03 Jan 2024 00:00:00 +0000\r\n\r\n4",
]


def test_thread_session_byte_exact() -> None:
    """THREAD and UID THREAD answer RFC 5256 §4 lines; the RFC's empty-result example
    answers "* THREAD"; capabilities name both algorithms."""
    store, acc = make_store()
    for m in MSGS:
        store.put(acc, "INBOX", m, when=datetime(2024, 2, 1, tzinfo=UTC))
    c = Conn(store)
    c.login()
    c.select()
    assert b" THREAD=ORDEREDSUBJECT THREAD=REFERENCES" in c.cmd("a CAPABILITY")
    assert c.cmd("A285 THREAD REFERENCES UTF-8 ALL") == (
        b"* THREAD (1 (2)(4))(3)\r\nA285 OK THREAD completed\r\n")
    assert c.cmd("A283 THREAD ORDEREDSUBJECT UTF-8 ALL") == (
        b"* THREAD (1 (2)(4))(3)\r\nA283 OK THREAD completed\r\n")
    assert c.cmd('A284 THREAD ORDEREDSUBJECT US-ASCII TEXT "gewp"') == (
        b"* THREAD\r\nA284 OK THREAD completed\r\n")
    assert c.cmd("b UID THREAD REFERENCES UTF-8 2:4").startswith(b"* THREAD (3)((2)(4))\r\n")
    assert c.cmd("d THREAD REFERENCES KOI8-R ALL").startswith(b"d NO [BADCHARSET")


def test_thread_refs() -> None:
    """THREAD=REFS (Dovecot's): threads ordered by their newest message, so the thread
    with the latest reply comes last; no subject merging (REFERENCES gathers the two
    "hello" threads of 5 and 6 under a dummy, REFS leaves them apart)."""
    extra = [b"Message-ID: <5@x>\r\nSubject: topic\r\nDate: Thu, 04 Jan 2024 00:00:00 +0000\r\n\r\n5",
             b"Message-ID: <6@x>\r\nSubject: Re: topic\r\n"
             b"Date: Fri, 05 Jan 2024 00:00:00 +0000\r\n\r\n6"]
    store, acc = make_store()
    for m in MSGS + extra:
        store.put(acc, "INBOX", m, when=datetime(2024, 2, 1, tzinfo=UTC))
    c = Conn(store)
    c.login()
    c.select()
    assert b" THREAD=REFS" in c.cmd("a CAPABILITY")
    assert c.cmd("a THREAD REFERENCES UTF-8 ALL") == (
        b"* THREAD (1 (2)(4))(3)(5 6)\r\na OK THREAD completed\r\n")
    assert c.cmd("a THREAD REFS UTF-8 ALL") == (
        b"* THREAD (3)(1 (2)(4))(5)(6)\r\na OK THREAD completed\r\n")
