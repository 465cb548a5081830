"""Fakes and a driver for SMTP server unit tests (no sockets, no real time)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport

from mxd.sasl.api import (
    ChannelBindings,
    ConnectionInfo,
    Continue,
    Failure,
    Outcome,
    Success,
    UnknownMechanism,
)
from mxd.smtp.server import SMTPServerProtocol, SMTPServerSettings
from mxd.smtp.service import SMTPFactory
from mxd.store.interfaces import (
    Accepted,
    Account,
    Delivery,
    MessageProps,
    OutboundMessage,
    StoreError,
)
from mxd.store.testing import MemoryBlob, MemoryStore


@attrs.define
class Delivered:
    body: bytes
    targets: list[Delivery]
    props: MessageProps


ALICE = Account(1, "alice", ("alice@example.test",))
BOB = Account(2, "bob", ("bob@example.test", "robert@example.test"))


class FakeStore(MemoryStore):
    """mxd.store.testing.MemoryStore with accounts alice (1) and bob (2) and a record of
    what was accepted; ``hold=True`` makes accept wait for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.run_now(self.add_account(ALICE.name, "", ALICE.addresses))
        self.run_now(self.add_account(BOB.name, "", BOB.addresses))
        self.blobs: list[MemoryBlob] = []
        self.delivered: list[Delivered] = []
        self.queued: list[tuple[bytes, OutboundMessage]] = []
        self.queue_ids: list[str | None] = []
        self.hold = False
        self.pool_empty = False
        self.pending: list[tuple[Deferred[Accepted], Callable[[], Deferred[Accepted]]]] = []

    @staticmethod
    def run_now(d: Deferred[Any]) -> Any:
        box: list[Any] = []
        d.addBoth(box.append)
        return box[0]

    def new_blob(self) -> MemoryBlob:
        b = super().new_blob()
        self.blobs.append(b)
        return b

    def new_blob_nowait(self) -> MemoryBlob | None:
        # ``pool_empty``: as a store whose files made ahead of time have run out.
        return None if self.pool_empty else self.new_blob()

    def accept(self, blob: Any, targets: Sequence[Delivery], props: MessageProps,
               outbound: OutboundMessage | None = None, queue_id: str | None = None, *,
               internal_date: Any = None) -> Deferred[Accepted]:
        def do() -> Deferred[Accepted]:
            d = super(FakeStore, self).accept(blob, targets, props, outbound, queue_id,
                                              internal_date=internal_date)

            def record(a: Accepted) -> Accepted:
                if targets:
                    self.delivered.append(Delivered(bytes(blob.data), list(targets), props))
                if outbound is not None:
                    self.queued.append((bytes(blob.data), outbound))
                    self.queue_ids.append(queue_id)
                return a

            return d.addCallback(record)

        if self.hold:
            waiting: Deferred[Accepted] = Deferred()
            self.pending.append((waiting, do))
            return waiting
        return do()

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for waiting, do in pending:
            do().chainDeferred(waiting)

    def live(self) -> int:
        return sum(len(b.messages) for b in self.mailboxes.values())


class FakeOutbound:
    """The queue as the SMTP server sees it: counts the wake-ups after an accept."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1




class FakeDirectory:
    """Domains example.test and xn--bcher-kva.test; users alice, bob (+robert), 用户."""

    def __init__(self) -> None:
        self.accounts = {
            "alice@example.test": ALICE,
            "bob@example.test": BOB,
            "robert@example.test": BOB,
            "postmaster@example.test": ALICE,
            "postmaster@mx.example.test": ALICE,
            "用户@xn--bcher-kva.test": BOB,
        }
        self.domains = {"example.test", "xn--bcher-kva.test", "mx.example.test"}
        self.hold = False
        self.fail = False
        self.pending: list[tuple[Deferred[Any], Any]] = []
        self.lookups: list[str] = []

    def _answer(self, value: Any) -> Deferred[Any]:
        if self.fail:
            return fail(StoreError("directory down"))
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.pending.append((d, value))
            return d
        return succeed(value)

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for d, v in pending:
            d.callback(v)

    def resolve_recipient(self, address: str) -> Deferred[Account | None]:
        self.lookups.append(address)
        return self._answer(self.accounts.get(address))

    def is_local_domain(self, domain: str) -> bool:
        return domain in self.domains

    def may_send_as(self, account_name: str, address: str) -> Deferred[bool]:
        acct = self.accounts.get(address)
        return self._answer(acct is not None and acct.name == account_name)


class FakeExchange:
    def __init__(self, sasl: FakeSASL, mechanism: str) -> None:
        self.mechanism = mechanism
        self.sasl = sasl
        self.steps: list[bytes | None] = []

    def step(self, data: bytes | None) -> Deferred[Outcome]:
        self.steps.append(data)
        self.sasl.seen.append((self.mechanism, data))
        if self.sasl.raise_error:
            raise RuntimeError("boom")
        if self.mechanism == "PLAIN":
            if data is None:
                return succeed(Continue(b""))
            parts = data.split(b"\0")
            if len(parts) == 3 and parts[1:] == [b"alice", b"pw"]:
                return succeed(Success("alice", mechanism="PLAIN"))
            if self.sasl.temporary:
                return succeed(Failure("lookup", temporary=True))
            if self.sasl.rate_limited:
                return succeed(Failure("slow down", rate_limited=True))
            return succeed(Failure("authentication failed"))
        if self.mechanism == "SCRAM-SHA-256-PLUS":
            # A two-step stand-in: client-first -> challenge; client-final -> success+v=.
            if len(self.steps) == 1:
                return succeed(Continue(b"r=nonce,s=salt,i=4096"))
            return succeed(Success("alice", additional=b"v=proof", mechanism=self.mechanism))
        return succeed(Failure("no"))


class FakeSASL:
    """Offers PLAIN (only with TLS or loopback allowance) and SCRAM-SHA-256-PLUS (with bindings)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes | None]] = []
        self.raise_error = False
        self.temporary = False
        self.rate_limited = False
        self.conns: list[ConnectionInfo] = []

    def advertised(self, conn: ConnectionInfo) -> list[str]:
        self.conns.append(conn)
        out = []
        if conn.channel_bindings is not None:
            out.append("SCRAM-SHA-256-PLUS")
        out.append("PLAIN")
        return out

    def start(self, mechanism: str, conn: ConnectionInfo) -> FakeExchange:
        self.conns.append(conn)
        if mechanism not in self.advertised(conn):
            raise UnknownMechanism(mechanism)
        return FakeExchange(self, mechanism)

    def check_password(self, username: str, password: str, conn: ConnectionInfo) -> Deferred[Outcome]:
        raise NotImplementedError


