"""In-memory TLS connections and cheap credentials for the SASL tests."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from functools import cache
from typing import Any

import attrs
import trustme
from OpenSSL import SSL
from twisted.internet import task
from twisted.internet.defer import Deferred

from mxd.sasl.api import ConnectionInfo, Outcome
from mxd.sasl.credentials import StoredSecrets
from mxd.sasl.ratelimit import AuthLimiter, AuthLimiterSettings
from mxd.sasl.server import SASLServer, SASLSettings

TEST_ITERATIONS = 64
TEST_SCRYPT_N = 2**10
OP_NO_EXTENDED_MASTER_SECRET = 0x1  # OpenSSL 3: SSL_OP_NO_EXTENDED_MASTER_SECRET

VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


@cache
def secrets_for(password: str, cram: bool = True) -> StoredSecrets:
    return StoredSecrets.derive(password, iterations=TEST_ITERATIONS, cram_md5=cram,
                                scrypt_n=TEST_SCRYPT_N)


@cache
def ca() -> trustme.CA:
    return trustme.CA()


@cache
def leaf() -> trustme.LeafCert:
    return ca().issue_cert("localhost", "127.0.0.1")


def server_context(version: str, *, ems: bool = True, cert: trustme.LeafCert | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    (cert or leaf()).configure_cert(ctx)
    ctx.set_min_proto_version(VERSIONS[version])
    ctx.set_max_proto_version(VERSIONS[version])
    if not ems:
        ctx.set_options(OP_NO_EXTENDED_MASTER_SECRET)
    ctx.set_session_id(b"mxd-tests")
    return ctx


def client_context(version: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ca().configure_trust(ctx)
    ctx.set_min_proto_version(VERSIONS[version])
    ctx.set_max_proto_version(VERSIONS[version])
    return ctx


def _step(conn: Any) -> None:
    try:
        conn.do_handshake()
    except (SSL.WantReadError, ssl.SSLWantReadError):
        pass


def _pump(server: SSL.Connection, client_out: Callable[[], bytes], client_in: Callable[[bytes], None],
          client_step: Callable[[], None], done: Callable[[], bool]) -> None:
    for _ in range(50):
        client_step()
        data = client_out()
        if data:
            server.bio_write(data)
        _step(server)
        try:
            back = server.bio_read(1 << 20)
        except SSL.WantReadError:
            back = b""
        if back:
            client_in(back)
        client_step()
        if done() and not back and not data:
            return
    raise AssertionError("TLS handshake did not complete")


def _read_all(conn: SSL.Connection) -> bytes:
    try:
        return conn.bio_read(1 << 20)
    except SSL.WantReadError:
        return b""


def _exchange_app_data(server: SSL.Connection, client: SSL.Connection) -> None:
    """One byte each way, so TLS 1.3 session tickets reach the client."""
    client.send(b"x")
    server.bio_write(_read_all(client))
    assert server.recv(10) == b"x"
    server.send(b"y")
    client.bio_write(_read_all(server))
    assert client.recv(10) == b"y"


@attrs.define
class PyOpenSSLPair:
    server: SSL.Connection
    client: SSL.Connection


def pyopenssl_pair(version: str, *, ems: bool = True, server_ctx: SSL.Context | None = None,
                   client_ctx: SSL.Context | None = None, session: SSL.Session | None = None,
                   ) -> PyOpenSSLPair:
    """Both ends of a completed TLS handshake over memory BIOs."""
    sctx = server_ctx or server_context(version, ems=ems)
    cctx = client_ctx or client_context(version)
    server = SSL.Connection(sctx, None)
    server.set_accept_state()
    client = SSL.Connection(cctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    if session is not None:
        client.set_session(session)

    def handshake_done() -> bool:
        return bool(server.get_peer_finished()) and bool(client.get_peer_finished())

    _pump(server, lambda: _read_all(client), client.bio_write, lambda: _step(client), handshake_done)
    _exchange_app_data(server, client)
    return PyOpenSSLPair(server, client)


def resumed_pair(version: str, *, ems: bool = True) -> PyOpenSSLPair:
    """A second connection that resumes the first one's session."""
    sctx = server_context(version, ems=ems)
    cctx = client_context(version)
    first = pyopenssl_pair(version, server_ctx=sctx, client_ctx=cctx)
    return pyopenssl_pair(version, server_ctx=sctx, client_ctx=cctx, session=first.client.get_session())


