"""SCRAM-*-PLUS over real in-memory TLS 1.2 and 1.3: every binding type, wrong data,
unavailable types, downgrades; scramp over Python's ssl as an independent client; and a
Twisted TLSMemoryBIOFactory + iosim connection carrying a whole exchange."""

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

from mxd.sasl.api import ChannelBindings, Continue, Failure, Success
from mxd.sasl.channelbinding import (
    channel_bindings_from_connection,
    channel_bindings_from_transport,
)
from mxd.sasl.client import choose_mechanism, make_client
from mxd.sasl.credentials import StoredSecrets

from .helpers import (
    TEST_SCRYPT_N,
    ca,
    client_context,
    make_server,
    pyopenssl_pair,
    result,
    run_exchange,
    secrets_for,
    server_context,
    stdlib_client_pair,
    tls_conn,
)

CB_TYPES = ("tls-exporter", "tls-unique", "tls-server-end-point")
CASES = [("TLSv1.3", True), ("TLSv1.2", True), ("TLSv1.2", False)]
IDS = ["tls13", "tls12-ems", "tls12-no-ems"]


def _bindings(version: str, ems: bool) -> tuple[ChannelBindings, ChannelBindings]:
    pair = pyopenssl_pair(version, ems=ems)
    return (channel_bindings_from_connection(pair.server, server_side=True),
            channel_bindings_from_connection(pair.client, server_side=False))


def _with(cb_type: str, data: bytes) -> ChannelBindings:
    return ChannelBindings("x", **{cb_type.replace("-", "_"): data})


@pytest.mark.parametrize(("version", "ems"), CASES, ids=IDS)
@pytest.mark.parametrize("cb_type", CB_TYPES)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_binding_matrix(version: str, ems: bool, cb_type: str, mech: str) -> None:
    """Each binding type the connection provides succeeds with the client's own data and
    fails with e=channel-bindings-dont-match on other data; a type it cannot provide
    (tls-unique on TLS 1.3, tls-exporter without EMS) fails with
    e=unsupported-channel-binding-type."""
    srv_cb, cli_cb = _bindings(version, ems)
    rig = make_server()
    conn = tls_conn(srv_cb)
    expected_available = {
        ("TLSv1.3", True): {"tls-exporter", "tls-server-end-point"},
        ("TLSv1.2", True): set(CB_TYPES),
        ("TLSv1.2", False): {"tls-unique", "tls-server-end-point"},
    }[(version, ems)]
    assert set(srv_cb.available) == set(cli_cb.available) == expected_available
    if cb_type in expected_available:
        good = make_client(mech, "user", "pencil", channel_bindings=cli_cb, cb_type=cb_type)
        assert isinstance(run_exchange(rig.server, good, conn), Success)
        data = cli_cb.get(cb_type)
        assert data is not None
        wrong = _with(cb_type, bytes([data[0] ^ 1]) + data[1:])
        bad = make_client(mech, "user", "pencil", channel_bindings=wrong, cb_type=cb_type)
        out = run_exchange(rig.server, bad, conn)
        assert isinstance(out, Failure) and out.additional == b"e=channel-bindings-dont-match"
    else:
        forged = make_client(mech, "user", "pencil", channel_bindings=_with(cb_type, b"z" * 12),
                             cb_type=cb_type)
        out = run_exchange(rig.server, forged, conn)
        assert isinstance(out, Failure) and out.additional == b"e=unsupported-channel-binding-type"


@pytest.mark.parametrize(("version", "ems"), CASES, ids=IDS)
def test_downgrade_is_refused(version: str, ems: bool) -> None:
    """A client that can bind but was made to believe the server cannot (gs2 y) fails
    with e=server-does-support-channel-binding, over both TLS versions."""
    srv_cb, cli_cb = _bindings(version, ems)
    rig = make_server()
    conn = tls_conn(srv_cb)
    offered = rig.server.advertised(conn)
    stripped = [m for m in offered if not m.endswith("-PLUS")]  # what a MITM would show
    mech = choose_mechanism(stripped, have_channel_binding=True)
    assert mech == "SCRAM-SHA-256"
    client = make_client(mech, "user", "pencil", channel_bindings=cli_cb, server_offered_plus=False)
    out = run_exchange(rig.server, client, conn)
    assert isinstance(out, Failure) and out.additional == b"e=server-does-support-channel-binding"


