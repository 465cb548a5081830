"""aiosasl (an independent client) against mxd's SASL server, in memory, with channel
binding data from a real in-memory TLS connection."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosasl
import pytest
from aiosasl.channel_binding import ChannelBindingProvider, TLSUnique
from twisted.internet import task

from mxd.sasl.api import Continue, ServerExchange, Success
from mxd.sasl.channelbinding import EXPORTER_LABEL, channel_bindings_from_connection
from mxd.sasl.testing import InMemorySecrets, sasl_server_for_tests

from .helpers import pyopenssl_pair, result, tls_conn


class _InMemoryInterface(aiosasl.SASLInterface):  # type: ignore[misc]
    """aiosasl's protocol seam, carried straight into a ServerExchange."""

    def __init__(self, server: Any, conn: Any) -> None:
        self.server = server
        self.conn = conn
        self.exchange: ServerExchange | None = None
        self.outcomes: list[Any] = []

    def _map(self, out: Any) -> Any:
        self.outcomes.append(out)
        if isinstance(out, Continue):
            return aiosasl.SASLState.CHALLENGE, out.challenge
        if isinstance(out, Success):
            return aiosasl.SASLState.SUCCESS, out.additional
        raise aiosasl.SASLFailure("not-authorized", text=(out.additional or b"").decode())

    async def initiate(self, mechanism: str, payload: bytes | None = None) -> Any:
        self.exchange = self.server.start(mechanism, self.conn)
        return self._map(result(self.exchange.step(payload)))

    async def respond(self, payload: bytes) -> Any:
        assert self.exchange is not None
        return self._map(result(self.exchange.step(payload)))

    async def abort(self) -> None:
        return None


class _Exporter(ChannelBindingProvider):  # type: ignore[misc]
    """tls-exporter from the client side of a pyOpenSSL connection (RFC 9266)."""

    def __init__(self, conn: Any) -> None:
        super().__init__()
        self.conn = conn

    @property
    def cb_name(self) -> bytes:
        return b"tls-exporter"

    def extract_cb_data(self) -> bytes:
        return self.conn.export_keying_material(EXPORTER_LABEL, 32, None)


def _setup(version: str) -> tuple[Any, Any, Any]:
    pair = pyopenssl_pair(version)
    secrets = InMemorySecrets(iterations=4096)  # aiosasl enforces the SCRAM minimum
    secrets.add("alice", "s3cret")
    server = sasl_server_for_tests(secrets, task.Clock())
    conn = tls_conn(channel_bindings_from_connection(pair.server))
    return pair, server, _InMemoryInterface(server, conn)


async def _creds() -> tuple[str, str]:
    return "alice", "s3cret"


def _run(mech: Any, iface: Any) -> None:
    async def go() -> None:
        sm = aiosasl.SASLStateMachine(iface)
        token = mech.any_supported(iface.server.advertised(iface.conn))
        assert token is not None
        await mech.authenticate(sm, token)
    asyncio.run(go())


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_aiosasl_scram_plus_tls_exporter(version: str) -> None:
    """aiosasl SCRAM-SHA-256-PLUS with tls-exporter taken from the client's pyOpenSSL
    connection (no context) authenticates, and the server's signature verifies."""
    pair, server, iface = _setup(version)
    _run(aiosasl.SCRAMPLUS(_creds, _Exporter(pair.client)), iface)
    assert isinstance(iface.outcomes[-1], Success) and iface.outcomes[-1].authcid == "alice"
    assert iface.exchange.mechanism == "SCRAM-SHA-256-PLUS"


def test_aiosasl_tls_unique_on_tls12() -> None:
    """aiosasl's own tls-unique provider (pyOpenSSL get_finished) agrees with mxd on TLS 1.2."""
    pair, server, iface = _setup("TLSv1.2")
    _run(aiosasl.SCRAMPLUS(_creds, TLSUnique(pair.client)), iface)
    assert isinstance(iface.outcomes[-1], Success)


def test_aiosasl_downgrade_y_refused() -> None:
    """aiosasl SCRAM with after_scram_plus (gs2 y) is refused where -PLUS was offered."""
    pair, server, iface = _setup("TLSv1.3")
    with pytest.raises(aiosasl.SASLFailure) as ei:
        _run(aiosasl.SCRAM(_creds, after_scram_plus=True), iface)
    assert "server-does-support-channel-binding" in str(ei.value)


def test_aiosasl_plain() -> None:
    """aiosasl PLAIN authenticates over TLS."""
    pair, server, iface = _setup("TLSv1.3")
    _run(aiosasl.PLAIN(_creds), iface)
    assert isinstance(iface.outcomes[-1], Success)
