"""mxd's SOCKS5 client (mxd.socks5) against real proxies: microsocks (with and without
RFC 1929 username/password) and dante.  mxd's SMTP client talks to an aiosmtpd sink through
the proxy, with STARTTLS verified end to end on top of the proxied stream; the proxy's own
log shows the tunnel.  Failure cases: wrong password, a destination that refuses."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint

from mxd.smtp.client import (
    ClientMessage,
    ClientRecipient,
    ClientSettings,
    SMTPClient,
    TLSMode,
    TLSPolicy,
)
from mxd.socks5 import Credentials, SOCKS5ClientEndpoint, SOCKSAuthError, SOCKSReplyError
from tests.integration.proxies import Dante, Microsocks
from tests.integration.test_queue_delivery import run
from tests.integration.tools import free_port
from tests.queue.sinks import AiosmtpdSink

pytestmark = pytest.mark.integration

BODY = b"From: a@example.org\r\nTo: b@remote.test\r\nSubject: via proxy\r\n\r\nhello\r\n"


def _policy(ca: Path) -> TLSPolicy:
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    options = optionsForClientTLS("localhost", Certificate.loadPEM(ca.read_bytes()))
    return TLSPolicy(mode=TLSMode.VERIFIED, client_options=options, policy_type="sts")


async def _send(reactor: Any, proxy_port: int, dest_port: int, ca: Path,
                creds: Credentials | None) -> SMTPClient:
    endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port),
                                    "127.0.0.1", dest_port, reactor, credentials=creds,
                                    timeout=10)
    client = SMTPClient(reactor, ClientSettings(helo_name="relay.example.org"), _policy(ca),
                        "localhost")
    from twisted.internet.endpoints import connectProtocol

    await connectProtocol(endpoint, client)
    await client.start()
    result = await client.send(ClientMessage("a@example.org", (ClientRecipient("b@remote.test"),),
                                             size=len(BODY)), io.BytesIO(BODY))
    assert all(r.delivered for r in result.recipients)
    await client.quit()
    return client


@pytest.mark.parametrize("auth", [False, True], ids=["noauth", "rfc1929"])
def test_microsocks_carries_verified_starttls(auth: bool, tls_files: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink gets the message over TLS that mxd verified; microsocks logged the tunnel."""
    creds = Credentials("mxd", "s0cks-secret") if auth else None
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink, \
            Microsocks(*((creds.username, creds.password) if creds else ())) as proxy:
        async def go(reactor: Any) -> SMTPClient:
            return await _send(reactor, proxy.port, sink.port, tls_files["ca"], creds)

        client = run(go, monkeypatch)
        assert client.tls_result.used and client.tls_result.verified
        assert sink.count() == 1 and sink.messages[0]["tls"]
        assert proxy.connected_to(sink.port)  # type: ignore[attr-defined]


def test_dante_carries_verified_starttls(tls_files: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with AiosmtpdSink(tls_files["cert"], tls_files["key"]) as sink, Dante() as proxy:
        async def go(reactor: Any) -> SMTPClient:
            return await _send(reactor, proxy.port, sink.port, tls_files["ca"], None)

        client = run(go, monkeypatch)
        assert client.tls_result.verified and sink.count() == 1
        assert proxy.connected_to(sink.port)


def test_microsocks_wrong_password(tls_files: dict[str, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """microsocks refuses a wrong RFC 1929 password: a typed SOCKSAuthError, temporary."""
    with Microsocks("mxd", "right") as proxy:
        async def go(reactor: Any) -> Exception:
            try:
                await _send(reactor, proxy.port, free_port(), tls_files["ca"],
                            Credentials("mxd", "wrong"))
            except Exception as e:
                return e
            raise AssertionError("connected with a wrong password")

        err = run(go, monkeypatch)
        assert isinstance(err, SOCKSAuthError) and not err.permanent
        assert "refused the username/password" in str(err)


@pytest.mark.parametrize("proxy_cls", [Microsocks, Dante], ids=["microsocks", "dante"])
def test_destination_refuses(proxy_cls: Any, tls_files: dict[str, Path],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed destination port comes back as the proxy's failure reply, in its words."""
    with proxy_cls() as proxy:
        async def go(reactor: Any) -> Exception:
            try:
                await _send(reactor, proxy.port, free_port(), tls_files["ca"], None)
            except Exception as e:
                return e
            raise AssertionError("connected to a closed port")

        err = run(go, monkeypatch)
        assert isinstance(err, SOCKSReplyError), err
        assert err.reply != 0 and str(err).startswith("SOCKS proxy: ")