@attrs.define
class StdlibPair:
    server: SSL.Connection
    client: ssl.SSLObject


def stdlib_client_pair(version: str, *, ems: bool = True) -> StdlibPair:
    """A pyOpenSSL server and a Python stdlib ``ssl`` client (an independent stack
    for tls-unique and the server certificate)."""
    server = SSL.Connection(server_context(version, ems=ems), None)
    server.set_accept_state()
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca().configure_trust(cctx)
    cctx.minimum_version = cctx.maximum_version = (
        ssl.TLSVersion.TLSv1_2 if version == "TLSv1.2" else ssl.TLSVersion.TLSv1_3)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(incoming, outgoing, server_hostname="localhost")

    def done() -> bool:
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return bool(server.get_peer_finished())

    _pump(server, outgoing.read, incoming.write, lambda: _step(client), done)
    return StdlibPair(server, client)


# --- a SASLServer wired to fakes -------------------------------------------------------


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}

    def inc(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counts[key] = self.counts.get(key, 0) + 1

    def total(self, name: str, **labels: str) -> int:
        want = set(labels.items())
        return sum(n for (k, lab), n in self.counts.items() if k == name and want <= set(lab))


@attrs.define
class ServerRig:
    server: SASLServer
    clock: task.Clock
    limiter: AuthLimiter
    metrics: FakeMetrics
    accounts: dict[str, StoredSecrets]
    lookups: list[str]


def make_server(*, accounts: dict[str, StoredSecrets] | None = None,
                settings: SASLSettings | None = None,
                limiter_settings: AuthLimiterSettings | None = None,
                lookup: Callable[[str], Deferred[StoredSecrets | None]] | None = None) -> ServerRig:
    clock = task.Clock()
    clock.advance(1_700_000_000)
    metrics = FakeMetrics()
    limiter = AuthLimiter(clock, limiter_settings, metrics)
    accts = accounts if accounts is not None else {"user": secrets_for("pencil")}
    lookups: list[str] = []

    def default_lookup(name: str) -> Deferred[StoredSecrets | None]:
        lookups.append(name)
        from twisted.internet.defer import succeed
        return succeed(accts.get(name))

    st = settings or SASLSettings(fake_salt_key=b"k" * 32, fake_scram_iterations=TEST_ITERATIONS,
                                  fake_scrypt_n=TEST_SCRYPT_N)
    server = SASLServer(lookup or default_lookup, st, limiter, clock, "mx.example.test",
                        metrics=metrics)
    return ServerRig(server, clock, limiter, metrics, accts, lookups)


def result(d: Deferred[Outcome]) -> Outcome:
    """The synchronous result of a Deferred that must already have fired."""
    out: list[Outcome] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def tls_conn(bindings: Any = None, *, ip: str = "192.0.2.1", tls: bool = True,
             loopback: bool = False) -> ConnectionInfo:
    return ConnectionInfo(remote_ip=ip, tls=tls, loopback=loopback, channel_bindings=bindings)


def run_exchange(server: SASLServer, client: Any, conn: ConnectionInfo, *,
                 initial: bool = True) -> Outcome:
    """Drive ``client`` (a ClientMechanism) against ``server`` to the end; on Success,
    let the client check the success data (SCRAM's server signature)."""
    from mxd.sasl.api import Continue, Success

    exchange = server.start(client.mechanism, conn)
    out = result(exchange.step(client.initial_response() if initial else None))
    for _ in range(10):
        if not isinstance(out, Continue):
            break
        out = result(exchange.step(client.step(out.challenge)))
    if isinstance(out, Success):
        client.finish(out.additional)
    return out
