"""FETCH writes responses in batches, in order, paused by flow control, never cut."""

from __future__ import annotations

import re

from mxd.imap.fetch import BATCH
from mxd.imap.message import HeaderList, envelope
from mxd.imap.response import render
from tests.imap.helpers import MSG1, Conn, make_store


def _message(i: int) -> bytes:
    return (b"From: Sender %d <s%d@example.test>\r\nTo: alice@example.test\r\n"
            b"Subject: message number %d with a longer subject line\r\n"
            b"Message-ID: <%d@example.test>\r\n\r\nbody %d\r\n" % (i, i, i, i, i))


def _mailbox(n: int) -> tuple[Conn, list[bytes]]:
    store, acc = make_store()
    msgs = [_message(i) for i in range(n)]
    for m in msgs:
        store.put(acc, "INBOX", m)
    c = Conn(store)
    c.login()
    c.select()
    return c, msgs


def test_large_fetch_returns_every_response_in_order() -> None:
    """A FETCH larger than one batch returns one response per message, in order, each
    with the ENVELOPE of the general path, and the tagged OK last."""
    c, msgs = _mailbox(800)
    out = c.cmd("a UID FETCH 1:* (FLAGS ENVELOPE UID)")
    assert len(out) > 2 * BATCH
    lines = out.split(b"\r\n")
    assert lines[-2] == b"a OK UID FETCH completed" and lines[-1] == b""
    responses = lines[:-2]
    assert len(responses) == len(msgs)
    for i, (line, raw) in enumerate(zip(responses, msgs, strict=True)):
        env = render(envelope(HeaderList.parse(raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n")))
        assert line == b"* %d FETCH (FLAGS () ENVELOPE %s UID %d)" % (i + 1, env, i + 1)


def test_fetch_waits_while_the_transport_is_full() -> None:
    """When the transport asks to pause, FETCH stops after the batch it wrote; it goes
    on (and completes) when the transport resumes."""
    c, msgs = _mailbox(800)
    write = c.tr.write

    def write_then_pause(data: bytes) -> None:
        write(data)
        c.proto.pauseProducing()  # as a transport whose buffer is full does

    c.tr.write = write_then_pause  # type: ignore[method-assign]
    first = c.cmd("a FETCH 1:* (ENVELOPE)")
    assert BATCH <= len(first) < 2 * BATCH
    assert b"a OK" not in first
    c.tr.write = write  # type: ignore[method-assign]
    c.proto.resumeProducing()
    rest = c.out()
    assert rest.endswith(b"a OK FETCH completed\r\n")
    assert len(re.findall(rb"^\* \d+ FETCH ", first + rest, re.M)) == len(msgs)


def test_missing_file_leaves_no_partial_response() -> None:
    """When a message's file is gone, its response is left out entirely (no cut literal),
    the others are complete, and the command ends NO [SERVERBUG]."""
    store, acc = make_store()
    before = set(store.blobs)
    store.put(acc, "INBOX", MSG1)
    store.put(acc, "INBOX", MSG1 + b"two\r\n")
    store.put(acc, "INBOX", MSG1)
    (second,) = [b for b in set(store.blobs) - before if store.blobs[b].endswith(b"two\r\n")]
    del store.blobs[second]
    c = Conn(store)
    c.login()
    c.select()
    out = c.cmd("a FETCH 1:3 (UID RFC822)")
    assert b"* 2 FETCH" not in out
    for seq in (1, 3):
        assert b"* %d FETCH (UID %d RFC822 {%d}\r\n%s FLAGS (\\Seen))\r\n" % (seq, seq, len(MSG1), MSG1) in out
    assert out.endswith(b"a NO [SERVERBUG] Some messages could not be read\r\n")


def test_small_messages_are_read_once_without_a_file_object() -> None:
    """ENVELOPE and a full-body FETCH of small messages read each message with one
    read_blob_head (no open_blob, no second read for the NUL check); the octets sent
    are the message's, and a message holding NUL is still sent without it."""
    store, acc = make_store()
    msgs = [_message(i) for i in range(20)]
    for m in msgs:
        store.put(acc, "INBOX", m)
    store.put(acc, "INBOX", b"Subject: nul\r\nContent-Type: text/plain\r\n\r\na\0b\r\n")
    reads: list[tuple[str, int]] = []
    opens: list[str] = []
    head, open_blob = store.read_blob_head, store.open_blob

    def counting_head(blob_id: str, length: int) -> bytes:
        reads.append((blob_id, length))
        return head(blob_id, length)

    def counting_open(blob_id: str):  # type: ignore[no-untyped-def]
        opens.append(blob_id)
        return open_blob(blob_id)

    store.read_blob_head = counting_head  # type: ignore[method-assign]
    store.open_blob = counting_open  # type: ignore[method-assign]
    c = Conn(store)
    c.login()
    c.select()
    out = c.cmd("a FETCH 1:20 (ENVELOPE BODY.PEEK[])")
    assert out.endswith(b"a OK FETCH completed\r\n")
    for raw in msgs:
        assert b"BODY[] {%d}\r\n" % len(raw) + raw in out
    assert opens == [] and len(reads) == 20 and len({b for b, _ in reads}) == 20
    out = c.cmd("b FETCH 21 (BODY.PEEK[])")
    assert b"\0" not in out and out.endswith(b"b OK FETCH completed\r\n")
