"""COMPRESS=DEFLATE (RFC 4978) on the session: the COMPRESS command and a transport
layer that compresses everything the session writes.

After the tagged OK (sent uncompressed, RFC 4978 §3: "the server MUST compress starting
immediately after the CRLF which ends the tagged OK response"), the session's
``transport`` becomes a ``DeflateTransport`` over the one below (TCP, or TLS: RFC 4978 §3
puts COMPRESS above TLS), so every later write — responses, FETCH literals, IDLE pushes,
BYE — goes through the compressor and is sync-flushed per write.  Input goes through the
session's ``Inflater`` in bounded pieces (``IMAPSession._inflate_some``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mxd.imap.deflate import Deflater, DeflateSettings, Inflater, parse_mechanism
from mxd.imap.dispatch import CommandDetached, Reply, bad, ok
from mxd.imap.values import Command

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession


class DeflateTransport:
    """A transport that compresses writes and passes them to ``transport``; everything
    else (producers, addresses, closing, TLS details) is the lower transport's."""

    def __init__(self, transport: Any, deflater: Deflater) -> None:
        self.transport = transport  # named as in TLSMemoryBIOProtocol, for tcp_socket()
        self.deflater = deflater

    def write(self, data: bytes) -> None:
        if data:
            self.transport.write(self.deflater.compress(data))

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        self.write(b"".join(seq))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def cmd_compress(s: IMAPSession, cmd: Command) -> Reply:
    """RFC 4978 §3."""
    if s.deflate is not None:
        return bad("COMPRESS is already active")
    if parse_mechanism(cmd.args) is None:
        return bad(f"Unknown compression mechanism {cmd.args}")
    settings: DeflateSettings = s.settings.deflate
    s.send_tagged(cmd.tag, ok("DEFLATE active"))
    inflater = Inflater(settings)
    # RFC 4978 §3: the client sends nothing more before it has seen the OK; anything it
    # did send after the command line was compressed already.
    inflater.receive(s.framer.take_buffer())
    s.deflate = inflater
    s.transport = DeflateTransport(s.transport, Deflater(settings))  # type: ignore[assignment]
    s.factory.metrics.inc("imap_compress", mechanism="DEFLATE")
    raise CommandDetached()
