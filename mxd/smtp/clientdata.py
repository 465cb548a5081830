"""The message body on the wire for the SMTP client: CRLF normalisation and
dot-stuffing (RFC 5321 §4.5.2), and the push producer that streams it with a stall
timeout (RFC 5321 §4.5.3.2.5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from mxd.smtp.clientvalues import SMTPConnectionError, SMTPTimeoutError


class DataEncoder:
    """Streaming CRLF normalisation and dot-stuffing for DATA (RFC 5321 §4.5.2)."""

    def __init__(self, dot_stuff: bool = True) -> None:
        self._bol = True
        self._cr = False
        self._dot_stuff = dot_stuff

    def encode(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr = True
        if not chunk:
            return b""
        data = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._dot_stuff:
            data = data.replace(b"\n.", b"\n..")
            if self._bol and data.startswith(b"."):
                data = b"." + data
        self._bol = data.endswith(b"\n")
        return data.replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        """The rest: a pending CR as CRLF, a final CRLF if the body lacked one."""
        out = b""
        if self._cr:
            out = b"\r\n"
            self._cr = False
            self._bol = True
        if not self._bol:
            out += b"\r\n"
            self._bol = True
        return out


# Mechanisms that send the password itself (RFC 4616 PLAIN, LOGIN): never without TLS.


class BodyProducer:
    """Streams a file to the transport as a push producer (RFC 5321 §4.5.3.2.5 timeout).

    A push producer, not a pull one: Twisted's TLS layer turns pull producers into push
    ones with the global cooperator, which library code must not depend on.
    """

    chunk_size = 1 << 16

    def __init__(self, body: BinaryIO, transport: Any, transform: Callable[[bytes], bytes],
                 clock: IReactorTime, timeout: float, on_stall: Callable[[], None]) -> None:
        self.body = body
        self.transport = transport
        self.transform = transform
        self.clock = clock
        self.timeout = timeout
        self.on_stall = on_stall
        self.done: Deferred[None] = Deferred()
        self._paused = False
        self._producing = False
        self._finished = False
        self._watchdog: Any = None

    def start(self) -> Deferred[None]:
        self._watchdog = self.clock.callLater(self.timeout, self._stalled)
        self.transport.registerProducer(self, True)
        self._produce()
        return self.done

    def _produce(self) -> None:
        if self._producing:
            return
        self._producing = True
        try:
            while not self._paused and not self._finished:
                try:
                    chunk = self.body.read(self.chunk_size)
                except OSError as e:
                    self._finish(e)
                    return
                if not chunk:
                    self._finish(None)
                    return
                self.transport.write(self.transform(chunk))
                if self._watchdog is not None and self._watchdog.active():
                    self._watchdog.reset(self.timeout)
        finally:
            self._producing = False

    def _finish(self, error: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)

    def _stalled(self) -> None:
        self._finish(SMTPTimeoutError("the peer stopped taking the message data"))
        self.on_stall()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        self._finish(SMTPConnectionError("connection lost while sending the message"))
