"""ALPN selection of the server contexts (RFC 7301 §3.2, ALPACA) and handshake reasons."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.python.failure import Failure

from mxd.tls import ALPNRefused, TLSSettings, alpn_selector, handshake_failure, load_server_tls


def test_selector_accepts_own_protocol_among_others() -> None:
    select = alpn_selector(b"imap")
    assert select(None, [b"h2", b"imap"]) == b"imap"  # type: ignore[arg-type]


@pytest.mark.parametrize("offered", [[b"http/1.1"], [b"smtp"], [b"IMAP"], [b""]])
def test_selector_refuses_other_protocols(offered: list[bytes]) -> None:
    with pytest.raises(ALPNRefused) as info:
        alpn_selector(b"imap")(None, offered)  # type: ignore[arg-type]
    # Twisted's TLS layer unpacks the OpenSSL error-queue shape.
    [(_, _, reason)] = info.value.args[0]
    assert "this port speaks 'imap' only" in reason


def test_handshake_failure_reasons() -> None:
    try:
        raise ALPNRefused("client offered ALPN 'h2'")
    except ALPNRefused:
        f = Failure()
    assert handshake_failure(f) == "client offered ALPN 'h2'"
    try:
        raise SSL.Error([("SSL routines", "", "no shared cipher")])
    except SSL.Error:
        f = Failure()
    assert handshake_failure(f) == "no shared cipher"
    assert handshake_failure(Failure(ConnectionResetError())) is None
    assert handshake_failure(None) is None


def _handshake(options: object, alpn: list[str] | None, ca: Path) -> str | None:
    """Run a memory-BIO handshake between stdlib ssl (client) and the server context."""
    server = SSL.Connection(options.getContext(), None)  # type: ignore[attr-defined]
    server.set_accept_state()
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(cin, cout, server_hostname="localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            return client.selected_alpn_protocol()
        except ssl.SSLWantReadError:
            pass
        server.bio_write(cout.read())
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error:
            pass
        try:
            cin.write(server.bio_read(65536))
        except SSL.WantReadError:
            pass
    raise AssertionError("handshake did not finish")


def test_context_alpn(tls_files: dict[str, Path]) -> None:
    """Before the fix every hello with ALPN got internal_error (alert 80)."""
    options = load_server_tls(TLSSettings(tls_files["cert"], tls_files["key"]), alpn="smtp")
    assert _handshake(options, ["smtp"], tls_files["ca"]) == "smtp"
    assert _handshake(options, None, tls_files["ca"]) is None
    with pytest.raises(ssl.SSLError, match="(?i)no.application.protocol"):
        _handshake(options, ["http/1.1"], tls_files["ca"])
    neutral = load_server_tls(TLSSettings(tls_files["cert"], tls_files["key"]))
    assert _handshake(neutral, ["http/1.1"], tls_files["ca"]) is None
