"""IMAP over real (in-memory) TLS: implicit TLS greeting with -PLUS mechanisms, and
SCRAM-SHA-256-PLUS with the real SASL server, on TLS 1.2 and 1.3."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import task
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer

from mxd.imap.server import IMAPFactory, IMAPServerSettings
from mxd.sasl.channelbinding import channel_bindings_from_transport
from mxd.sasl.client import make_client
from mxd.sasl.testing import InMemorySecrets, sasl_server_for_tests
from tests.imap.fakes import FakeStore
from tests.sasl.helpers import client_context, server_context


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, ctx: SSL.Context) -> None:
        self.ctx = ctx

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_accept_state()
        return conn


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, ctx: SSL.Context) -> None:
        self.ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        return conn


@implementer(IHandshakeListener)
class _Client(LineReceiver):
    """Reads the greeting, then authenticates with SCRAM-SHA-256-PLUS (SASL-IR)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.bindings: Any = None
        self.mech: Any = None
        self.done = False

    def handshakeCompleted(self) -> None:
        self.bindings = channel_bindings_from_transport(self.transport, server_side=False)

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if line.startswith(b"* OK [CAPABILITY") and self.mech is None:
            self.mech = make_client("SCRAM-SHA-256-PLUS", "alice", "s3cret",
                                    channel_bindings=self.bindings, server_offered_plus=True)
            ir = base64.b64encode(self.mech.initial_response())
            self.sendLine(b"a AUTHENTICATE SCRAM-SHA-256-PLUS " + ir)
        elif line.startswith(b"+ "):
            data = base64.b64decode(line[2:])
            if data.startswith(b"v="):
                self.mech.finish(data)
                self.sendLine(b"")
            else:
                self.sendLine(base64.b64encode(self.mech.step(data)))
        elif line.startswith(b"a "):
            self.done = True


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_implicit_tls_scram_plus(version: str) -> None:
    """On implicit TLS the greeting comes after the handshake and offers -PLUS; SCRAM-SHA-
    256-PLUS with the connection's channel binding logs in and the server signature
    verifies."""
    secrets = InMemorySecrets()
    secrets.add("alice", "s3cret")
    clock = task.Clock()
    store = FakeStore()
    store.add_account("alice")
    factory = IMAPFactory(implicit_tls=True, settings=IMAPServerSettings(), store=store,
                          accounts=store, sasl=sasl_server_for_tests(secrets, clock),
                          tls=_ServerCreator(server_context(version)), clock=clock,
                          hostname="mx.example.test")
    sfac = TLSMemoryBIOFactory(_ServerCreator(server_context(version)), False, factory)
    client_proto = _Client()
    cfac = TLSMemoryBIOFactory(_ClientCreator(client_context(version)), True,
                               Factory.forProtocol(lambda: client_proto))
    sfac._clock = cfac._clock = clock
    addr = iosim.FakeAddress()
    client, server, pump = iosim.connectedServerAndClient(
        lambda: sfac.buildProtocol(addr), lambda: cfac.buildProtocol(addr), greet=False,
        clock=clock)
    for _ in range(50):
        pump.pump()
        clock.advance(0)
        if client_proto.done:
            break
    greeting = client_proto.lines[0]
    assert b"AUTH=SCRAM-SHA-256-PLUS" in greeting and b"AUTH=PLAIN" in greeting
    assert client_proto.lines[-1].startswith(b"a OK [CAPABILITY"), client_proto.lines
    session = server.wrappedProtocol
    assert session.account is not None and session.account.name == "alice"
    assert session.channel_bindings.tls_version == version
