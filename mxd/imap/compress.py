"""COMPRESS=DEFLATE (RFC 4978) on the session: the COMPRESS command and a transport
layer that compresses everything the session writes.

After the tagged OK (sent uncompressed, RFC 4978 §3: "the server MUST compress starting
immediately after the CRLF which ends the tagged OK response"), the session's
``transport`` becomes a ``DeflateTransport`` over the one below (TCP, or TLS: RFC 4978 §3
puts COMPRESS above TLS), so every later write — responses, FETCH literals, IDLE pushes,
BYE — goes through the compressor and is sync-flushed per write.  Input goes through the
session's ``Inflater`` in bounded pieces (``IMAPSession._inflate_some``).

Large writes (a FETCH batch) are compressed on a worker thread when one is given (zlib
lets go of the GIL while it works), one job at a time per connection so the stream
stays in order; small ones (a tagged reply, an IDLE push) are compressed at once when
nothing is waiting.  What waits for the compressor counts against the session's output
flow control like the transport's own buffer does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from mxd.imap.deflate import Deflater, DeflateSettings, Inflater, parse_mechanism
from mxd.imap.dispatch import CommandDetached, Reply, bad, ok
from mxd.imap.values import Command

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

log = Logger()

# Runs ``fn(data)`` on a worker thread; fires with its result.
RunInThread = Callable[[Callable[[bytes], bytes], bytes], "Deferred[bytes]"]

INLINE_BELOW = 16 * 1024  # plain octets compressed on the reactor thread when idle
MAX_QUEUED = 256 * 1024  # plain octets waiting for the compressor before the session pauses


@implementer(IPushProducer)
class _OutputFlow:
    """Registered with the lower transport as its producer: its pause/resume (buffer
    full / drained) reach the session combined with the compressor queue's."""

    def __init__(self, owner: DeflateTransport) -> None:
        self.owner = owner

    def pauseProducing(self) -> None:
        self.owner._lower_full = True
        self.owner._update_flow()

    def resumeProducing(self) -> None:
        self.owner._lower_full = False
        self.owner._update_flow()

    def stopProducing(self) -> None:
        self.owner.session.stopProducing()


class DeflateTransport:
    """A transport that compresses writes and passes them to ``transport``; everything
    else (reading control, addresses, TLS details) is the lower transport's."""

    def __init__(self, transport: Any, deflater: Deflater, session: Any,
                 run_in_thread: RunInThread | None = None) -> None:
        self.transport = transport  # named as in TLSMemoryBIOProtocol, for tcp_socket()
        self.deflater = deflater
        self.session = session
        self._run = run_in_thread
        self._queue: list[bytes] = []
        self._queued = 0  # plain octets queued or being compressed
        self._busy = False
        self._closing = False
        self._dead = False
        # The session may be paused by the lower transport already (its client not
        # reading); that pause now reaches it through _OutputFlow.
        self._lower_full = bool(getattr(session, "_write_paused", False))
        self._queue_full = False
        self._paused = self._lower_full
        self.producer: Any = session
        if run_in_thread is not None:
            self._flow = _OutputFlow(self)
            transport.unregisterProducer()
            transport.registerProducer(self._flow, True)

    # -- writing ----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not data or self._dead:
            return
        if self._run is None or (not self._busy and not self._queue and len(data) < INLINE_BELOW):
            self.transport.write(self.deflater.compress(data))
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > MAX_QUEUED and not self._queue_full:
            self._queue_full = True
            self._update_flow()
        self._pump()

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        self.write(b"".join(seq))

    def _pump(self) -> None:
        if self._busy:
            return
        if not self._queue:
            if self._closing:
                self.transport.loseConnection()
            return
        assert self._run is not None
        data = b"".join(self._queue)
        self._queue.clear()
        self._busy = True
        d = self._run(self.deflater.compress, data)
        d.addCallbacks(self._compressed, self._failed, callbackArgs=(len(data),))

    def _compressed(self, out: bytes, n: int) -> None:
        self._busy = False
        self._queued -= n
        if self._dead:
            return
        self.transport.write(out)
        if self._queue_full and self._queued <= MAX_QUEUED // 2:
            self._queue_full = False
            self._update_flow()
        self._pump()

    def _failed(self, f: Any) -> None:
        self._busy = False
        log.failure("imap COMPRESS: compressing failed", f)
        self.abortConnection()

    def _update_flow(self) -> None:
        want = self._lower_full or self._queue_full
        if want == self._paused:
            return
        self._paused = want
        if want:
            self.session.pauseProducing()
        else:
            self.session.resumeProducing()

    # -- producer registration and closing ---------------------------------------------------
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        if self._run is None:
            self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.producer = None
        self.transport.unregisterProducer()

    def loseConnection(self) -> None:
        """After what waits for the compressor has been written."""
        if self._busy or self._queue:
            self._closing = True
        else:
            self.transport.loseConnection()

    def abortConnection(self) -> None:
        self._dead = True
        self._queue.clear()
        self.transport.abortConnection()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def thread_runner(reactor: Any) -> RunInThread | None:
    """A RunInThread on the reactor's thread pool, or None for a reactor without one
    (``task.Clock`` in tests: everything is then compressed inline)."""
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None or not hasattr(reactor, "callFromThread"):
        return None
    from twisted.internet.threads import deferToThreadPool

    def run(fn: Callable[[bytes], bytes], data: bytes) -> Deferred[bytes]:
        return deferToThreadPool(reactor, get_pool(), fn, data)

    return run


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
    s.transport = DeflateTransport(s.transport, Deflater(settings), s,  # type: ignore[assignment]
                                   thread_runner(s.clock))
    s.factory.metrics.inc("imap_compress", mechanism="DEFLATE")
    raise CommandDetached()
