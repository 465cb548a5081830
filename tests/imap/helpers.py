"""A scripted IMAP client over StringTransport for the server's unit tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mxd.imap.server import IMAPFactory, IMAPServerSettings, IMAPSession
from mxd.store.interfaces import Account
from tests.imap.fakes import FakeSASL, FakeStore

MSG1 = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
        b"Subject: hello\r\nDate: Thu, 01 Feb 2024 10:00:00 +0000\r\n"
        b"Message-ID: <1@example.test>\r\n\r\nHello Bob,\r\nhow are you?\r\n")
MSG2 = (b"From: Carol <carol@example.test>\r\nTo: alice@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
        b"part one text\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--XX--\r\n")


class Conn:
    """One server session driven by test code."""

    def __init__(self, store: FakeStore, sasl: FakeSASL | None = None, *, tls: bool = True,
                 settings: IMAPServerSettings | None = None, tls_ctx: Any = None,
                 peer: str = "192.0.2.1", clock: Clock | None = None,
                 factory: IMAPFactory | None = None) -> None:
        self.clock = clock or Clock()
        self.store = store
        self.factory = factory or IMAPFactory(
            implicit_tls=tls, settings=settings or IMAPServerSettings(), store=store,
            accounts=store, sasl=sasl or FakeSASL({"alice": "s3cret"}), tls=tls_ctx,
            clock=self.clock, hostname="mx.example.test")
        self.proto: IMAPSession = self.factory.buildProtocol(None)
        self.tr = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.proto.makeConnection(self.tr)
        self.greeting = self.out()

    def out(self) -> bytes:
        v = self.tr.value()
        self.tr.clear()
        return v

    def send(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        return self.out()

    def cmd(self, line: bytes | str) -> bytes:
        if isinstance(line, str):
            line = line.encode()
        return self.send(line + b"\r\n")

    def login(self) -> bytes:
        r = self.cmd("L LOGIN alice s3cret")
        assert b"L OK" in r, r
        return r

    def select(self, box: str = "INBOX") -> bytes:
        r = self.cmd(f"S SELECT {box}")
        assert b"S OK" in r, r
        return r


def make_store() -> tuple[FakeStore, Account]:
    store = FakeStore()
    acc = store.add_account("alice").result
    return store, acc
