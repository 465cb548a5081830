"""What IMAP stores with each message (mxd.imap.summary): the values round-trip, equal
what the header gives, and FETCH ENVELOPE, SORT and THREAD answer byte for byte the same
from stored values as from the files (and then open no file)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap import summary
from mxd.imap.envelope import render_envelope
from mxd.imap.message import parse_headers
from mxd.imap.messagecache import read_header
from mxd.imap.sort import SortData, header_date, sort_data
from mxd.imap.thread import ThreadData, thread_data
from tests.imap.helpers import Conn, make_store

_text = st.text(max_size=30)
_ids = st.lists(st.text(alphabet="abc@.<> \0x", min_size=1, max_size=8), max_size=3)


@settings(deadline=None)  # a loaded machine must not fail it on time
@given(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
       _text, _text, _text, _text, _text, _text, st.booleans(),
       st.one_of(st.none(), st.text(min_size=1, max_size=10)), _ids)
def test_keys_round_trip(date: float | None, subject: str, frm: str, to: str, cc: str,
                         dfrom: str, dto: str, reply: bool, mid: str | None,
                         refs: list[str]) -> None:
    """decode_keys(encode_keys(k)) == k, NUL and spaces in any field included."""
    k = (date, SortData(0, 0, 0.0, 0.0, 0, subject, frm, to, cc, dfrom, dto),
         ThreadData(0, 0, 0.0, subject, reply, mid, tuple(refs)))
    assert summary.decode_keys(summary.encode_keys(k)) == k


MESSAGES = [
    b"Date: Mon, 01 Jan 2024 10:00:00 +0100\r\nSubject: Hello\r\nFrom: Ann <ann@a.test>\r\n"
    b"To: bob@b.test\r\nMessage-ID: <1@a.test>\r\n\r\nbody",
    b"Subject: Re: hello\r\nFrom: bob@b.test\r\nIn-Reply-To: <1@a.test>\r\n"
    b"Message-ID: <2@b.test>\r\n\r\nno date",
    b"Date: bogus\r\nSubject: =?utf-8?q?=C3=84pfel?= [fwd: x]\r\nCc: \"Q, R\" <q@c.test>\r\n"
    b"References: <1@a.test> <2@b.test>\r\nMessage-ID: <3@c.test>\r\n\r\n",
    b"From: \xc3\xa9t\xc3\xa9 <e@d.test>\r\nSubject: raw \xc3\xa4 8bit\r\n\r\nx",
    b"no header at all",
]


def test_derive_equals_the_header_path() -> None:
    """derive(): the ENVELOPE as render_envelope gives it, and keys that decode to what
    the header gives."""
    for m in MESSAGES:
        values = summary.derive(lambda n, m=m: m[:n])
        header = read_header(lambda n, m=m: m[:n])
        assert values[summary.ENVELOPE] == render_envelope(header, False)
        date, sd, td = summary.decode_keys(values[summary.KEYS])
        h = parse_headers(header)
        assert date == header_date(h)
        full = sort_data(0, 0, datetime.fromtimestamp(0, UTC), 0, h)
        assert attrs.evolve(full, sent=0.0) == sd
        assert thread_data(0, 0, 0.0, h) == td


def _random_messages(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    subjects = ["Hello", "Re: hello", "Fwd: Hello", "[list] news", "Re: [list] news",
                "(no subject)", "", "Ärger", "re: RE: Hello (fwd)"]
    out = []
    for i in range(n):
        lines = [f"Subject: {rnd.choice(subjects)}"]
        if rnd.random() < 0.8:
            lines.append(f"Date: {rnd.randint(1, 28)} Feb 2024 {rnd.randint(0, 23):02d}:00:00 +0000")
        lines.append(f"From: {rnd.choice(['Zed', 'amy', ''])} <u{rnd.randint(0, 5)}@x.test>")
        lines.append(f"To: t{rnd.randint(0, 3)}@y.test")
        lines.append(f"Message-ID: <m{i}@x.test>")
        if i and rnd.random() < 0.6:
            lines.append(f"In-Reply-To: <m{rnd.randrange(i)}@x.test>")
        if i > 2 and rnd.random() < 0.3:
            lines.append(f"References: <m{rnd.randrange(i)}@x.test> <m{rnd.randrange(i)}@x.test>")
        out.append(("\r\n".join(lines) + "\r\n\r\nbody " + "x" * rnd.randint(0, 50)).encode())
    return out


COMMANDS = [
    "UID SORT (DATE) UTF-8 ALL", "SORT (REVERSE SUBJECT DATE) UTF-8 ALL",
    "SORT (FROM TO CC SIZE) UTF-8 ALL", "SORT (DISPLAYFROM REVERSE ARRIVAL) UTF-8 ALL",
    "UID SORT (SUBJECT) UTF-8 SUBJECT hello", "UID THREAD REFERENCES UTF-8 ALL",
    "THREAD ORDEREDSUBJECT UTF-8 ALL", "UID THREAD REFERENCES UTF-8 SINCE 1-Jan-2024",
    "UID FETCH 1:* (UID ENVELOPE)", "FETCH 2:5 (ENVELOPE FLAGS)",
]


def _session(stored: bool, msgs: list[bytes]) -> tuple[Conn, list[str]]:
    store, acc = make_store()
    if stored:
        summary.register(store)
    for i, m in enumerate(msgs):
        store.put(acc, "INBOX", m, when=datetime(2024, 3, 1 + i % 20, tzinfo=UTC))
    opened: list[str] = []
    real_open, real_head = store.open_blob, store.read_blob_head

    def counting_open(blob_id: str) -> object:
        opened.append(blob_id)
        return real_open(blob_id)

    def counting_head(blob_id: str, n: int) -> bytes:
        opened.append(blob_id)
        return real_head(blob_id, n)

    store.open_blob = counting_open  # type: ignore[method-assign]
    store.read_blob_head = counting_head  # type: ignore[method-assign]
    c = Conn(store)
    c.login()
    c.select()
    return c, opened


def test_stored_values_answer_as_the_files_do() -> None:
    """SORT (all keys), THREAD (both algorithms) and FETCH ENVELOPE answer the same
    octets from stored values as from the message files, and open no file."""
    msgs = _random_messages(60, 3) + MESSAGES
    with_store, opened = _session(True, msgs)
    without, opened_without = _session(False, msgs)
    for cmd in COMMANDS:
        a, b = with_store.cmd(f"t {cmd}"), without.cmd(f"t {cmd}")
        assert a == b, cmd
        assert b"t OK" in a, a
        # A SEARCH key on a header (SUBJECT hello) reads the stored header search text.
        assert opened == [], cmd
        opened.clear()
    assert opened_without != []


def test_messages_without_stored_values_are_read_from_their_files() -> None:
    """A mailbox where some messages have stored values and some not (an older store
    before the backfill) answers as one where none has."""
    msgs = _random_messages(30, 5)
    store, acc = make_store()
    for i, m in enumerate(msgs):
        if i == 15:
            summary.register(store)
        store.put(acc, "INBOX", m, when=datetime(2024, 3, 1 + i % 20, tzinfo=UTC))
    c = Conn(store)
    c.login()
    c.select()
    reference, _ = _session(False, msgs)
    for cmd in COMMANDS[:-2]:
        assert c.cmd(f"t {cmd}") == reference.cmd(f"t {cmd}"), cmd


def test_a_second_envelope_fetch_asks_the_store_nothing() -> None:
    """Stored envelopes read by one FETCH stay in the session cache: the next FETCH
    ENVELOPE of the same messages makes no store query and answers the same."""
    c, _ = _session(True, _random_messages(40, 7))
    calls: list[str] = []
    store = c.store
    real = store.get_derived

    def counting(*a: object, **kw: object) -> object:
        calls.append(str(a[1]))
        return real(*a, **kw)  # type: ignore[arg-type]

    store.get_derived = counting  # type: ignore[method-assign]
    first = c.cmd("a UID FETCH 1:* (ENVELOPE)")
    assert calls == [summary.ENVELOPE]
    assert c.cmd("a UID FETCH 1:* (ENVELOPE)") == first
    assert calls == [summary.ENVELOPE]


def test_sort_keys_are_asked_for_once_per_message() -> None:
    """The first SORT reads a mailbox's stored keys; the next SORT or THREAD asks the
    store nothing, and after a delivery only for the new UIDs; answers stay right."""
    msgs = _random_messages(30, 11)
    c, _ = _session(True, msgs)
    store = c.store
    calls: list[tuple[str, int]] = []
    real = store.get_derived

    def counting(mailbox_id: int, kind: str, first_uid: int = 1, *a: object) -> object:
        calls.append((kind, first_uid))
        return real(mailbox_id, kind, first_uid, *a)  # type: ignore[arg-type]

    store.get_derived = counting  # type: ignore[method-assign]
    first = c.cmd("a UID SORT (SUBJECT) UTF-8 ALL")
    assert calls == [(summary.KEYS, 1)]
    assert c.cmd("a UID SORT (SUBJECT) UTF-8 ALL") == first
    c.cmd("b UID THREAD REFERENCES UTF-8 ALL")
    assert calls == [(summary.KEYS, 1)]
    store.put(store.accounts["alice"], "INBOX", _random_messages(31, 11)[-1])
    c.cmd("c NOOP")
    after = c.cmd("d UID SORT (SUBJECT) UTF-8 ALL")
    assert calls == [(summary.KEYS, 1), (summary.KEYS, 31)]
    reference, _ = _session(False, msgs + [_random_messages(31, 11)[-1]])
    assert after.replace(b"d OK", b"x") == reference.cmd("d UID SORT (SUBJECT) UTF-8 ALL").replace(
        b"d OK", b"x")


def test_one_numeric_criterion_sorts_as_the_general_path() -> None:
    """SORT by one of DATE, ARRIVAL, SIZE (maybe REVERSE) takes a path of its own;
    repeating the criterion (the same order, RFC 5256 §3) takes the general one: both
    answer alike, ties in sequence order, with stored keys and without."""
    msgs = _random_messages(80, 13)
    for stored in (True, False):
        c, _ = _session(stored, msgs)
        for crit in ("DATE", "REVERSE DATE", "ARRIVAL", "REVERSE ARRIVAL", "SIZE",
                     "REVERSE SIZE"):
            for uid in ("", "UID "):
                one = c.cmd(f"a {uid}SORT ({crit}) UTF-8 ALL")
                assert one == c.cmd(f"a {uid}SORT ({crit} {crit}) UTF-8 ALL"), (crit, uid)
                assert one.startswith(b"* SORT ") and b"a OK" in one
            assert c.cmd(f"a SORT ({crit}) UTF-8 SUBJECT hello") == c.cmd(
                f"a SORT ({crit} {crit}) UTF-8 SUBJECT hello")
