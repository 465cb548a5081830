"""The server's certificates: one per name and host key, picked by SNI for every TLS listener.

Every certificate is made for one of the pre-generated host keys (``mxd.hostkeys``), so
inbound DANE records stay valid whatever certificate is in place.  Until a CA-signed
certificate exists for a name (ACME, ``mxd.acme``), a self-signed certificate for all names
on the same keys is served: DANE-EE (RFC 7672 §3.1.1) only looks at the key, and no
listener ever starts without a certificate.  A new certificate replaces the old one only
once it is completely in place (files written, context built); connections in progress
keep the context they started with.

Each context carries both the RSA and the ECDSA certificate: OpenSSL chooses per
connection from the client's signature algorithms (RFC 8446 §4.2.3).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from mxd.hostkeys import HostKey, KeyKind, PrivateKey, spki_sha256
from mxd.tls import TLS_VERSIONS, alpn_selector

log = Logger(namespace="mxd.certs")

ACME_TLS_ALPN = b"acme-tls/1"  # RFC 8737 §6.2
HTTP_ALPN = "http/1.1"


@attrs.frozen
class CertifiedKey:
    """A certificate chain (leaf first) and the host key it is for."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKey = attrs.field(repr=False)
    kind: KeyKind

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> datetime.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def self_signed(self) -> bool:
        return self.leaf.issuer == self.leaf.subject

    def pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def parse_pem_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    certs = tuple(x509.load_pem_x509_certificates(data))
    if not certs:
        raise ValueError("no PEM certificate found")
    return certs


