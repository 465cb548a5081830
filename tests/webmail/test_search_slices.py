"""The webmail search on the reactor (mxd.webmail.messages.search_messages): the same
matches as the thread-batched scan it replaced, on a generated mailbox; work slices that
give the reactor back; header-only terms that never open a whole message."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mxd.imap.search import Candidate, matches
from mxd.imap.values import SearchKey
from mxd.store.interfaces import Delivery, MessageInfo, MessageProps
from mxd.store.testing import MemoryStore
from mxd.webmail.messages import load_header, load_message, search_mailbox, search_messages
from mxd.webmail.search import search_key

NAMES = ["Ann Lee <ann@example.org>", "=?utf-8?q?Ren=C3=A9e_Dupont?= <renee@example.fr>",
         "bob@remote.example", '"Carol, Finance" <carol@corp.example>',
         "<dave (work) @ (dept) corp.example>", "=?iso-8859-1?b?SvxyZ2Vu?= <juergen@x.de>"]
SUBJECTS = ["budget 2027", "Re: budget 2027", "invoice 42", "=?utf-8?q?caf=C3=A9_menu?=",
            "lunch", "", "Fwd: Needle in a haystack", "status"]
WORDS = ["needle", "hay", "invoice", "café", "budget", "straw", "Renée", "lunch"]
QUERIES = ["needle", "from:ann", "from:example.org", "from:renée", "from:dave@corp.example",
           "from:Jürgen", "to:bob", "cc:carol", "subject:budget", 'subject:"budget 2027"',
           "subject:café", "is:unseen", "is:flagged needle", "body:invoice", "invoice",
           "from:ann is:seen invoice", "is:answered", "nothing-matches", "café", "RENÉE",
           "to:example", "body:straw is:unflagged", "subject:re:"]


def generated(rng: random.Random, i: int) -> bytes:
    """One message of the generated mailbox: varied headers, encodings and structure."""
    frm, to, cc = rng.choice(NAMES), rng.choice(NAMES), rng.choice(NAMES)
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12)))
    head = (f"From: {frm}\r\nTo: {to}\r\n" + (f"Cc: {cc}\r\n" if rng.random() < 0.4 else "")
            + f"Subject: {rng.choice(SUBJECTS)}\r\nDate: Sat, 05 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{i}@gen.example>\r\nMIME-Version: 1.0\r\n")
    kind = rng.randrange(3)
    if kind == 0:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + words + "\r\n").encode()
    if kind == 1:
        import base64
        b64 = base64.encodebytes(words.encode()).decode().replace("\n", "\r\n")
        return (head + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n" + b64).encode()
    return (head + 'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
            "quoted-printable\r\n\r\n" + words.replace("é", "=C3=A9") + "\r\n--b\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n<p>" + words + "</p>\r\n"
            "--b--\r\n").encode()


def mailbox(count: int, seed: int = 7) -> tuple[MemoryStore, list[MessageInfo]]:
    """A MemoryStore with ``count`` generated messages; its messages newest first."""
    rng = random.Random(seed)
    store = MemoryStore()
    acct = store.add_account("gen@example.test", "{}", ["gen@example.test"]).result
    flag_sets = [frozenset(), frozenset({"\\Seen"}), frozenset({"\\Seen", "\\Flagged"}),
                 frozenset({"\\Answered", "\\Seen"}), frozenset({"\\Flagged"})]
    for i in range(count):
        w = store.new_blob()
        w.write(generated(rng, i))
        store.deliver(w, [Delivery(acct.id, "INBOX", rng.choice(flag_sets))], MessageProps())
    box = store.get_mailbox(acct.id, "INBOX").result
    msgs: list[MessageInfo] = store.list_messages(box.id).result
    msgs.reverse()
    return store, msgs


def old_hits(store: Any, key: SearchKey, msgs: list[MessageInfo], now: datetime,
             want: int) -> list[MessageInfo]:
    """The search as it was: the IMAP evaluator over batches of 200 (in a thread), each
    message a Candidate numbered within its batch, stopping after the batch that
    brought the hits to ``want``."""
    hits: list[MessageInfo] = []
    for start in range(0, len(msgs), 200):
        batch = msgs[start:start + 200]
        for i, m in enumerate(batch):
            c = Candidate(i + 1, m, len(batch), m.uid,
                          lambda m=m: load_header(store, m),  # type: ignore[misc]
                          lambda m=m: load_message(store, m), now)  # type: ignore[misc]
            if matches(key, c):
                hits.append(m)
        if len(hits) >= want:
            break
    return hits


def run(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "did not finish"
    return box[0]


def context(store: Any, clock: Any, work_slice: float = 0.004) -> Any:
    return SimpleNamespace(store=store, clock=clock, work_slice=work_slice)


@pytest.fixture(scope="module")
def generated_box() -> tuple[MemoryStore, list[MessageInfo]]:
    return mailbox(300)


def old_pages(store: Any, key: SearchKey, msgs: list[MessageInfo], now: datetime,
              want: int, verdicts: list[bool]) -> list[MessageInfo]:
    """``old_hits`` from verdicts computed once (by the same batched evaluation)."""
    hits: list[MessageInfo] = []
    for start in range(0, len(msgs), 200):
        hits += [m for m, v in zip(msgs[start:start + 200], verdicts[start:start + 200],
                                   strict=True) if v]
        if len(hits) >= want:
            break
    return hits


@pytest.mark.parametrize("query", QUERIES)
def test_same_pages_as_the_batched_scan(
        query: str, generated_box: tuple[MemoryStore, list[MessageInfo]]) -> None:
    """For each query and page (3 and 50 a page: the first ones and the last ones), the
    page shown and whether there is a next one are what the thread-batched scan gave on
    a generated 300-message mailbox (RFC 2047 names, base64 and quoted-printable bodies,
    multipart, flags)."""
    store, msgs = generated_box
    key = search_key(query)
    assert key is not None
    clock = Clock()
    clock.advance(1_800_000_000)
    now = datetime.fromtimestamp(clock.seconds(), UTC)
    every = old_hits(store, key, msgs, now, len(msgs) + 1)
    ids = {m.uid for m in every}
    verdicts = [m.uid in ids for m in msgs]
    for size in (3, 50):
        last = len(every) // size
        for page in sorted({0, 1, 2, last - 1, last, last + 1} - {-1}):
            want = (page + 1) * size + 1
            old = old_pages(store, key, msgs, now, want, verdicts)
            new = run(Deferred.fromCoroutine(search_messages(context(store, clock), key,
                                                             msgs, want)))
            assert [m.uid for m in new[page * size:(page + 1) * size]] == \
                [m.uid for m in old[page * size:(page + 1) * size]], (query, size, page)
            assert (len(new) >= want) == (len(old) >= want), (query, size, page)


def test_the_generated_mailbox_exercises_the_queries(
        generated_box: tuple[MemoryStore, list[MessageInfo]]) -> None:
    """The comparison above is not vacuous: most queries match some messages, none all."""
    store, msgs = generated_box
    now = datetime.now(UTC)
    counts = {q: len(old_hits(store, search_key(q), msgs, now, 301))  # type: ignore[arg-type]
              for q in QUERIES}
    assert counts["nothing-matches"] == 0
    assert sum(1 for n in counts.values() if 0 < n < 300) >= len(QUERIES) - 3, counts


class Ticking:
    """A clock on which each reading takes a millisecond; calls wait in ``pending``."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.pending: list[Callable[[], object]] = []

    def seconds(self) -> float:
        self.now += 0.001
        return self.now

    def callLater(self, delay: float, f: Callable[..., object], *a: Any, **kw: Any) -> Any:
        self.pending.append(lambda: f(*a, **kw))
        return SimpleNamespace(cancel=lambda: None)


