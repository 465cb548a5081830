"""How the queue runner reaches the next hop through a transport (``mxd.queue.routes``).

* ``direct``: MX hosts over plain TCP (the runner's own path).
* ``socks5``: the same MX hosts, DANE, MTA-STS and REQUIRETLS, with each TCP connection made
  through a SOCKS5 proxy (``mxd.socks5``; the proxy gets IP addresses only).
* ``smtp``/``submission``/``submissions``: one smarthost, its name resolved with mxd's
  resolver, TLS as the transport says (PKIX-verified against the host name by default;
  RFC 8314 implicit TLS for submissions), SASL AUTH (RFC 4954) for submission.
* ``fail``: no connection; the runner fails the recipients with the configured reply.

REQUIRETLS (RFC 8689 §4.2): a message that requires TLS goes only through a transport that
can verify the next hop; others fail it with 5.7.30.  ``TLS-Required: No`` (RFC 8689 §5)
relaxes a smarthost's verification (TLS is still used when offered).

Pure choices are functions here; the runner does the connecting and recording.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from mxd.queue.routes import SmarthostTLS, Transport, TransportKind
from mxd.smtp.client import ClientAuth, ClientSettings, SMTPClient, TLSMode, TLSPolicy
from mxd.tlsrpt.results import PolicyType

Connector = Callable[[str, int, SMTPClient], Deferred[Any]]


@attrs.frozen
class Via:
    """Everything an attempt needs to know about its transport."""

    transport: Transport
    reason: str  # why this transport: "override", "global route 2", "default", ...
    port: int  # the port dialled at the next hop (MX port, or the smarthost's)
    client_settings: ClientSettings | None = None  # None: direct delivery's (our EHLO name)
    connector: Connector | None = None  # None: direct delivery's TCP connector
    auth: ClientAuth | None = None
    implicit_tls: bool = False

    @property
    def name(self) -> str:
        return self.transport.name

    @property
    def key(self) -> tuple[str, ...]:
        """Part of the idle-connection key: a connection made through one transport is
        never reused by another (a proxied one for direct delivery, or an authenticated
        one for a transport with other credentials)."""
        return (self.transport.name,)


def requiretls_refusal(t: Transport) -> str | None:
    """Why ``t`` cannot carry a REQUIRETLS message (RFC 8689 §4.2), or None when it can."""
    if t.verified_tls:
        return None
    return (f"transport {t.name} ({t.kind}, tls={t.tls}) cannot verify the TLS of the next "
            "hop, which REQUIRETLS needs (RFC 8689 §4.2)")


def smarthost_policy(t: Transport, *, tls_required_no: bool, trust: Any = None) -> TLSPolicy:
    """The TLS policy toward a smarthost.

    ``verified``: TLS required and the certificate checked against the configured host
    name during the handshake (``optionsForClientTLS``, roots ``trust`` or the system's);
    ``required``: TLS without checks; ``opportunistic``; ``none``.  Under ``TLS-Required:
    No`` a verified transport uses TLS when offered without checking it."""
    from twisted.internet.ssl import CertificateOptions, optionsForClientTLS, platformTrust

    host = t.host or ""
    mode = {SmarthostTLS.VERIFIED: TLSMode.VERIFIED, SmarthostTLS.REQUIRED: TLSMode.REQUIRED,
            SmarthostTLS.OPPORTUNISTIC: TLSMode.OPPORTUNISTIC,
            SmarthostTLS.NONE: TLSMode.NONE}[t.tls]
    if mode is TLSMode.VERIFIED and tls_required_no:
        mode = TLSMode.REQUIRED if t.kind is TransportKind.SUBMISSIONS else \
            TLSMode.OPPORTUNISTIC
    if mode is TLSMode.VERIFIED:
        options: Any = optionsForClientTLS(host, trust if trust is not None else platformTrust())
    elif mode is TLSMode.NONE and t.kind is not TransportKind.SUBMISSIONS:
        options = None
    else:
        options = CertificateOptions()  # RFC 7435: encrypt without authenticating
    if t.kind is TransportKind.SUBMISSIONS and mode in (TLSMode.NONE, TLSMode.OPPORTUNISTIC):
        mode = TLSMode.REQUIRED  # implicit TLS: there is no connection without it
    return TLSPolicy(mode=mode, client_options=options, policy_type=PolicyType.NO_POLICY_FOUND,
                     policy_domain=host)


def client_auth(t: Transport) -> ClientAuth | None:
    """SASL credentials of a submission transport (None for other kinds)."""
    if t.kind not in (TransportKind.SUBMISSION, TransportKind.SUBMISSIONS):
        return None
    if not t.username or t.password is None:
        return None
    return ClientAuth(t.username, t.password, t.mechanisms or None)


def socks5_connector(reactor: Any, t: Transport, timeout: float) -> Connector:
    """Connect every SMTP client through the transport's SOCKS5 proxy."""
    from twisted.internet.endpoints import (
        TCP4ClientEndpoint,
        TCP6ClientEndpoint,
        connectProtocol,
    )

    from mxd.socks5 import Credentials, SOCKS5ClientEndpoint

    host, port = t.address
    creds = (Credentials(t.proxy_username, t.proxy_password or "")
             if t.proxy_username else None)

    def connect(ip: str, dport: int, client: SMTPClient) -> Deferred[Any]:
        cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        proxy = cls(reactor, host, port, timeout=timeout)
        endpoint = SOCKS5ClientEndpoint(proxy, ip, dport, reactor, credentials=creds,
                                        timeout=timeout)
        return connectProtocol(endpoint, client)

    return connect


def implicit_tls_connector(reactor: Any, policy: TLSPolicy, timeout: float) -> Connector:
    """RFC 8314 §3: TLS from the first byte; the handshake verifies when the policy's
    client options do."""
    from twisted.internet.endpoints import (
        TCP4ClientEndpoint,
        TCP6ClientEndpoint,
        connectProtocol,
        wrapClientTLS,
    )

    def connect(ip: str, port: int, client: SMTPClient) -> Deferred[Any]:
        cls = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
        tcp: Any = cls(reactor, ip, port, timeout=timeout)
        endpoint = wrapClientTLS(policy.client_options, tcp)
        return connectProtocol(endpoint, client)

    return connect