def test_relayed_exchange_fails() -> None:
    """Binding data from another TLS connection (a man in the middle with its own
    certificate relaying the exchange) does not match, for every type."""
    srv_cb, _ = _bindings("TLSv1.2", True)
    mitm_cert = ca().issue_cert("localhost")
    mitm = pyopenssl_pair("TLSv1.2", server_ctx=server_context("TLSv1.2", cert=mitm_cert))
    victim_cb = channel_bindings_from_connection(mitm.client, server_side=False)
    rig = make_server()
    for cb_type in CB_TYPES:
        client = make_client("SCRAM-SHA-256-PLUS", "user", "pencil", channel_bindings=victim_cb,
                             cb_type=cb_type)
        out = run_exchange(rig.server, client, tls_conn(srv_cb))
        assert isinstance(out, Failure) and out.additional == b"e=channel-bindings-dont-match", cb_type


# --- scramp over Python's ssl: an independent client and TLS stack ----------------------


def _scramp_exchange(rig: Any, mech: str, cb: tuple[str, Any] | None, conn: Any) -> Any:
    import scramp

    client = scramp.ScramClient([mech], "user", "pencil", channel_binding=cb)
    exchange = rig.server.start(client.mechanism_name, conn)
    out = result(exchange.step(client.get_client_first().encode()))
    if not isinstance(out, Continue):
        return out
    client.set_server_first(out.challenge.decode())
    out = result(exchange.step(client.get_client_final().encode()))
    if isinstance(out, Success):
        client.set_server_final(out.additional.decode())  # raises unless v= verifies
    return out


@pytest.fixture(scope="module")
def scramp_accounts() -> dict[str, StoredSecrets]:
    # scramp refuses fewer than 4096 iterations
    return {"user": StoredSecrets.derive("pencil", iterations=4096, scrypt_n=TEST_SCRYPT_N)}


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_scramp_tls_server_end_point(version: str, mech: str, scramp_accounts) -> None:
    """scramp binding tls-server-end-point from the stdlib ssl peer certificate succeeds."""
    pair = stdlib_client_pair(version)
    rig = make_server(accounts=scramp_accounts)
    conn = tls_conn(channel_bindings_from_connection(pair.server))
    out = _scramp_exchange(rig, mech, ("tls-server-end-point", pair.client), conn)
    assert isinstance(out, Success) and out.authcid == "user"


def test_scramp_tls_unique_on_tls12(scramp_accounts) -> None:
    """scramp binding tls-unique (from Python's ssl) succeeds on TLS 1.2."""
    pair = stdlib_client_pair("TLSv1.2")
    rig = make_server(accounts=scramp_accounts)
    conn = tls_conn(channel_bindings_from_connection(pair.server))
    out = _scramp_exchange(rig, "SCRAM-SHA-256-PLUS", ("tls-unique", pair.client), conn)
    assert isinstance(out, Success)


def test_scramp_tls_unique_on_tls13_refused(scramp_accounts) -> None:
    """scramp sends tls-unique over TLS 1.3 (undefined there): refused with
    e=unsupported-channel-binding-type."""
    pair = stdlib_client_pair("TLSv1.3")
    rig = make_server(accounts=scramp_accounts)
    conn = tls_conn(channel_bindings_from_connection(pair.server))
    out = _scramp_exchange(rig, "SCRAM-SHA-256-PLUS", ("tls-unique", pair.client), conn)
    assert isinstance(out, Failure) and out.additional == b"e=unsupported-channel-binding-type"


def test_scramp_plain_scram(scramp_accounts) -> None:
    """scramp's non-PLUS SCRAM-SHA-1 (gs2 n) succeeds with mxd's server."""
    pair = stdlib_client_pair("TLSv1.3")
    rig = make_server(accounts=scramp_accounts)
    conn = tls_conn(channel_bindings_from_connection(pair.server))
    assert isinstance(_scramp_exchange(rig, "SCRAM-SHA-1", None, conn), Success)


