"""Submission from inside the process: one SMTP submission session (RFC 6409) over an
in-memory channel, for the web client.

A message composed in the web client takes exactly the path of a message submitted on
port 587: the same ``SMTPServerProtocol`` in the ``submission`` role checks that the
account owns the envelope sender, resolves local recipients, adds Date/Message-ID when
missing, runs the submission checker (DKIM signing when ``[dkim]`` is configured), writes
``Received:``, notes ``TLS-Required: No`` (RFC 8689 §5) and the REQUIRETLS parameter
(§4.1), and answers 250 only after ``IMailStore.accept`` has made the local copies and the
queue rows durable.  Nothing of that is written twice.

The session starts authenticated as the account the web client's login proved (no SASL
exchange: the HTTP session is the credential).  It counts as a TLS session, so that
REQUIRETLS is accepted, only when the caller says that the channel the message came in on
was protected (``protected``: the HTTP request came over TLS or from loopback, where the
bytes never left the host) — the condition RFC 8689 §4.1 puts on REQUIRETLS.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from mxd.errors import MxdError
from mxd.smtp.server import SMTPServerProtocol, SMTPServerSettings

__all__ = ["InProcessSubmission", "SubmissionRefused", "Submitted"]

CHUNK = 64 * 1024  # octets of the message handed to the session at a time
_BAD_PATH = re.compile(r"[\x00-\x20<>\x7f]")  # would break out of MAIL FROM:<...>


class SubmissionRefused(MxdError):
    """The submission session refused the message: the SMTP reply, in its own words."""

    def __init__(self, stage: str, code: int, text: str) -> None:
        super().__init__(f"{stage}: {code} {text}")
        self.stage = stage
        self.code = code
        self.text = text

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@attrs.frozen
class Submitted:
    queue_id: str  # the id in "250 ... Message accepted as ID" (also the Received id)
    reply: str


class _Channel:
    """The transport of the in-process session: collects what the server writes and
    fires a Deferred when a complete reply (the line ``NNN text``) is there."""

    disconnecting = False

    def __init__(self, peer: Any, host: Any) -> None:
        self._peer, self._host = peer, host
        self._buffer = b""
        self._waiting: Deferred[tuple[int, str]] | None = None
        self.closed = False

    # -- ITransport, as far as the session uses it --------------------------------------
    def write(self, data: bytes) -> None:
        self._buffer += data
        self._deliver()

    def writeSequence(self, seq: Sequence[bytes]) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        self.closed = True
        if self._waiting is not None:  # closed without (the end of) a reply
            d, self._waiting = self._waiting, None
            d.callback((421, "the session closed"))

    def abortConnection(self) -> None:
        self.loseConnection()

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self._host

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    # -- replies -------------------------------------------------------------------------
    def next_reply(self) -> Deferred[tuple[int, str]]:
        d: Deferred[tuple[int, str]] = Deferred()
        self._waiting = d
        self._deliver()
        return d

    def _deliver(self) -> None:
        if self._waiting is None:
            return
        lines = self._buffer.split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":  # RFC 5321 §4.2: the last line
                self._buffer = b"\r\n".join(lines[i + 1:])
                text = b" ".join(ln[4:] for ln in lines[: i + 1]).decode("utf-8", "replace")
                d, self._waiting = self._waiting, None
                d.callback((int(line[:3]), text))
                return


def _address(ip: str, port: int) -> Any:
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError:
        return IPv4Address("TCP", "127.0.0.1", port)
    return IPv6Address("TCP", ip, port) if version == 6 else IPv4Address("TCP", ip, port)


class InProcessSubmission:
    """Hands messages to an in-process submission session built from the same
    collaborators as the submission listener (``mxd.components.web_submission``)."""

    def __init__(self, *, settings: SMTPServerSettings, store: Any, directory: Any,
                 outbound: Any, clock: Any, hostname: str, checker: Any = None,
                 metrics: Any = None, run_blocking: Any = None,
                 helo: str = "webmail") -> None:
        self.settings = settings
        self.store = store
        self.directory = directory
        self.outbound = outbound
        self.clock = clock
        self.hostname = hostname
        self.checker = checker
        self.metrics = metrics
        self.run_blocking = run_blocking
        self.helo = helo

    async def submit(self, *, account: str, mail_from: str, recipients: Sequence[str],
                     data: bytes, client_ip: str, protected: bool, requiretls: bool = False,
                     smtputf8: bool = False, eight_bit: bool = False) -> Submitted:
        """Submit ``data`` (CRLF line ends) from ``mail_from`` to ``recipients`` as
        ``account``.  Raises SubmissionRefused with the session's reply, ValueError for
        an address that cannot go into a command line."""
        for path in (mail_from, *recipients):
            if _BAD_PATH.search(path) or not path:
                raise ValueError(f"not an address for an SMTP command: {path!r}")
        proto = SMTPServerProtocol(
            role="submission", settings=self.settings, store=self.store,
            directory=self.directory, sasl=None, outbound=self.outbound, tls=None,
            clock=self.clock, hostname=self.hostname, checker=self.checker,
            metrics=self.metrics, run_blocking=self.run_blocking)
        channel = _Channel(_address(client_ip, 0), _address("127.0.0.1", 0))
        greeting = channel.next_reply()
        proto.makeConnection(channel)
        try:
            code, text = await greeting
            _expect("connect", code, text, 220)
            proto.authenticated = account  # proved by the web login
            proto.tls_active = protected
            await self._command(proto, channel, "EHLO", f"EHLO {self.helo}".encode(), 250)
            params = [f"SIZE={len(data)}"]
            if eight_bit or smtputf8:
                params.append("BODY=8BITMIME")  # RFC 6152
            if smtputf8:
                params.append("SMTPUTF8")  # RFC 6531 §3.4
            if requiretls:
                params.append("REQUIRETLS")  # RFC 8689 §4.1
            await self._command(proto, channel, "MAIL",
                                f"MAIL FROM:<{mail_from}> {' '.join(params)}".encode(), 250)
            for rcpt in recipients:
                await self._command(proto, channel, "RCPT", f"RCPT TO:<{rcpt}>".encode(), 250)
            # BDAT (RFC 3030): the octets as they are, no dot-stuffing to get wrong; fed
            # in network-sized pieces with a reactor turn between them, as a client's
            # bytes arrive, so a large message does not hold the reactor thread.
            reply = channel.next_reply()
            proto.dataReceived(b"BDAT %d LAST\r\n" % len(data))
            for i in range(0, len(data), CHUNK):
                if i:
                    await deferLater(self.clock, 0, lambda: None)
                if channel.closed:
                    break
                proto.dataReceived(data[i:i + CHUNK])
            code, text = await reply
            _expect("DATA", code, text, 250)
            queue_id = text.rsplit(" ", 1)[-1] if "accepted as" in text else ""
            return Submitted(queue_id=queue_id, reply=f"{code} {text}")
        finally:
            if not channel.closed:
                proto.dataReceived(b"QUIT\r\n")
            proto.connectionLost(Failure(ConnectionDone()))

    @staticmethod
    async def _command(proto: SMTPServerProtocol, channel: _Channel, stage: str,
                       line: bytes, want: int) -> tuple[int, str]:
        reply = channel.next_reply()
        proto.dataReceived(line + b"\r\n")
        code, text = await reply
        _expect(stage, code, text, want)
        return code, text


def _expect(stage: str, code: int, text: str, want: int) -> None:
    if code != want:
        raise SubmissionRefused(stage, code, text)
