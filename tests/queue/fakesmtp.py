"""A synchronous scripted SMTP server to connect mxd's SMTP client to in unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure

from mxd.smtp.client import SMTPClient


@attrs.define
class Received:
    ip: str
    mail_from: str
    rcpts: list[str]
    data: bytes


@attrs.define
class SinkBehaviour:
    """Replies of the fake server; ``rcpt`` maps an address to its RCPT reply."""

    greeting: str = "220 sink.test ESMTP"
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN")
    rcpt: dict[str, str] = attrs.Factory(dict)
    data_reply: str = "250 2.0.0 ok"
    mail: dict[str, str] = attrs.Factory(dict)  # server IP -> MAIL reply (a 421 closes)


class FakeServerTransport:
    """Client-facing transport: what the client writes is answered at once."""

    def __init__(self, sink: FakeSink, ip: str, client: SMTPClient) -> None:
        self.sink, self.ip, self.client = sink, ip, client
        self.buf = b""
        self.in_data = False
        self.data = b""
        self.mail_from = ""
        self.rcpts: list[str] = []
        self.disconnecting = False
        self.producer: Any = None

    # ITransport
    def write(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n" in self.buf and not self.disconnecting:
            line, self.buf = self.buf.split(b"\r\n", 1)
            self._line(line)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.client.connectionLost(Failure(ConnectionDone()))

    abortConnection = loseConnection

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", self.ip, 25)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        while self.producer is not None:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    def _reply(self, text: str) -> None:
        self.client.dataReceived(text.encode() + b"\r\n")

    def _line(self, line: bytes) -> None:
        b = self.sink.behaviour
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.sink.received.append(Received(self.ip, self.mail_from, self.rcpts, self.data))
                self._reply(b.data_reply)
            else:
                self.data += (line[1:] if line.startswith(b".") else line) + b"\r\n"
            return
        text = line.decode()
        self.sink.commands.append(text)
        verb = text.split(" ", 1)[0].upper()
        if verb == "EHLO":
            lines = ["sink.test", *b.extensions]
            self._reply("\r\n".join(f"250-{x}" for x in lines[:-1]) + f"\r\n250 {lines[-1]}"
                        if len(lines) > 1 else "250 sink.test")
        elif verb == "MAIL":
            self.mail_from = text[text.index("<") + 1 : text.index(">")]
            self.rcpts = []
            reply = b.mail.get(self.ip, "250 2.1.0 ok")
            self._reply(reply)
            if reply.startswith("421"):
                self.loseConnection()
        elif verb == "RCPT":
            addr = text[text.index("<") + 1 : text.index(">")]
            reply = b.rcpt.get(addr, "250 2.1.5 ok")
            if reply.startswith("2"):
                self.rcpts.append(addr)
            self._reply(reply)
        elif verb == "DATA":
            if self.rcpts:
                self.in_data = True
                self.data = b""
                self._reply("354 go ahead")
            else:
                self._reply("554 5.5.1 no valid recipients")
        elif verb == "STARTTLS":
            self._reply("220 2.0.0 go ahead")  # the transport cannot do TLS: the client fails
        elif verb == "RSET":
            self._reply("250 2.0.0 ok")
        elif verb == "QUIT":
            self._reply("221 2.0.0 bye")
            self.loseConnection()
        else:
            self._reply("502 5.5.2 unknown")


class FakeSink:
    """The connector for QueueRunner: IPs in ``refuse`` refuse, ``hang`` never answer."""

    def __init__(self, behaviour: SinkBehaviour | None = None) -> None:
        self.behaviour = behaviour or SinkBehaviour()
        self.received: list[Received] = []
        self.commands: list[str] = []
        self.connections: list[str] = []
        self.refuse: set[str] = set()
        self.hang: set[str] = set()
        self.pending: list[Deferred[Any]] = []
        self.on_connect: Callable[[str], None] | None = None

    def __call__(self, ip: str, port: int, client: SMTPClient) -> Deferred[Any]:
        self.connections.append(ip)
        if ip in self.refuse:
            return fail(ConnectionRefusedError(ip))
        if ip in self.hang:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        t = FakeServerTransport(self, ip, client)
        client.makeConnection(t)
        t._reply(self.behaviour.greeting)
        return succeed(client)