# --- Twisted: TLSMemoryBIOFactory + iosim ------------------------------------------------


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
class _SASLLineServer(LineReceiver):
    """A toy carrier: ``AUTH MECH [b64|=]``, then base64 lines; answers ``+ b64``,
    ``OK [b64]`` or ``NO [b64]``, as SMTP/IMAP do in their own syntax."""

    delimiter = b"\n"

    def __init__(self, rig: Any) -> None:
        self.rig = rig
        self.bindings: ChannelBindings | None = None
        self.exchange: Any = None
        self.outcome: Any = None

    def handshakeCompleted(self) -> None:
        self.bindings = channel_bindings_from_transport(self.transport)
        conn = tls_conn(self.bindings)
        self.sendLine(b"CAPS " + " ".join(self.rig.server.advertised(conn)).encode())

    def lineReceived(self, line: bytes) -> None:
        if self.exchange is None:
            _, mech, *ir = line.split(b" ")
            self.exchange = self.rig.server.start(mech.decode(), tls_conn(self.bindings))
            data = None if not ir else (b"" if ir[0] == b"=" else base64.b64decode(ir[0]))
        else:
            data = base64.b64decode(line)
        self.exchange.step(data).addCallback(self._reply)

    def _reply(self, out: Any) -> None:
        if isinstance(out, Continue):
            self.sendLine(b"+ " + base64.b64encode(out.challenge))
            return
        self.outcome = out
        word = b"OK" if isinstance(out, Success) else b"NO"
        self.sendLine(word + b" " + base64.b64encode(out.additional or b""))


@implementer(IHandshakeListener)
class _SASLLineClient(LineReceiver):
    delimiter = b"\n"

    def __init__(self) -> None:
        self.bindings: ChannelBindings | None = None
        self.mech: Any = None
        self.verified: bool | None = None

    def handshakeCompleted(self) -> None:
        self.bindings = channel_bindings_from_transport(self.transport, server_side=False)

    def lineReceived(self, line: bytes) -> None:
        word, _, rest = line.partition(b" ")
        if word == b"CAPS":
            offered = rest.decode().split()
            name = choose_mechanism(offered, have_channel_binding=True)
            assert name is not None
            self.mech = make_client(name, "user", "pencil", channel_bindings=self.bindings,
                                    server_offered_plus=any(m.endswith("-PLUS") for m in offered))
            ir = self.mech.initial_response()
            self.sendLine(b"AUTH " + name.encode() + b" " + base64.b64encode(ir))
        elif word == b"+":
            self.sendLine(base64.b64encode(self.mech.step(base64.b64decode(rest))))
        elif word == b"OK":
            self.mech.finish(base64.b64decode(rest))
            self.verified = True
        else:
            self.verified = False


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_twisted_tls_transport_end_to_end(version: str) -> None:
    """Over Twisted's TLS (TLSMemoryBIOFactory, iosim), both ends compute matching
    bindings in handshakeCompleted, the server offers -PLUS, and the client's
    SCRAM-SHA-256-PLUS exchange succeeds with the server's signature verified."""
    rig = make_server(accounts={"user": secrets_for("pencil")})
    server_proto = _SASLLineServer(rig)
    client_proto = _SASLLineClient()
    sfac = TLSMemoryBIOFactory(_ServerCreator(server_context(version)), False,
                               Factory.forProtocol(lambda: server_proto))
    cfac = TLSMemoryBIOFactory(_ClientCreator(client_context(version)), True,
                               Factory.forProtocol(lambda: client_proto))
    clock = task.Clock()  # TLS write aggregation runs on the factory's clock
    sfac._clock = cfac._clock = clock
    addr = iosim.FakeAddress()
    client, server, pump = iosim.connectedServerAndClient(
        lambda: sfac.buildProtocol(addr), lambda: cfac.buildProtocol(addr), greet=False,
        clock=clock)
    for _ in range(50):
        pump.pump()
        if client_proto.verified is not None:
            break
    assert server_proto.bindings is not None and server_proto.bindings == client_proto.bindings
    assert server_proto.bindings.tls_version == version
    assert client_proto.mech.mechanism == "SCRAM-SHA-256-PLUS"
    assert client_proto.verified is True
    assert isinstance(server_proto.outcome, Success) and server_proto.outcome.authcid == "user"
