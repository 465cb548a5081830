"""COMPRESS=DEFLATE (RFC 4978) on a scripted session: the RFC's example, everything after
the tagged OK compressed and flushed per write (IDLE pushes included), bounded
decompression of what the client sends, and refusals."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap.deflate import CompressError, Deflater, DeflateSettings, Inflater
from mxd.imap.server import IMAPServerSettings
from tests.imap.helpers import MSG1, Conn, make_store


class Peer:
    """The client's side of a compressed session: raw DEFLATE both ways."""

    def __init__(self, c: Conn) -> None:
        self.c = c
        self.comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.decomp = zlib.decompressobj(-15)

    def read(self) -> bytes:
        return self.decomp.decompress(self.c.out())

    def send(self, data: bytes) -> bytes:
        self.c.proto.dataReceived(self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH))
        return self.read()


def _compressed(settings: IMAPServerSettings | None = None) -> tuple[Conn, Peer, object, object]:
    store, acc = make_store()
    c = Conn(store, settings=settings)
    c.login()
    # RFC 4978 §3 example: the tagged OK itself is not compressed.
    assert c.cmd("c COMPRESS DEFLATE") == b"c OK DEFLATE active\r\n"
    return c, Peer(c), store, acc


def test_rfc4978_example_and_capability() -> None:
    store, _ = make_store()
    c = Conn(store)
    assert b"COMPRESS=DEFLATE" not in c.greeting  # a command-auth (RFC 4978 §5)
    assert c.cmd("c COMPRESS DEFLATE").startswith(b"c BAD")
    assert b"COMPRESS=DEFLATE" in c.login()
    assert c.cmd("c COMPRESS DEFLATE") == b"c OK DEFLATE active\r\n"
    p = Peer(c)
    assert p.send(b"d NOOP\r\n") == b"d OK NOOP completed\r\n"
    # Every write is sync-flushed: the compressed octets end with the empty stored
    # block 00 00 ff ff (RFC 1951 §3.2.4), so the client can decompress at once.
    c.proto.dataReceived(p.comp.compress(b"e NOOP\r\n") + p.comp.flush(zlib.Z_SYNC_FLUSH))
    raw = c.out()
    assert raw.endswith(b"\x00\x00\xff\xff")
    assert p.decomp.decompress(raw) == b"e OK NOOP completed\r\n"


def test_second_compress_and_unknown_mechanism_are_bad() -> None:
    store, _ = make_store()
    c = Conn(store)
    c.login()
    assert c.cmd("a COMPRESS GZIP").startswith(b"a BAD")
    c.cmd("c COMPRESS DEFLATE")
    p = Peer(c)
    assert p.send(b"b COMPRESS DEFLATE\r\n").startswith(b"b BAD")  # RFC 4978 §3


def test_fetch_literal_and_idle_push_arrive_decompressible() -> None:
    """A FETCH of a message, then an IDLE push: each decompresses fully as it arrives."""
    c, p, store, acc = _compressed()
    store.put(acc, "INBOX", MSG1)  # type: ignore[attr-defined]
    out = p.send(b"s SELECT INBOX\r\n")
    assert out.endswith(b"s OK [READ-WRITE] SELECT completed\r\n"), out
    out = p.send(b"f FETCH 1 BODY.PEEK[]\r\n")
    assert out == b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (len(MSG1), MSG1)
    assert p.send(b"i IDLE\r\n") == b"+ idling\r\n"
    store.put(acc, "INBOX", MSG1)  # type: ignore[attr-defined]
    c.clock.advance(0)
    assert p.read() == b"* 2 EXISTS\r\n* 1 RECENT\r\n"
    assert p.send(b"DONE\r\n") == b"i OK IDLE terminated\r\n"


def test_pipelined_compressed_command_after_compress() -> None:
    """Bytes after the COMPRESS line in the same packet are already compressed."""
    store, _ = make_store()
    c = Conn(store)
    c.login()
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = b"c COMPRESS DEFLATE\r\n" + comp.compress(b"n NOOP\r\n") + comp.flush(zlib.Z_SYNC_FLUSH)
    out = c.send(data)
    assert out.startswith(b"c OK DEFLATE active\r\n")
    assert zlib.decompressobj(-15).decompress(out[len(b"c OK DEFLATE active\r\n"):]) == \
        b"n OK NOOP completed\r\n"


def test_corrupt_input_ends_the_session() -> None:
    c, p, _, _ = _compressed()
    c.proto.dataReceived(b"\xff\xff\xff\xff not deflate")
    assert p.read().startswith(b"* BYE COMPRESS: corrupt")
    assert c.tr.disconnecting


