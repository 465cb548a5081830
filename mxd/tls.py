"""Server-side TLS settings and context factories (RFC 8996: TLS 1.2 and later only).

ALPN (RFC 7301): each listener's context knows the one application protocol it speaks
("imap" or "smtp", from the IANA ALPN registry).  As the ALPACA work recommends
(cross-protocol attacks, USENIX Security 2021, §7), a client hello without ALPN or with
that protocol among its offers is accepted, and one that offers only other protocols
(say "http/1.1") is refused with the fatal ``no_application_protocol`` alert (RFC 7301
§3.2).  Twisted's ``CertificateOptions`` installs a selection callback that returns an
empty name when nothing overlaps, which OpenSSL answers with ``internal_error`` for
every client that sends ALPN at all; ``load_server_tls`` replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from OpenSSL import SSL, crypto
from twisted.internet import ssl

from mxd.errors import MxdError

TLS_VERSIONS = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


class TLSConfigError(MxdError):
    """Certificate or key files are missing, unreadable or do not match."""


@attrs.frozen
class TLSSettings:
    cert: Path  # PEM: leaf certificate first, then the chain
    key: Path  # PEM private key
    min_version: str = "TLSv1.2"
    max_version: str | None = None  # None: the newest the library supports (TLS 1.3)

    def __attrs_post_init__(self) -> None:
        for v in (self.min_version, self.max_version):
            if v is not None and v not in TLS_VERSIONS:
                raise TLSConfigError(f"unknown TLS version {v!r}; use one of {sorted(TLS_VERSIONS)}")


class ALPNRefused(SSL.Error):
    """The client offered only application protocols this listener does not speak.

    Raised from the ALPN callback: pyOpenSSL turns it into SSL_TLSEXT_ERR_ALERT_FATAL,
    which OpenSSL sends as ``no_application_protocol`` (alert 120), and re-raises it from
    the handshake, where Twisted's TLS layer ends the connection with it as the reason.
    Its argument has OpenSSL's error-queue shape (a list of (library, function, reason)),
    which Twisted's TLS layer unpacks."""

    def __init__(self, reason: str) -> None:
        super().__init__([("mxd", "alpn", reason)])


def alpn_selector(protocol: bytes) -> Any:
    """The ALPN select callback of a listener speaking ``protocol`` (RFC 7301 §3.2)."""

    def select(conn: SSL.Connection, offered: Sequence[bytes]) -> bytes:
        if protocol in offered:
            return protocol
        shown = ", ".join(repr(p.decode("ascii", "replace")) for p in offered[:8])
        raise ALPNRefused(f"client offered ALPN {shown}; this port speaks "
                          f"{protocol.decode('ascii')!r} only")

    return select


def handshake_failure(reason: Any) -> str | None:
    """Why a TLS handshake failed, from a connection-lost ``Failure``; None if the
    failure is not a TLS error (the peer simply went away, say)."""
    value = getattr(reason, "value", None)
    if isinstance(value, SSL.Error):
        parts = []
        for err in value.args[0] if value.args and isinstance(value.args[0], list) else []:
            if isinstance(err, tuple) and err:
                parts.append(str(err[-1]))
        return "; ".join(p for p in parts if p) or str(value) or type(value).__name__
    return None


def _read_pem_chain(path: Path) -> list[crypto.X509]:
    data = path.read_bytes()
    certs = []
    marker = b"-----BEGIN CERTIFICATE-----"
    for part in data.split(marker)[1:]:
        certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, marker + part))
    if not certs:
        raise TLSConfigError(f"{path}: no PEM certificate found")
    return certs


def load_server_tls(settings: TLSSettings, alpn: str | None = None) -> ssl.CertificateOptions:
    """Build a server context factory; raise TLSConfigError with the file name on failure.

    ``alpn`` is the listener's application protocol ("imap", "smtp"): a client that
    offers ALPN without it is refused (see the module docstring).  With None the
    context takes no part in ALPN: offers are accepted and none is selected."""
    try:
        chain = _read_pem_chain(settings.cert)
    except OSError as e:
        raise TLSConfigError(f"cannot read certificate {settings.cert}: {e.strerror}") from e
    except crypto.Error as e:
        raise TLSConfigError(f"{settings.cert}: not a valid PEM certificate: {e}") from e
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, settings.key.read_bytes())
    except OSError as e:
        raise TLSConfigError(f"cannot read private key {settings.key}: {e.strerror}") from e
    except crypto.Error as e:
        raise TLSConfigError(f"{settings.key}: not a valid PEM private key: {e}") from e
    # Check that key and certificate belong together before any listener starts.
    ctx = SSL.Context(SSL.TLS_METHOD)
    try:
        ctx.use_certificate(chain[0])
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error as e:
        raise TLSConfigError(f"{settings.key} does not match {settings.cert}") from e
    kwargs = {}
    if settings.max_version is not None:
        kwargs["lowerMaximumSecurityTo"] = TLS_VERSIONS[settings.max_version]
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLS_VERSIONS[settings.min_version],
        **kwargs,
    )
    # Channel bindings (RFC 5929, RFC 9266) are computed once after the handshake; a
    # renegotiation would change tls-unique under an authenticated session.  The cached
    # context is the one every connection made from these options uses.
    context = options.getContext()
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    if alpn is not None:
        context.set_alpn_select_callback(alpn_selector(alpn.encode("ascii")))
    else:
        context.set_alpn_select_callback(lambda conn, offered: SSL.NO_OVERLAPPING_PROTOCOLS)
    return options


