"""The SASL contract between mechanisms and the protocols that carry them (RFC 4422).

Twisted's ``IChallengeResponse`` cannot express client-first mechanisms, initial
responses or channel binding, so mxd uses its own small API:

* a protocol (SMTP AUTH, IMAP AUTHENTICATE) asks ``SASLServer.advertised(conn)`` which
  mechanism names to offer on this connection, then ``SASLServer.start(name, conn)``;
* it feeds the decoded client data to ``ServerExchange.step(data)`` (``None`` when the
  client sent no initial response, ``b""`` for an empty one ``=``) and gets a Deferred
  firing with ``Continue``, ``Success`` or ``Failure``;
* base64, the ``*`` abort and line limits are the protocol's business, not the mechanism's.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

from mxd.errors import MxdError


class SASLError(MxdError):
    """Base of SASL errors."""


class UnknownMechanism(SASLError):
    """The client named a mechanism not offered on this connection."""


@attrs.frozen
class ChannelBindings:
    """Channel-binding data a TLS connection can provide (RFC 5056, 5929, 9266).

    Each field is None when the connection cannot provide that type (for example
    ``tls_unique`` on TLS 1.3, or ``tls_exporter`` on TLS 1.2 without extended master
    secret).  Built once the TLS handshake has completed.
    """

    tls_version: str  # "TLSv1.3", "TLSv1.2", ...
    tls_exporter: bytes | None = None
    tls_unique: bytes | None = None
    tls_server_end_point: bytes | None = None

    def get(self, cb_type: str) -> bytes | None:
        return {
            "tls-exporter": self.tls_exporter,
            "tls-unique": self.tls_unique,
            "tls-server-end-point": self.tls_server_end_point,
        }.get(cb_type)

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(t for t in ("tls-exporter", "tls-unique", "tls-server-end-point")
                     if self.get(t) is not None)


@attrs.frozen
class ConnectionInfo:
    """What the SASL layer may know about the connection an exchange runs on."""

    remote_ip: str
    tls: bool
    loopback: bool = False
    channel_bindings: ChannelBindings | None = None
    service: str = "imap"  # "imap" | "smtp": for logs and metrics


@attrs.frozen
class Continue:
    challenge: bytes


@attrs.frozen
class Success:
    authcid: str  # the authenticated account name
    authzid: str | None = None
    additional: bytes | None = None  # e.g. SCRAM server-final "v=..." (RFC 4422 §5 item 7)
    mechanism: str = ""


@attrs.frozen
class Failure:
    reason: str  # safe to show the client (never secrets)
    temporary: bool = False  # True for a lookup failure (IMAP NO [UNAVAILABLE], SMTP 454)
    rate_limited: bool = False
    additional: bytes | None = None  # e.g. SCRAM "e=..." server-final


Outcome = Continue | Success | Failure


class ServerExchange(Protocol):
    mechanism: str

    def step(self, data: bytes | None) -> Deferred[Outcome]: ...


class ISASLServer(Protocol):
    def advertised(self, conn: ConnectionInfo) -> list[str]:
        """Mechanism names to offer on this connection, most preferred first."""

    def start(self, mechanism: str, conn: ConnectionInfo) -> ServerExchange:
        """Begin an exchange; raises UnknownMechanism for names not advertised."""

    def check_password(self, username: str, password: str, conn: ConnectionInfo) -> Deferred[Outcome]:
        """For IMAP LOGIN: the PLAIN check with the same limits; Success or Failure."""