def test_decompression_bomb_is_read_in_bounded_pieces() -> None:
    """Commands that compress 500:1; while the client does not read (the transport's
    buffer is full) the session holds at most the inflate budget of plain text, and
    goes on when it can write again."""
    budget = 16 * 1024
    c, p, _, _ = _compressed(IMAPServerSettings(
        deflate=DeflateSettings(inflate_chunk=4 * 1024, inflate_budget=budget)))
    plain = b"n NOOP\r\n" * 20_000
    bomb = p.comp.compress(plain) + p.comp.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) * 500 < len(plain)
    c.proto.pauseProducing()  # the client stopped reading
    c.proto.dataReceived(bomb)
    assert c.proto.framer.buffered <= budget + 4 * 1024
    assert c.proto.deflate is not None and c.proto.deflate.pending
    c.proto.resumeProducing()
    assert p.read().count(b"n OK") == 20_000
    assert not c.proto.deflate.pending


def test_output_memory_settings_are_used() -> None:
    d = Deflater(DeflateSettings(level=1, window_bits=10, mem_level=2))
    data = b"x" * 100_000
    out = d.compress(data)
    assert zlib.decompressobj(-15).decompress(out) == data
    assert (d.octets_in, d.octets_out) == (100_000, len(out))


@given(st.lists(st.binary(max_size=3000), max_size=8), st.integers(1, 4096))
@settings(max_examples=50)
def test_inflater_roundtrip(pieces: list[bytes], chunk: int) -> None:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    wire = b"".join(comp.compress(x) + comp.flush(zlib.Z_SYNC_FLUSH) for x in pieces)
    inf = Inflater(DeflateSettings(inflate_chunk=chunk))
    got = bytearray()
    for i in range(0, len(wire), 7):
        inf.receive(wire[i:i + 7])
        while out := inf.inflate():
            assert len(out) <= chunk
            got += out
    assert bytes(got) == b"".join(pieces)


@given(st.binary(max_size=200))
def test_inflater_raises_only_compresserror(data: bytes) -> None:
    inf = Inflater()
    inf.receive(data)
    try:
        while inf.inflate():
            pass
    except CompressError:
        pass


class _Lower:
    """A lower transport that records writes and producer registrations."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.producer: object = None
        self.lost = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def loseConnection(self) -> None:
        self.lost = True

    def abortConnection(self) -> None:
        self.aborted = True


class _Session:
    def __init__(self) -> None:
        self.events: list[str] = []
        self._write_paused = False

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def test_threaded_compression_keeps_order_flow_control_and_close() -> None:
    """Big writes go to the worker one job at a time; small writes behind them wait
    their turn (the stream stays in order); the session pauses while too much waits
    and when the lower transport is full, and resumes only when both have room; a close
    waits for the compressor."""
    from twisted.internet.defer import Deferred

    from mxd.imap import compress

    jobs: list[tuple[Deferred[bytes], object, bytes]] = []

    def run(fn: object, data: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        jobs.append((d, fn, data))
        return d

    def finish() -> None:
        d, fn, data = jobs.pop(0)
        d.callback(fn(data))  # type: ignore[operator]

    lower, session = _Lower(), _Session()
    t = compress.DeflateTransport(lower, Deflater(), session, run)
    assert lower.producer is not None and lower.producer is not session
    t.write(b"small first\r\n")  # idle and small: at once
    assert len(jobs) == 0 and lower.data
    big = b"".join(b"line %d of a big FETCH\r\n" % i for i in range(20_000))  # > MAX_QUEUED
    t.write(big)
    t.write(b"tagged OK\r\n")  # behind the big one, though small
    assert len(jobs) == 1 and session.events == ["pause"]
    lower.producer.pauseProducing()  # type: ignore[attr-defined]  # the socket is full too
    finish()  # the big one done; the small one starts
    assert session.events == ["pause"] and len(jobs) == 1
    t.loseConnection()
    assert not lower.lost  # waits for the compressor
    finish()
    assert lower.lost
    lower.producer.resumeProducing()  # type: ignore[attr-defined]
    assert session.events == ["pause", "resume"]
    out = zlib.decompressobj(-15).decompress(bytes(lower.data))
    assert out == b"small first\r\n" + big + b"tagged OK\r\n"


def test_abort_drops_what_waits() -> None:
    from twisted.internet.defer import Deferred

    from mxd.imap import compress

    jobs: list[Deferred[bytes]] = []
    lower, session = _Lower(), _Session()
    t = compress.DeflateTransport(lower, Deflater(), session,
                                  lambda fn, data: jobs.append(Deferred()) or jobs[-1])
    t.write(b"x" * 100_000)
    t.abortConnection()
    jobs[0].callback(b"late")
    assert lower.aborted and not lower.data