def self_signed(names: Sequence[str], key: HostKey, now: datetime.datetime,
                days: int = 365) -> CertifiedKey:
    """A self-signed certificate for ``names`` on a host key (the fallback certificate)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key.key, hashes.SHA256())
    )
    return CertifiedKey((cert,), key.key, key.kind)


def cert_path(directory: Path, name: str, kind: KeyKind) -> Path:
    return directory / f"{name}.{kind.value}.pem"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CertStore:
    """Current certificates per (name, key kind) and the TLS contexts built from them.

    Thread-safe for reads from the reactor thread while an ACME worker thread installs a
    certificate (``install`` swaps whole values under a lock).
    """

    def __init__(self, names: Sequence[str], host_keys: Sequence[HostKey],
                 directory: Path | None, *, min_version: str = "TLSv1.2",
                 now: datetime.datetime | None = None) -> None:
        if not names:
            raise ValueError("at least one name is needed")
        if not host_keys:
            raise ValueError("at least one host key is needed")
        self.names = tuple(names)
        self.default_name = self.names[0]
        self.host_keys = tuple(host_keys)
        self.directory = directory
        self.min_version = min_version
        self._lock = threading.Lock()
        self._certs: dict[tuple[str, KeyKind], CertifiedKey] = {}
        self._contexts: dict[tuple[str, str | None, str | None], SSL.Context] = {}
        self._challenges: dict[str, tuple[tuple[x509.Certificate, PrivateKey], ...]] = {}
        now = now or datetime.datetime.now(datetime.UTC)
        self.fallback = {k.kind: self._fallback(k, now) for k in self.host_keys}
        if directory is not None:
            self._load(directory)

    def _fallback(self, hk: HostKey, now: datetime.datetime) -> CertifiedKey:
        """The self-signed certificate on ``hk``, kept in the directory across restarts
        (so a client may pin it) and made anew when names change or it nears its end."""
        path = self.directory / f"selfsigned.{hk.kind.value}.pem" if self.directory else None
        if path is not None:
            try:
                leaf = parse_pem_chain(path.read_bytes())[0]
                names = leaf.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
                if (spki_sha256_of_cert(leaf) == hk.spki_sha256 and list(names) ==
                        list(self.names) and leaf.not_valid_after_utc - now >
                        datetime.timedelta(days=30)):
                    return CertifiedKey((leaf,), hk.key, hk.kind)
            except (OSError, ValueError, x509.ExtensionNotFound):
                pass
        made = self_signed(self.names, hk, now)
        if path is not None:
            write_atomic(path, made.pem())
        return made

    # -- certificates --------------------------------------------------------------------

    def _load(self, directory: Path) -> None:
        by_spki = {k.spki_sha256: k for k in self.host_keys}
        for name in self.names:
            for hk in self.host_keys:
                path = cert_path(directory, name, hk.kind)
                try:
                    chain = parse_pem_chain(path.read_bytes())
                except FileNotFoundError:
                    continue
                except (OSError, ValueError) as e:
                    log.error("ignoring certificate {path}: {error}", path=str(path),
                              error=str(e))
                    continue
                if by_spki.get(spki_sha256_of_cert(chain[0])) is not hk:
                    log.error("ignoring certificate {path}: not for host key {key}",
                              path=str(path), key=str(hk.path))
                    continue
                self._certs[(name, hk.kind)] = CertifiedKey(chain, hk.key, hk.kind)

    def file_stamps(self) -> dict[Path, tuple[int, int]]:
        """(mtime ns, size) of each certificate file present, to notice a new one."""
        out: dict[Path, tuple[int, int]] = {}
        if self.directory is None:
            return out
        for name in self.names:
            for hk in self.host_keys:
                path = cert_path(self.directory, name, hk.kind)
                try:
                    st = path.stat()
                except OSError:
                    continue
                out[path] = (st.st_mtime_ns, st.st_size)
        return out

    def reload(self) -> int:
        """Read the certificate files again (another process installed new ones, e.g.
        the main process's ACME service when workers serve TLS); returns how many
        certificates changed.  Contexts of changed names are built anew."""
        if self.directory is None:
            return 0
        fresh = CertStore.__new__(CertStore)
        fresh.names, fresh.host_keys = self.names, self.host_keys
        fresh._certs = {}
        fresh._load(self.directory)
        changed = [k for k, v in fresh._certs.items()
                   if self._certs.get(k) is None or self._certs[k].pem() != v.pem()]
        if changed:
            with self._lock:
                self._certs.update({k: fresh._certs[k] for k in changed})
                names = {k[0] for k in changed}
                self._contexts = {k: v for k, v in self._contexts.items() if k[0] not in names}
            for name, kind in changed:
                log.info("certificate for {name} ({kind}) reloaded", name=name, kind=kind.value)
        return len(changed)

    def get(self, name: str, kind: KeyKind) -> CertifiedKey | None:
        """The CA-issued certificate in use for ``name`` and ``kind``, if any."""
        return self._certs.get((name, kind))

    def current(self, name: str) -> list[CertifiedKey]:
        """What a client asking for ``name`` is served (CA-issued, else self-signed)."""
        return [self._certs.get((name, k.kind)) or self.fallback[k.kind]
                for k in self.host_keys]

    def install(self, name: str, certified: CertifiedKey) -> None:
        """Write the new chain to disk, then switch to it (the old one stays in use until
        then; a failure leaves everything as it was)."""
        if spki_sha256_of_cert(certified.leaf) != spki_sha256(certified.key):
            raise ValueError(f"certificate for {name} is not for its host key")
        if self.directory is not None:
            write_atomic(cert_path(self.directory, name, certified.kind), certified.pem())
        with self._lock:
            self._certs[(name, certified.kind)] = certified
            self._contexts = {k: v for k, v in self._contexts.items() if k[0] != name}

    # -- TLS-ALPN-01 challenge certificates (RFC 8737) ---------------------------------

    def set_challenge(self, name: str,
                      certs: Sequence[tuple[x509.Certificate, PrivateKey]]) -> None:
        """While a validation for ``name`` is pending, a client that offers only ALPN
        ``acme-tls/1`` gets these certificates (one per key type, so whichever OpenSSL
        picks is a challenge certificate); every other client is unaffected."""
        with self._lock:
            self._challenges[name] = tuple(certs)

    def clear_challenge(self, name: str) -> None:
        with self._lock:
            self._challenges.pop(name, None)

    # -- contexts ------------------------------------------------------------------------

    def context(self, name: str | None, max_version: str | None = None,
                alpn: str | None = None) -> SSL.Context:
        """The context for SNI ``name`` (unknown or absent: the default name) on a listener
        speaking ``alpn`` ("smtp", "imap", or HTTP_ALPN on the https listener)."""
        if name not in self.names:
            name = self.default_name
        key = (name, max_version, alpn)
        with self._lock:
            ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._build(name, max_version, alpn)
            with self._lock:
                self._contexts[key] = ctx
        return ctx

    def _build(self, name: str, max_version: str | None, alpn: str | None) -> SSL.Context:
        certified = self.current(name)
        first, rest = certified[0], certified[1:]
        kwargs: dict[str, Any] = {}
        if max_version is not None:
            kwargs["lowerMaximumSecurityTo"] = TLS_VERSIONS[max_version]
        opts = ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(first.key),
            certificate=crypto.X509.from_cryptography(first.leaf),
            raiseMinimumTo=TLS_VERSIONS[self.min_version], **kwargs)
        ctx = opts.getContext()
        for c in (first, *rest):
            _use_chain(ctx, c)
        ctx.check_privatekey()
        ctx.set_options(SSL.OP_NO_RENEGOTIATION)
        if alpn == HTTP_ALPN:
            ctx.set_alpn_select_callback(self._http_alpn)
        elif alpn is not None:  # RFC 7301 §3.2: refuse a client speaking another protocol
            ctx.set_alpn_select_callback(alpn_selector(alpn.encode("ascii")))
        else:
            ctx.set_alpn_select_callback(lambda conn, offered: SSL.NO_OVERLAPPING_PROTOCOLS)
        ctx.set_tlsext_servername_callback(self._servername(max_version, alpn))
        return ctx

    def _servername(self, max_version: str | None, alpn: str | None) -> Any:
        def pick(conn: SSL.Connection) -> None:
            raw = conn.get_servername()
            if not raw:
                return
            try:
                name = raw.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                return
            if name in self.names and name != self.default_name:
                conn.set_context(self.context(name, max_version, alpn))
        return pick

    def _http_alpn(self, conn: SSL.Connection, offered: Sequence[bytes]) -> Any:
        """ALPN on the https listener: http/1.1, or a TLS-ALPN-01 validation (RFC 8737 §3).

        OpenSSL selects the certificate after this callback, so replacing the
        connection's certificates here answers the validator with the challenge
        certificate without touching other clients' handshakes."""
        if ACME_TLS_ALPN in offered:
            raw = conn.get_servername() or b""
            name = raw.decode("ascii", "replace").lower().rstrip(".")
            with self._lock:
                pending = self._challenges.get(name, ())
            if pending:
                for cert, key in pending:
                    conn.use_certificate(cert)
                    conn.use_privatekey(key)
                log.info("answering ACME TLS-ALPN-01 validation for {name}", name=name)
                return ACME_TLS_ALPN
        return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    def server_tls(self, max_version: str | None = None,
                   alpn: str | None = None) -> ServerTLS:
        """A connection creator for a listener (STARTTLS or implicit TLS)."""
        return ServerTLS(self, max_version, alpn)


class CertReloader:
    """A worker process's watch on the certificate files (``CertStore.reload`` when one
    changes, looked at every ``interval`` seconds: a few stat calls): ACME runs in the main
    process only."""

    def __init__(self, store: CertStore, clock: Any, interval: float = 1.0) -> None:
        from twisted.application.internet import TimerService

        self.store = store
        self._stamps = store.file_stamps()
        self._service = TimerService(interval, self.check)
        self._service.clock = clock

    def check(self) -> int:
        stamps = self.store.file_stamps()
        if stamps == self._stamps:
            return 0
        self._stamps = stamps
        return self.store.reload()

    def setServiceParent(self, parent: Any) -> None:
        self._service.setServiceParent(parent)


def _use_chain(ctx: SSL.Context, certified: CertifiedKey) -> None:
    """Put a certificate and *its own* chain in the context's slot for its key type.

    The RSA and ECDSA certificates of a CA usually come from different intermediates;
    ``SSL_CTX_use_certificate_chain_file`` keeps a chain per key slot, where
    ``add_extra_chain_cert`` would send every intermediate with both."""
    if len(certified.chain) == 1:
        ctx.use_certificate(certified.leaf)
    else:
        with tempfile.NamedTemporaryFile(suffix=".pem") as f:
            f.write(certified.pem())
            f.flush()
            ctx.use_certificate_chain_file(f.name)
    ctx.use_privatekey(certified.key)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Makes each server connection from the store's current default context; SNI may
    switch it to another name's context during the handshake."""

    def __init__(self, store: CertStore, max_version: str | None, alpn: str | None) -> None:
        self.store = store
        self.max_version = max_version
        self.alpn = alpn

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.store.context(None, self.max_version, self.alpn), None)


def spki_sha256_of_cert(cert: x509.Certificate) -> bytes:
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def names_for(hostname: str, domains: Iterable[str]) -> list[str]:
    """The names this server needs certificates for: its host name, then per domain the
    MTA-STS policy host (RFC 8461 §3.3) and the autoconfig host."""
    out = [hostname]
    for d in domains:
        for n in (f"mta-sts.{d}", f"autoconfig.{d}"):
            if n not in out:
                out.append(n)
    return out