class FakeHandle:
    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def get_cipher_name(self) -> str:
        return "TLS_AES_256_GCM_SHA384"


class TLSStringTransport(StringTransport):
    """Records startTLS; ``getHandle`` answers like a pyOpenSSL connection once TLS is on."""

    def __init__(self, peer_ip: str = "192.0.2.7") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer_ip, 40000))
        self.tls_started: list[object] = []
        self.paused_count = 0

    def startTLS(self, ctx: object) -> None:
        self.tls_started.append(ctx)

    def getHandle(self) -> FakeHandle:
        return FakeHandle()

    def pauseProducing(self) -> None:
        self.paused_count += 1
        super().pauseProducing()


BINDINGS = ChannelBindings(tls_version="TLSv1.3", tls_exporter=b"x" * 32)


class Session:
    """Drives one SMTPServerProtocol: ``send`` bytes, read ``replies``."""

    def __init__(self, role: str = "smtp", *, settings: SMTPServerSettings | None = None,
                 peer_ip: str = "192.0.2.7", tls_context: object | None = "CTX",
                 checker: Any = None, sasl: FakeSASL | None = None,
                 store: FakeStore | None = None, directory: FakeDirectory | None = None,
                 outbound: FakeOutbound | None = None, metrics: Any = None,
                 run_blocking: Any = None, forwarder: Any = None) -> None:
        self.clock = task.Clock()
        self.store = store or FakeStore()
        self.directory = directory or FakeDirectory()
        self.sasl = sasl or FakeSASL()
        self.outbound = outbound or FakeOutbound()
        self.settings = settings or SMTPServerSettings()
        self.factory = SMTPFactory(
            role=role, settings=self.settings, store=self.store, directory=self.directory,  # type: ignore[arg-type]
            sasl=self.sasl, outbound=self.outbound, tls=tls_context, clock=self.clock,
            hostname="mx.example.test", checker=checker, metrics=metrics,
            channel_bindings=lambda t: BINDINGS, run_blocking=run_blocking,
        )
        self.factory.forwarder = forwarder
        self.transport = TLSStringTransport(peer_ip)
        proto = self.factory.buildProtocol(self.transport.getPeer())
        assert isinstance(proto, SMTPServerProtocol)
        self.proto: SMTPServerProtocol = proto
        self.proto.makeConnection(self.transport)
        self._read = 0

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.proto.dataReceived(data)

    def output(self) -> bytes:
        v = self.transport.value()
        out = v[self._read:]
        self._read = len(v)
        return out

    def replies(self) -> list[str]:
        """Complete replies written since the last call, one string per reply (last line)."""
        text = self.output().decode("utf-8")
        out = []
        for line in text.split("\r\n"):
            if len(line) >= 4 and line[3] == " ":
                out.append(line)
        return out

    def codes(self) -> list[int]:
        return [int(r[:3]) for r in self.replies()]

    def ehlo(self, name: str = "client.example") -> list[str]:
        self.send(f"EHLO {name}\r\n")
        text = self.output().decode()
        return [line[4:] for line in text.split("\r\n") if line]

    def start_tls(self) -> None:
        """Act as if the TLS handshake after STARTTLS (or on 465) completed."""
        self.proto.handshakeCompleted()

    def auth_plain(self, user: str = "alice", pw: str = "pw") -> None:
        token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
        self.send(f"AUTH PLAIN {token}\r\n")


def close(session: Session) -> None:
    session.proto.connectionLost(None)  # type: ignore[arg-type]
