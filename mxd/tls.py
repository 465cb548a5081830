"""Server-side TLS settings and context factories (RFC 8996: TLS 1.2 and later only)."""

from __future__ import annotations

from pathlib import Path

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


def _read_pem_chain(path: Path) -> list[crypto.X509]:
    data = path.read_bytes()
    certs = []
    marker = b"-----BEGIN CERTIFICATE-----"
    for part in data.split(marker)[1:]:
        certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, marker + part))
    if not certs:
        raise TLSConfigError(f"{path}: no PEM certificate found")
    return certs


def load_server_tls(settings: TLSSettings) -> ssl.CertificateOptions:
    """Build a server context factory; raise TLSConfigError with the file name on failure."""
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
    options.getContext().set_options(SSL.OP_NO_RENEGOTIATION)
    return options


