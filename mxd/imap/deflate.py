"""COMPRESS=DEFLATE (RFC 4978): the codec, without I/O.

Raw DEFLATE (RFC 1951, no zlib or gzip wrapper, RFC 4978 §3).  ``Deflater`` compresses
what the server sends and ends every write with a sync flush (RFC 4978 §4: "use
Z_SYNC_FLUSH ... after each response"), so each response can be decompressed as soon as
it arrives, an IDLE push included.  ``Inflater`` decompresses what the client sends in
bounded pieces: the caller asks for at most ``chunk`` octets at a time and only while it
has room, so a small compressed input cannot make the server hold a large plain one
(a decompression bomb gets no further than the session's own line and literal limits).
"""

from __future__ import annotations

import zlib

import attrs

# RFC 4978 §3: "DEFLATE" is the only mechanism.
MECHANISM = "DEFLATE"


class CompressError(Exception):
    """The client's compressed stream is corrupt (the session ends with BYE)."""


@attrs.frozen
class DeflateSettings:
    """``level``: 1 (fast) to 9 (small); ``window_bits``: the compressor's window (9-15;
    the inflater always accepts a 32 KiB window, RFC 1951); ``mem_level``: 1-9.  Memory
    per compressing session is about 2**(window_bits+2) + 2**(mem_level+9) octets for
    the compressor plus 44 KiB for the inflater and ``inflate_budget`` of plain text."""

    # 1: on this kind of text (mail) zlib's fastest level compresses 2-3 times faster
    # than its default (6) for about 7% more octets (bench/imap.py's mail: 0.46 of the
    # plain size against 0.43) -- a server compressing every download of every client
    # spends its CPU better so.
    level: int = 1
    window_bits: int = 15
    mem_level: int = 8
    inflate_chunk: int = 64 * 1024  # plain octets produced per step
    inflate_budget: int = 256 * 1024  # plain octets waiting to be framed, at most


class Deflater:
    """The server's half: compress, then sync-flush, per write."""

    def __init__(self, settings: DeflateSettings = DeflateSettings()) -> None:
        self._z = zlib.compressobj(settings.level, zlib.DEFLATED, -settings.window_bits,
                                   settings.mem_level)
        self.octets_in = 0
        self.octets_out = 0

    def compress(self, data: bytes) -> bytes:
        """``data`` compressed and flushed (Z_SYNC_FLUSH: the stream stays open)."""
        out = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        self.octets_in += len(data)
        self.octets_out += len(out)
        return out


class Inflater:
    """The client's half: decompress in bounded pieces."""

    def __init__(self, settings: DeflateSettings = DeflateSettings()) -> None:
        self._z = zlib.decompressobj(-15)
        self._pending = bytearray()  # compressed octets not yet decompressed
        self._full = False  # the last step stopped at ``chunk``: zlib may hold more
        self.chunk = settings.inflate_chunk
        self.budget = settings.inflate_budget

    def receive(self, data: bytes) -> None:
        self._pending += data

    @property
    def pending(self) -> bool:
        return bool(self._pending) or self._full

    def inflate(self) -> bytes:
        """At most ``chunk`` plain octets of what has been received (b"" when more input
        is needed).  Raises CompressError for a corrupt stream or data after its end."""
        if not self._pending and not self._full:
            return b""
        if self._z.eof and self._pending:
            raise CompressError("data after the end of the compressed stream")
        src = bytes(self._pending)
        try:
            out = self._z.decompress(src, self.chunk)
        except zlib.error as e:
            raise CompressError(f"corrupt DEFLATE stream: {e}") from None
        if self._z.unused_data:
            raise CompressError("data after the end of the compressed stream")
        # zlib hands back what it did not take (over ``chunk``): it is ours to keep.
        self._pending = bytearray(self._z.unconsumed_tail)
        self._full = len(out) >= self.chunk
        return out


def parse_mechanism(arg: str) -> str | None:
    """The mechanism named in ``COMPRESS mechanism`` (RFC 4978 §5), upper case, or None
    if it is not DEFLATE."""
    m = arg.upper()
    return m if m == MECHANISM else None