def test_search_gives_the_reactor_back_between_slices(
        generated_box: tuple[MemoryStore, list[MessageInfo]]) -> None:
    """A long search yields to the reactor after each work slice (4 ms: a few messages
    on a clock that advances 1 ms a reading) and finishes with the same hits."""
    store, msgs = generated_box
    key = search_key("needle")
    assert key is not None
    clock = Ticking()
    d = Deferred.fromCoroutine(search_messages(context(store, clock), key, msgs, 10_000))
    yields = 0
    while not d.called:
        assert clock.pending, "the search waits for nothing"
        clock.pending.pop(0)()
        yields += 1
        assert yields < 1000
    hits = run(d)
    assert len(msgs) // 5 <= yields <= len(msgs) // 3
    assert [m.uid for m in hits] == [
        m.uid for m in old_hits(store, key, msgs, datetime.now(UTC), 10_000)]


@pytest.mark.parametrize("query", ["from:ann", "subject:budget", "to:bob cc:carol",
                                   "is:unseen from:renée"])
def test_header_terms_read_only_header_blocks(query: str) -> None:
    """from:/to:/cc:/subject: (and is:) read each message's first octets, never open its
    file for the whole message."""
    store, msgs = mailbox(60)
    opened: list[str] = []
    heads: list[str] = []
    orig_head: Callable[[str, int], bytes] = store.read_blob_head

    def open_blob(blob_id: str) -> Any:
        opened.append(blob_id)
        raise AssertionError("opened a whole message")

    def read_head(blob_id: str, n: int) -> bytes:
        heads.append(blob_id)
        return orig_head(blob_id, n)

    store.open_blob = open_blob  # type: ignore[method-assign]
    store.read_blob_head = read_head  # type: ignore[method-assign]
    key = search_key(query)
    assert key is not None
    hits = run(Deferred.fromCoroutine(search_messages(context(store, Clock()), key, msgs, 101)))
    assert hits and opened == [] and heads


