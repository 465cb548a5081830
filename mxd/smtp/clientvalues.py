"""Values and errors of the SMTP client (mxd.smtp.client): replies, the TLS policy and
its typed result (in RFC 8460's words), messages, per-recipient results and settings."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from mxd.errors import MxdError
from mxd.smtp.replies import Reply
from mxd.tlsrpt.results import CheckResult, PolicyType, ResultType, TLSAttempt

# -- errors ------------------------------------------------------------------------------


class SMTPClientError(MxdError):
    """Base of the SMTP client's errors; ``permanent`` decides bounce or retry."""

    permanent = False
    enhanced = "4.4.2"  # RFC 3463: bad connection

    def __str__(self) -> str:
        return super().__str__() or self.__class__.__name__


class SMTPConnectionError(SMTPClientError):
    """The connection failed or was lost."""


class SMTPNoAnswerError(SMTPConnectionError):
    """The connection attempt was not answered (refused, unreachable, connect timeout)."""

    enhanced = "4.4.1"  # RFC 3463 §3.5: no answer from host


class SMTPTimeoutError(SMTPConnectionError):
    """The peer did not answer within the RFC 5321 §4.5.3.2 timeout."""

    enhanced = "4.4.2"


class SMTPProtocolError(SMTPConnectionError):
    """The peer sent something that is not an SMTP reply."""

    enhanced = "4.5.0"


class SMTPTLSError(SMTPClientError):
    """STARTTLS was required but not offered, failed, or the peer was not verified.

    ``result_type`` uses RFC 8460 §4.3's words (starttls-not-supported,
    certificate-not-trusted, validation-failure, ...).
    """

    enhanced = "4.7.5"  # RFC 3463: cryptographic failure

    def __init__(self, message: str,
                 result_type: ResultType = ResultType.VALIDATION_FAILURE) -> None:
        super().__init__(message)
        self.result_type = result_type


class SMTPReplyError(SMTPClientError):
    """The peer answered a command with an error reply."""

    def __init__(self, code: int, enhanced: str | None, lines: Sequence[str],
                 permanent: bool | None = None, command: str = "") -> None:
        self.code = code
        self.enhanced = enhanced or ("5.0.0" if code >= 500 else "4.0.0")
        self.lines = tuple(lines)
        self.permanent = code >= 500 if permanent is None else permanent
        self.command = command
        super().__init__(f"{code} {self.enhanced} {' '.join(self.lines)}".strip())

    @classmethod
    def from_reply(cls, reply: Reply, command: str = "") -> SMTPReplyError:
        return cls(reply.code, reply.enhanced, reply.lines, reply.code >= 500, command)


class SMTPLocalError(SMTPReplyError):
    """A failure decided on our side (e.g. 8-bit body to a 7-bit peer), in reply form."""


class SMTPAuthError(SMTPReplyError):
    """Authentication failed or no usable mechanism."""


# -- values ------------------------------------------------------------------------------


class TLSMode(enum.StrEnum):
    NONE = "none"  # never STARTTLS (tests, or after a failed opportunistic attempt)
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, no verification (RFC 7435)
    REQUIRED = "required"  # STARTTLS must succeed; the certificate is not checked
    VERIFIED = "verified"  # STARTTLS must succeed and the policy's verification pass


@attrs.frozen
class TLSConnectionInfo:
    """What ``TLSPolicy.verify`` sees after the handshake."""

    version: str | None
    cipher: str | None
    peer_chain: tuple[Any, ...]  # cryptography x509.Certificate, leaf first
    server_name: str


class TLSVerifier(Protocol):
    """A TLS policy's judgement of one connection (``mxd.queue.tlspolicy`` for DANE and
    MTA-STS) and its TLS report record (RFC 8460 §4.4)."""

    def verify(self, info: TLSConnectionInfo) -> CheckResult:
        """The verdict on the peer, after the handshake."""

    def attempt(self, result: TLSResult, now: float, *, sending_ip: str | None,
                receiving_ip: str | None, helo: str | None) -> TLSAttempt:
        """The RFC 8460 record of a session made under this policy."""

    def overridden(self, result: TLSResult) -> bool:
        """Whether a verification failure was ignored (``TLS-Required: No``, RFC 8689 §5)."""


@attrs.frozen
class TLSPolicy:
    """How one connection uses TLS (chosen per attempt by the queue: DANE, MTA-STS).

    ``client_options`` is what ``ITLSTransport.startTLS`` gets: an OpenSSL context factory
    or connection creator; for VERIFIED it should itself verify (e.g. WebPKI), or the
    ``verifier`` checks the chain (DANE, MTA-STS).  ``policy_type``/``policy_domain`` are
    recorded in the TLS result (RFC 8460 §4.4).
    """

    mode: TLSMode = TLSMode.OPPORTUNISTIC
    client_options: Any = None
    verifier: TLSVerifier | None = attrs.field(default=None, eq=False)
    policy_type: PolicyType = PolicyType.NO_POLICY_FOUND
    policy_domain: str = ""


@attrs.frozen
class TLSResult:
    """The outcome of one connection's TLS, for logs, the attempts log and TLSRPT."""

    policy_type: PolicyType
    policy_domain: str
    mode: TLSMode
    used: bool
    verified: bool = False
    version: str | None = None
    cipher: str | None = None
    failure: ResultType | None = None  # RFC 8460 §4.3
    detail: str = ""  # the failure's reason in words


POLICY_NAMES = {PolicyType.TLSA: "DANE", PolicyType.STS: "MTA-STS"}


@attrs.frozen
class ClientRecipient:
    address: str
    notify: frozenset[str] | None = None
    orcpt: str | None = None


@attrs.frozen
class ClientMessage:
    mail_from: str
    recipients: tuple[ClientRecipient, ...]
    size: int = 0
    body: str = "7BIT"  # "7BIT" | "8BITMIME" | "BINARYMIME"
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    requiretls: bool = False


@attrs.frozen
class RecipientResult:
    address: str
    reply: Reply
    at_rcpt: bool = False  # the reply is the one to RCPT (refused before the data)

    @property
    def delivered(self) -> bool:
        return self.reply.ok

    @property
    def permanent(self) -> bool:
        """Whether the failure is final.  RFC 5321 §4.5.3.1.10: a 552 to RCPT ("too many
        recipients", RFC 821's code for 452) is treated as temporary."""
        if self.at_rcpt and self.reply.code == 552:
            return False
        return self.reply.permanent


@attrs.frozen
class TransactionResult:
    recipients: tuple[RecipientResult, ...]
    data_reply: Reply | None


@attrs.frozen
class ClientAuth:
    """Credentials for AUTH (submission transports); the mechanism comes from mxd.sasl."""

    username: str
    password: str
    allowed_mechanisms: tuple[str, ...] | None = None
    allow_plaintext: bool = False  # send credentials without TLS (tests, loopback relays)


@attrs.frozen
class ClientSettings:
    """RFC 5321 §4.5.3.2 timeouts (seconds) and behaviour switches."""

    helo_name: str = "localhost"
    greeting_timeout: float = 300.0
    ehlo_timeout: float = 300.0
    mail_timeout: float = 300.0
    rcpt_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_block_timeout: float = 180.0
    data_end_timeout: float = 600.0
    use_chunking: bool = True
    chunk_size: int = 1 << 20
    max_reply_line: int = 4096