def test_flag_terms_read_nothing() -> None:
    """is:unseen reads no message at all: the flags are in the rows."""
    store, msgs = mailbox(50)

    def no(*a: Any) -> Any:
        raise AssertionError("read a message")

    store.open_blob = no  # type: ignore[method-assign]
    store.read_blob_head = no  # type: ignore[method-assign]
    key = search_key("is:unseen")
    assert key is not None
    hits = run(Deferred.fromCoroutine(search_messages(context(store, Clock()), key, msgs, 51)))
    assert [m.uid for m in hits] == [m.uid for m in msgs if "\\Seen" not in m.flags]




@pytest.mark.parametrize("query", ["needle", "from:ann", "is:flagged", "nothing-matches"])
def test_search_of_a_mailbox_reads_rows_a_chunk_at_a_time(
        query: str, generated_box: tuple[MemoryStore, list[MessageInfo]]) -> None:
    """search_mailbox gives the hits search_messages gives over the whole mailbox
    (newest first), for pages at the start and the end, reading rows from the store in
    chunks (never list_messages) and no chunk past the one that completed the page."""
    store, msgs = generated_box
    key = search_key(query)
    assert key is not None
    box_id = store.get_mailbox(store.get_account("gen@example.test").result.id,
                               "INBOX").result.id
    chunks: list[tuple[int, int | None]] = []
    newest = store.newest_messages

    def counted(mailbox_id: int, limit: int, *, offset: int = 0,
                before_uid: int | None = None) -> Any:
        chunks.append((limit, before_uid))
        return newest(mailbox_id, limit, offset=offset, before_uid=before_uid)

    def no_list(*a: Any, **kw: Any) -> Any:
        raise AssertionError("loaded the whole mailbox")

    store.newest_messages = counted  # type: ignore[method-assign]
    store.list_messages = no_list  # type: ignore[method-assign]
    try:
        everything = run(Deferred.fromCoroutine(search_messages(
            context(store, Clock()), key, msgs, len(msgs) + 1)))
        for want in (1, 5, len(everything), len(everything) + 1):
            chunks.clear()
            got = run(Deferred.fromCoroutine(search_mailbox(
                context(store, Clock()), key, box_id, want, chunk=40)))
            assert [m.uid for m in got] == [m.uid for m in everything[:want]], (query, want)
            if got:
                # The last chunk read is the one holding the last hit (or the end).
                last_uid = got[-1].uid
                assert all(b is None or b > last_uid for _, b in chunks[:-1])
            assert len(chunks) <= len(msgs) // 40 + 2
    finally:
        del store.newest_messages
        del store.list_messages
