"""The ESMTP server protocol (RFC 5321) for inbound mail (25) and submission (587, 465).

One protocol on Twisted's ``LineReceiver`` with an explicit state machine; commands are
parsed by ``mxd.smtp.commands`` into typed values and dispatched on their type.  While an
asynchronous step runs (directory lookup, SASL step, store commit) the protocol stops
processing input, so pipelined commands (RFC 2920) are answered in order.

Extensions: PIPELINING, SIZE (RFC 1870), 8BITMIME, SMTPUTF8 (RFC 6531),
ENHANCEDSTATUSCODES (RFC 2034), STARTTLS (RFC 3207), AUTH (RFC 4954), REQUIRETLS
(RFC 8689), CHUNKING (RFC 3030), DSN (RFC 3461), LIMITS (RFC 9422).
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure as TwistedFailure
from zope.interface import implementer

from mxd.queue.interfaces import IOutbound, OutboundMessage, OutboundRecipient
from mxd.sasl.api import (
    ChannelBindings,
    ConnectionInfo,
    Continue,
    ISASLServer,
    Outcome,
    ServerExchange,
    Success,
    UnknownMechanism,
)
from mxd.sasl.api import (
    Failure as SASLFailure,
)
from mxd.smtp import commands, replies
from mxd.smtp.address import Address, AddressError, parse_envid, parse_notify, parse_orcpt
from mxd.smtp.data import (
    BareLineEndingScanner,
    DataReader,
    HeaderSection,
    has_field,
    has_tls_required_no,
)
from mxd.smtp.interfaces import IDirectory, IInboundChecker, IMetrics, NoChecks, SessionInfo
from mxd.smtp.received import (
    TraceInfo,
    date_field,
    message_id_field,
    received_field,
    with_protocol,
)
from mxd.smtp.replies import Reply
from mxd.store.interfaces import Account, BlobWriter, Delivery, IMailStore, MessageProps

T = TypeVar("T")

Role = Literal["smtp", "submission", "submissions"]
ChannelBindingsFn = Callable[[Any], "ChannelBindings | None"]


@attrs.frozen
class SMTPServerSettings:
    """Limits and policy of one SMTP listener (RFC 5321 §4.5.3 for the size limits)."""

    max_message_size: int = 50 * 1024 * 1024  # SIZE (RFC 1870), enforced while reading
    max_recipients: int = 100  # per transaction; LIMITS RCPTMAX (RFC 9422)
    max_transactions: int = 100  # per session; LIMITS MAILMAX (RFC 9422)
    max_errors: int = 20  # error replies per session before 421
    command_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: at least 5 minutes
    data_timeout: float = 300.0  # between bytes of DATA/BDAT
    max_connections: int = 1000  # in total on this listener
    max_connections_per_ip: int = 20
    max_line_length: int = 2048  # command lines (RFC 5321 §4.5.3.1.4 is 512 without extensions)
    max_auth_line_length: int = 12288  # RFC 4954 §4
    max_header_size: int = 1024 * 1024  # header section held in memory before the body
    allow_plaintext_auth_on_loopback: bool = False
    banner: str = "ESMTP mxd"

    def __attrs_post_init__(self) -> None:
        if self.max_message_size <= 0 or self.max_recipients <= 0:
            raise ValueError("max_message_size and max_recipients must be positive")


class State(enum.Enum):
    INITIAL = "initial"  # no EHLO/HELO yet (also right after STARTTLS, RFC 3207 §4.2)
    READY = "ready"  # greeted, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # reading DATA
    BDAT = "bdat"  # reading a BDAT chunk
    AUTH = "auth"  # in a SASL exchange
    CLOSED = "closed"


@attrs.define
class Transaction:
    sender: Address | None
    body: str = "7BIT"
    smtputf8: bool = False
    requiretls: bool = False
    ret: str | None = None
    envid: str | None = None
    local: dict[int, Account] = attrs.Factory(dict)  # account id -> account
    local_addresses: list[str] = attrs.Factory(list)
    remote: list[OutboundRecipient] = attrs.Factory(list)
    recipient_count: int = 0
    # message data
    blob: BlobWriter | None = None
    size: int = 0
    too_big: bool = False
    bare_line_ending: bool = False
    headers: HeaderSection | None = None
    header_bytes: bytes = b""
    held: list[bytes] | None = None  # body held while the checker runs
    data_ended: bool = False
    bdat_used: bool = False
    bdat_failed: bool = False
    bdat_scanner: BareLineEndingScanner | None = None
    queue_id: str = ""

    @property
    def mail_from(self) -> str:
        return "" if self.sender is None else str(self.sender)


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _default_channel_bindings(transport: Any) -> ChannelBindings | None:
    from mxd.sasl.channelbinding import channel_bindings_from_transport

    return channel_bindings_from_transport(transport)


@implementer(IHandshakeListener)
class SMTPServerProtocol(LineReceiver):
    """One SMTP session.  Created by ``SMTPFactory`` (see ``mxd.smtp.service``)."""

    log = Logger()
    delimiter = b"\r\n"

    def __init__(
        self, *, role: Role, settings: SMTPServerSettings, store: IMailStore,
        directory: IDirectory, sasl: ISASLServer | None, outbound: IOutbound | None,
        tls: Any | None, clock: IReactorTime, hostname: str,
        checker: IInboundChecker | None = None, metrics: IMetrics | None = None,
        channel_bindings: ChannelBindingsFn | None = None,
        on_close: Callable[[SMTPServerProtocol], None] | None = None,
    ) -> None:
        self.role: Role = role
        self.settings = settings
        self.store = store
        self.directory = directory
        self.sasl = sasl
        self.outbound = outbound
        self.tls_options = tls
        self.clock: Any = clock  # IReactorTime (zope interfaces confuse mypy)
        self.hostname = hostname
        self.checker: IInboundChecker = checker if checker is not None else NoChecks()
        from mxd.smtp.interfaces import NoMetrics

        self.metrics: IMetrics = metrics if metrics is not None else NoMetrics()
        self._channel_bindings_fn = channel_bindings or _default_channel_bindings
        self._on_close = on_close
        self.MAX_LENGTH = settings.max_auth_line_length
        self.state = State.INITIAL
        self.helo: str | None = None
        self.extended = False
        self.tls_active = False
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        self.channel_bindings: ChannelBindings | None = None
        self.authenticated: str | None = None  # account name
        self.tx: Transaction | None = None
        self.transactions = 0
        self.errors = 0
        self.remote_ip = "unknown"
        self._timer: Any = None  # IDelayedCall
        self._exchange: ServerExchange | None = None
        self._auth_final_pending = False
        self._bdat_remaining = 0
        self._bdat_last = False
        self._bdat_reply: Reply | None = None
        self._reader = DataReader()
        self.session_id = secrets.token_hex(6)

    @property
    def _tr(self) -> Any:
        """The transport, untyped (zope interfaces confuse mypy)."""
        return self.transport

    # -- connection -------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self._tr.getPeer()
        self.remote_ip = str(getattr(peer, "host", "unknown"))
        self.log.info(
            "smtp connection {session} from {remote_ip} role={role}",
            session=self.session_id, remote_ip=self.remote_ip, role=self.role,
        )
        self.metrics.inc("smtp_connections_total", role=self.role)
        self._reset_timer(self.settings.command_timeout)
        self._send(Reply(220, None, f"{self.hostname} {self.settings.banner}"))

    def connectionLost(self, reason: TwistedFailure = None) -> None:  # type: ignore[assignment]
        self.state = State.CLOSED
        self._cancel_timer()
        self._abort_transaction()
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS handshake finished (STARTTLS or implicit TLS)."""
        self.tls_active = True
        handle = None
        try:
            handle = self._tr.getHandle()
            self.tls_version = handle.get_protocol_version_name()
            self.tls_cipher = handle.get_cipher_name()
        except Exception:  # noqa: BLE001 - a transport without a pyOpenSSL handle
            self.log.debug("no TLS details from the transport")
        try:
            self.channel_bindings = self._channel_bindings_fn(self.transport)
        except Exception:  # noqa: BLE001 - bindings unavailable: -PLUS is not offered
            self.log.failure("cannot compute channel bindings")
            self.channel_bindings = None
        self.log.info(
            "smtp tls {session} {tls_version} {tls_cipher}",
            session=self.session_id, tls_version=self.tls_version, tls_cipher=self.tls_cipher,
        )
        self.metrics.inc("smtp_tls_total", role=self.role, version=str(self.tls_version))

    # -- timers -----------------------------------------------------------------------

    def _reset_timer(self, seconds: float) -> None:
        self._cancel_timer()
        if self.state is not State.CLOSED:
            self._timer = self.clock.callLater(seconds, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self.log.info("smtp timeout {session} in state {state}", session=self.session_id,
                      state=self.state.value)
        self.metrics.inc("smtp_timeouts_total", role=self.role)
        self._close(replies.TIMEOUT.with_text(f"{self.hostname} Timeout, closing connection"))

    # -- output -----------------------------------------------------------------------

    def _send(self, reply: Reply, extra: tuple[str, ...] = ()) -> None:
        if self.state is State.CLOSED or self.transport is None:
            return
        self._tr.writeSequence([line + b"\r\n" for line in reply.lines(extra)])
        if reply.code >= 400 and reply.code not in (421,):
            self.errors += 1
            if self.errors >= self.settings.max_errors:
                self._close(replies.TOO_MANY_ERRORS)

    def _close(self, reply: Reply | None = None) -> None:
        if self.state is State.CLOSED:
            return
        if reply is not None and self.transport is not None:
            self._tr.writeSequence([line + b"\r\n" for line in reply.lines()])
        self.state = State.CLOSED
        self._cancel_timer()
        self._abort_transaction()
        self.paused = True  # process nothing more
        self._buffer = b""
        if self.transport is not None:
            self._tr.loseConnection()

    # -- pausing around asynchronous steps --------------------------------------------

    def _await(self, d: Deferred[T], on_result: Callable[[T], None],
               on_error: Callable[[TwistedFailure], None]) -> None:
        """Stop processing input until ``d`` fires; then run the handler and resume."""
        self.pauseProducing()

        def ok(result: T) -> None:
            if self.state is State.CLOSED:
                return
            try:
                on_result(result)
            except Exception:  # noqa: BLE001 - never leave the session wedged
                self.log.failure("smtp handler failed {session}", session=self.session_id)
                self._abort_transaction()
                self._send(replies.LOCAL_ERROR)
            self._resume()

        def err(f: TwistedFailure) -> None:
            if self.state is State.CLOSED:
                return
            try:
                on_error(f)
            except Exception:  # noqa: BLE001
                self.log.failure("smtp error handler failed {session}", session=self.session_id)
                self._send(replies.LOCAL_ERROR)
            self._resume()

        d.addCallbacks(ok, err)

    def _resume(self) -> None:
        if self.state is State.CLOSED or not self.paused:
            return
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None:
            pause()

    def resumeProducing(self) -> None:
        self.paused = False
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None:
            resume()
        self.dataReceived(b"")

    # -- input ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if data:
            timeout = (self.settings.data_timeout if self.state in (State.DATA, State.BDAT)
                       else self.settings.command_timeout)
            self._reset_timer(timeout)
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.info("smtp line too long {session}", session=self.session_id)
        self._close(replies.LINE_TOO_LONG)

    def lineReceived(self, line: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.AUTH:
            self._auth_response(line)
            return
        if len(line) > self.settings.max_line_length and not line[:5].upper().startswith(b"AUTH "):
            self._send(replies.LINE_TOO_LONG)
            return
        try:
            cmd = commands.parse_command(line)
        except commands.CommandError as e:
            self._send(e.reply)
            return
        handler = self._handlers.get(type(cmd))
        if handler is None:  # pragma: no cover - the table covers every command type
            self._send(replies.NOT_IMPLEMENTED)
            return
        handler(self, cmd)

    def rawDataReceived(self, data: bytes) -> None:
        if self.state is State.DATA:
            self._data_bytes(data)
        elif self.state is State.BDAT:
            self._bdat_bytes(data)

    # -- simple commands --------------------------------------------------------------

    def _in_data_transaction(self) -> bool:
        return self.tx is not None and self.tx.bdat_used

    def _do_helo(self, cmd: commands.Helo) -> None:
        if self._in_data_transaction():
            self._send(replies.BAD_SEQUENCE)
            return
        self._abort_transaction()
        self.helo = cmd.domain
        self.extended = cmd.extended
        self.state = State.READY
        greeting = f"{self.hostname} Hello {cmd.domain} [{self.remote_ip}]"
        if not cmd.extended:
            self._send(Reply(250, None, greeting))
            return
        self._send(Reply(250, None, greeting), tuple(self._extensions()))

    def _auth_allowed(self) -> bool:
        if self.role == "smtp" or self.sasl is None:
            return False
        if self.tls_active:
            return True
        return self.settings.allow_plaintext_auth_on_loopback and _is_loopback(self.remote_ip)

    def _conn_info(self) -> ConnectionInfo:
        return ConnectionInfo(
            remote_ip=self.remote_ip, tls=self.tls_active, loopback=_is_loopback(self.remote_ip),
            channel_bindings=self.channel_bindings, service="smtp",
        )

    def _extensions(self) -> list[str]:
        ext = ["PIPELINING", f"SIZE {self.settings.max_message_size}", "8BITMIME", "SMTPUTF8",
               "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if self.tls_options is not None and not self.tls_active:
            ext.append("STARTTLS")
        if self._auth_allowed() and self.authenticated is None:
            assert self.sasl is not None
            mechs = self.sasl.advertised(self._conn_info())
            if mechs:
                ext.append("AUTH " + " ".join(mechs))
        if self.tls_active:
            ext.append("REQUIRETLS")  # RFC 8689 §4: only on a TLS session
        ext.append(f"LIMITS RCPTMAX={self.settings.max_recipients} "
                   f"MAILMAX={self.settings.max_transactions}")
        return ext

    def _do_noop(self, cmd: commands.Noop) -> None:
        self._send(replies.NOOP_OK)

    def _do_rset(self, cmd: commands.Rset) -> None:
        self._abort_transaction()
        if self.state is not State.INITIAL:
            self.state = State.READY
        self._send(replies.RESET_OK)

    def _do_quit(self, cmd: commands.Quit) -> None:
        self._close(replies.BYE.with_text(f"{self.hostname} closing connection"))

    def _do_vrfy(self, cmd: commands.Vrfy) -> None:
        self._send(replies.VRFY_CANNOT)  # RFC 5321 §3.5.3: 252, no address harvesting

    def _do_expn(self, cmd: commands.Expn) -> None:
        self._send(replies.NOT_IMPLEMENTED)

    def _do_help(self, cmd: commands.Help) -> None:
        self._send(replies.HELP)

    def _do_starttls(self, cmd: commands.StartTLS) -> None:
        if self.tls_active:
            self._send(replies.ALREADY_TLS)
            return
        if self.tls_options is None:
            self._send(replies.TLS_UNAVAILABLE)
            return
        if self.state not in (State.INITIAL, State.READY):
            self._send(replies.BAD_SEQUENCE)
            return
        # RFC 3207 §4.2 and CVE-2011-0411: anything the client pipelined after STARTTLS
        # arrived in plaintext; it must never be executed inside the TLS session.
        if self._buffer:
            self.log.warn("smtp discarding {count} bytes sent after STARTTLS {session}",
                          count=len(self._buffer), session=self.session_id)
            self.metrics.inc("smtp_starttls_injection_total", role=self.role)
            self._buffer = b""
        self._send(replies.READY_TLS)
        # RFC 3207 §4.2: forget everything learnt from the client before TLS.
        self._abort_transaction()
        self.state = State.INITIAL
        self.helo = None
        self.extended = False
        self._tr.startTLS(self.tls_options)

    # -- MAIL -------------------------------------------------------------------------

    def _do_mail(self, cmd: commands.Mail) -> None:
        if self.state is State.INITIAL:
            self._send(replies.NEED_HELO)
            return
        if self.state is not State.READY or self.tx is not None:
            self._send(replies.NESTED_MAIL)
            return
        if self.role != "smtp" and self.authenticated is None:
            self._send(replies.AUTH_REQUIRED if self._auth_allowed() or self.tls_active
                       else replies.MUST_STARTTLS)
            return
        if self.transactions >= self.settings.max_transactions:
            self._close(replies.TOO_MANY_TRANSACTIONS)
            return
        tx = Transaction(sender=cmd.sender)
        error = self._mail_params(tx, cmd.params)
        if error is not None:
            self._send(error)
            return
        if cmd.sender is not None and not cmd.sender.is_ascii and not tx.smtputf8:
            self._send(replies.NON_ASCII_WITHOUT_SMTPUTF8)  # RFC 6531 §3.4
            return
        if self.role == "smtp" or self.authenticated is None:
            self._accept_mail(tx)
            return
        # Submission: the envelope sender must be the account's own address.
        if cmd.sender is None:
            self._send(replies.SENDER_NOT_OWNED)
            return
        sender = cmd.sender
        try:
            normalised = sender.normalised()
        except AddressError:
            self._send(replies.BAD_ADDRESS_SYNTAX)
            return

        def owned(ok: bool) -> None:
            if ok:
                self._accept_mail(tx)
            else:
                self.log.info("smtp sender {sender} not owned by {account} {session}",
                              sender=normalised, account=self.authenticated,
                              session=self.session_id)
                self.metrics.inc("smtp_rejected_total", role=self.role, reason="sender_not_owned")
                self._send(replies.SENDER_NOT_OWNED)

        self._await(maybeDeferred(self.directory.may_send_as, self.authenticated, normalised),
                    owned, self._directory_failed)

    def _accept_mail(self, tx: Transaction) -> None:
        self.tx = tx
        self.state = State.MAIL
        self._send(replies.SENDER_OK)

    def _directory_failed(self, f: TwistedFailure) -> None:
        self.log.failure("smtp directory lookup failed {session}", f, session=self.session_id)
        self._send(replies.DIRECTORY_UNAVAILABLE)

    def _mail_params(self, tx: Transaction, params: dict[str, str | None]) -> Reply | None:
        for key, value in params.items():
            if key == "SIZE":  # RFC 1870 §6
                if value is None or not value.isdigit() or not value.isascii():
                    return replies.SYNTAX_ERROR.with_text("SIZE needs a number")
                if int(value) > self.settings.max_message_size:
                    return replies.MESSAGE_TOO_BIG
            elif key == "BODY":  # RFC 6152
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return replies.BAD_PARAMETER.with_text("BODY must be 7BIT or 8BITMIME")
                tx.body = value.upper()
            elif key == "SMTPUTF8":  # RFC 6531 §3.4
                if value is not None:
                    return replies.SYNTAX_ERROR.with_text("SMTPUTF8 takes no value")
                tx.smtputf8 = True
            elif key == "REQUIRETLS" and self.tls_active:  # RFC 8689 §4.1
                if value is not None:
                    return replies.SYNTAX_ERROR.with_text("REQUIRETLS takes no value")
                tx.requiretls = True
            elif key == "RET":  # RFC 3461 §4.3
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    return replies.SYNTAX_ERROR.with_text("RET must be FULL or HDRS")
                tx.ret = value.upper()
            elif key == "ENVID":  # RFC 3461 §4.4
                try:
                    tx.envid = parse_envid(value or "")
                except AddressError as e:
                    return replies.SYNTAX_ERROR.with_text(str(e))
            elif key == "AUTH":  # RFC 4954 §5: accepted, not trusted
                continue
            else:
                return replies.BAD_PARAMETER.with_text(f"Parameter {key} not supported")
        return None

    # -- RCPT -------------------------------------------------------------------------

    def _do_rcpt(self, cmd: commands.Rcpt) -> None:
        if self.state is State.INITIAL:
            self._send(replies.NEED_HELO)
            return
        tx = self.tx
        if tx is None or self.state not in (State.MAIL, State.RCPT) or tx.bdat_used:
            self._send(replies.NEED_MAIL)
            return
        if tx.recipient_count >= self.settings.max_recipients:
            self._send(replies.TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.10
            return
        notify: frozenset[str] | None = None
        orcpt: str | None = None
        for key, value in cmd.params.items():
            try:
                if key == "NOTIFY":
                    notify = parse_notify(value or "")
                elif key == "ORCPT":
                    orcpt = parse_orcpt(value or "", smtputf8=tx.smtputf8)
                else:
                    self._send(replies.BAD_PARAMETER.with_text(f"Parameter {key} not supported"))
                    return
            except AddressError as e:
                self._send(replies.SYNTAX_ERROR.with_text(str(e)))
                return
        rcpt = cmd.recipient
        if rcpt is None:
            # RFC 5321 §4.5.1: <Postmaster> without a domain goes to our postmaster.
            rcpt = Address("postmaster", self.hostname)
        if not rcpt.is_ascii and not tx.smtputf8:
            self._send(replies.NON_ASCII_WITHOUT_SMTPUTF8)
            return
        try:
            domain = rcpt.domain_ascii
            normalised = rcpt.normalised()
        except AddressError:
            self._send(replies.BAD_RECIPIENT_SYNTAX)
            return
        local_domain = (cmd.recipient is None or (not rcpt.is_literal
                        and self.directory.is_local_domain(domain)))
        if not local_domain:
            if self.role == "smtp" or self.authenticated is None or self.outbound is None:
                self.log.info("smtp relay denied {recipient} from {remote_ip} {session}",
                              recipient=normalised, remote_ip=self.remote_ip,
                              session=self.session_id)
                self.metrics.inc("smtp_rejected_total", role=self.role, reason="relay_denied")
                self._send(replies.RELAY_DENIED)
                return
            tx.remote.append(OutboundRecipient(address=str(rcpt), notify=notify, orcpt=orcpt))
            tx.recipient_count += 1
            self.state = State.RCPT
            self._send(replies.RECIPIENT_OK)
            return

        def resolved(account: Account | None) -> None:
            if account is None:
                self.metrics.inc("smtp_rejected_total", role=self.role, reason="no_such_user")
                self._send(replies.NO_SUCH_USER)
                return
            tx.local[account.id] = account
            tx.local_addresses.append(normalised)
            tx.recipient_count += 1
            self.state = State.RCPT
            self._send(replies.RECIPIENT_OK)

        self._await(maybeDeferred(self.directory.resolve_recipient, normalised),
                    resolved, self._directory_failed)

    # -- DATA and BDAT ----------------------------------------------------------------

    def _new_blob(self, tx: Transaction) -> bool:
        try:
            tx.blob = self.store.new_blob()
        except Exception:  # noqa: BLE001 - disk full, permissions: answer 451
            self.log.failure("smtp cannot create a blob {session}", session=self.session_id)
            return False
        tx.queue_id = secrets.token_hex(8)
        tx.headers = HeaderSection(self.settings.max_header_size)
        return True

    def _do_data(self, cmd: commands.Data) -> None:
        tx = self.tx
        if tx is not None and tx.bdat_used:
            self._send(replies.DATA_AFTER_BDAT)
            return
        if tx is None or self.state is not State.RCPT:
            self._send(replies.NEED_RCPT if tx is not None else replies.NEED_MAIL)
            return
        if not self._new_blob(tx):
            self._send(replies.LOCAL_ERROR)
            return
        self._reader = DataReader()
        self.state = State.DATA
        self._send(replies.START_DATA)
        self.setRawMode()

    def _data_bytes(self, data: bytes) -> None:
        tx = self.tx
        assert tx is not None
        body, leftover = self._reader.feed(data)
        if body:
            self._body(tx, body)
        if leftover is not None:
            tx.bare_line_ending = self._reader.bare_line_ending
            self.line_mode = 1
            self._buffer = leftover + self._buffer
            self.state = State.RCPT
            self._message_complete(tx)

    def _do_bdat(self, cmd: commands.Bdat) -> None:
        tx = self.tx
        if tx is None or self.state is not State.RCPT:
            # RFC 3030 §2: without a valid transaction the chunk is still read, then refused.
            self._skip_chunk(cmd, replies.NEED_RCPT if tx is not None else replies.NEED_MAIL)
            return
        if not tx.bdat_used:
            if not self._new_blob(tx):
                self._abort_transaction()
                self._skip_chunk(cmd, replies.LOCAL_ERROR)
                return
            tx.bdat_used = True
            tx.bdat_scanner = BareLineEndingScanner()
        self._bdat_remaining = cmd.size
        self._bdat_last = cmd.last
        self._bdat_reply = None
        self.state = State.BDAT
        if cmd.size == 0:
            self._bdat_chunk_done()
        else:
            self.setRawMode()

    def _skip_chunk(self, cmd: commands.Bdat, reply: Reply) -> None:
        self._bdat_remaining = cmd.size
        self._bdat_last = cmd.last
        self._bdat_reply = reply
        self.state = State.BDAT
        if cmd.size == 0:
            self._bdat_chunk_done()
        else:
            self.setRawMode()

    def _bdat_bytes(self, data: bytes) -> None:
        chunk, rest = data[: self._bdat_remaining], data[self._bdat_remaining :]
        self._bdat_remaining -= len(chunk)
        tx = self.tx
        if self._bdat_reply is None and tx is not None and chunk:
            assert tx.bdat_scanner is not None
            tx.bdat_scanner.feed(chunk)
            self._body(tx, chunk)
        if self._bdat_remaining == 0:
            self.line_mode = 1
            self._buffer = rest + self._buffer
            self._bdat_chunk_done()

    def _bdat_chunk_done(self) -> None:
        self.line_mode = 1
        reply = self._bdat_reply
        if reply is not None:
            self._bdat_reply = None
            if self.tx is not None and self.tx.bdat_used:
                self._abort_transaction()  # RFC 3030 §2: a failed chunk ends the transaction
            if self.tx is None:
                self.state = State.READY if self.helo is not None else State.INITIAL
            elif self.tx.recipient_count:
                self.state = State.RCPT
            else:
                self.state = State.MAIL
            self._send(reply)
            return
        tx = self.tx
        assert tx is not None
        self.state = State.RCPT
        if not self._bdat_last:
            self._send(replies.CHUNK_OK.with_text(f"{tx.size} octets received"))
            return
        assert tx.bdat_scanner is not None
        tx.bdat_scanner.finish()
        tx.bare_line_ending = tx.bdat_scanner.bare_line_ending
        self._message_complete(tx)

    def _body(self, tx: Transaction, data: bytes) -> None:
        """Message bytes (unstuffed): size check, header section, then into the blob."""
        tx.size += len(data)
        if tx.size > self.settings.max_message_size:
            tx.too_big = True  # RFC 1870 §6: keep reading, refuse at the end
        if tx.too_big or tx.bare_line_ending:
            return
        if tx.held is not None:
            tx.held.append(data)
            return
        assert tx.headers is not None
        if not tx.headers.complete:
            done = tx.headers.feed(data)
            if done is None:
                return
            headers, rest = done
            self._headers_complete(tx, headers, rest)
            return
        self._write(tx, data)

    def _write(self, tx: Transaction, data: bytes) -> None:
        if tx.blob is None or not data:
            return
        try:
            tx.blob.write(data)
        except Exception:  # noqa: BLE001 - a write error answers 451 at the end
            self.log.failure("smtp blob write failed {session}", session=self.session_id)
            tx.blob.abort()
            tx.blob = None

    def _session_info(self, tx: Transaction) -> SessionInfo:
        return SessionInfo(
            role=self.role, remote_ip=self.remote_ip, helo=self.helo or "",
            mail_from=tx.mail_from,
            recipients=tuple(tx.local_addresses) + tuple(r.address for r in tx.remote),
            tls_version=self.tls_version, tls_cipher=self.tls_cipher,
            authenticated_as=self.authenticated, requiretls=tx.requiretls,
        )

    def _headers_complete(self, tx: Transaction, headers: bytes, rest: bytes) -> None:
        tx.header_bytes = headers
        if self.role != "smtp":
            self._write_prefix(tx, headers, [], rest)
            return
        # The message-authentication seam (SPF/DKIM/DMARC/iprev): runs before acceptance.
        tx.held = [rest]

        def checked(lines: list[str]) -> None:
            held = tx.held or []
            tx.held = None
            if tx is not self.tx or self.state is State.CLOSED:
                return
            if not (tx.too_big or tx.bare_line_ending):
                self._write_prefix(tx, headers, lines, b"".join(held))
            if tx.data_ended:
                tx.data_ended = False
                self._message_complete(tx)  # resumes input when the commit is answered
            else:
                self._resume()

        def failed(f: TwistedFailure) -> None:
            self.log.failure("smtp inbound checks failed {session}", f, session=self.session_id)
            checked([])

        self.pauseProducing()
        d = maybeDeferred(self.checker.check, self._session_info(tx), headers)
        d.addCallbacks(checked, failed)
        d.addErrback(lambda f: self.log.failure("smtp after checks {session}", f,
                                                session=self.session_id))

    def _write_prefix(self, tx: Transaction, headers: bytes, extra: list[str], rest: bytes) -> None:
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        rcpts = tx.local_addresses + [r.address for r in tx.remote]
        trace = TraceInfo(
            helo=self.helo or "unknown", remote_ip=self.remote_ip, remote_host=None,
            by_host=self.hostname,
            protocol=with_protocol(extended=self.extended, tls=self.tls_active,
                                   authenticated=self.authenticated is not None,
                                   smtputf8=tx.smtputf8),
            queue_id=tx.queue_id, when=now, tls_version=self.tls_version,
            tls_cipher=self.tls_cipher, recipient=rcpts[0] if len(rcpts) == 1 else None,
            requiretls=tx.requiretls,
        )
        parts = [received_field(trace)]
        parts.extend(line.encode("utf-8") + b"\r\n" for line in extra)
        parts.append(headers)
        if self.role != "smtp":
            # RFC 6409 §8.2, §8.3: a submission server may add Date and Message-ID.
            if not has_field(headers, "Date"):
                parts.append(date_field(now))
            if not has_field(headers, "Message-ID"):
                parts.append(message_id_field(f"{tx.queue_id}.{secrets.token_hex(4)}",
                                              self.hostname))
        parts.append(rest)
        self._write(tx, b"".join(parts))

    def _message_complete(self, tx: Transaction) -> None:
        """End of DATA or of the last BDAT chunk: check, make durable, answer."""
        if tx.held is not None:
            tx.data_ended = True  # the checker is still running; it calls back
            return
        if tx.too_big:
            self._fail_message(tx, replies.MESSAGE_TOO_BIG, "too_big")
            return
        if tx.bare_line_ending:
            self._fail_message(tx, replies.BARE_LINEFEED_DATA, "bare_line_ending")
            return
        assert tx.headers is not None
        if tx.headers.overflow:
            self._fail_message(tx, replies.HEADER_TOO_BIG, "header_too_big")
            return
        if not tx.headers.complete:
            headers = tx.headers.finish()
            self._headers_complete(tx, headers, b"")
            if tx.held is not None:
                tx.data_ended = True
                return
        blob = tx.blob
        if blob is None:
            self._fail_message(tx, replies.LOCAL_ERROR, "write_error")
            return
        self._commit(tx, blob)

    def _fail_message(self, tx: Transaction, reply: Reply, reason: str) -> None:
        self.log.info("smtp message rejected {session} reason={reason}",
                      session=self.session_id, reason=reason)
        self.metrics.inc("smtp_rejected_total", role=self.role, reason=reason)
        self._abort_transaction()
        self.state = State.READY
        self._send(reply)
        self._resume()

    def _commit(self, tx: Transaction, blob: BlobWriter) -> None:
        """Local delivery (one call, all local recipients) then the queue for the rest.

        RFC 5321 §4.1.1.4 / DESIGN.md: 250 only after both are durable."""
        props = MessageProps(
            requiretls=tx.requiretls, tls_required_no=has_tls_required_no(tx.header_bytes),
            mail_from=tx.mail_from,
            received_via=with_protocol(extended=self.extended, tls=self.tls_active,
                                       authenticated=self.authenticated is not None,
                                       smtputf8=tx.smtputf8),
        )
        targets = [Delivery(account_id=aid) for aid in tx.local]

        def deliver() -> Deferred[Any]:
            if not targets:
                return succeed(None)
            return self.store.deliver(blob, targets, props)

        def enqueue(_: object) -> Deferred[Any] | None:
            if targets:
                # Durable in the mailboxes now: the store owns the body file.
                tx.blob = None
            if not tx.remote:
                if not targets:
                    blob.abort()
                return None
            assert self.outbound is not None
            return self.outbound.enqueue(blob, OutboundMessage(
                mail_from=tx.mail_from, recipients=tuple(tx.remote), ret=tx.ret,
                envid=tx.envid, requiretls=tx.requiretls,
                tls_required_no=props.tls_required_no, smtputf8=tx.smtputf8, body=tx.body,
                sender_account=self.authenticated, size=tx.size,
            ))

        d = maybeDeferred(deliver)
        d.addCallback(enqueue)

        def done(_: object) -> None:
            self.transactions += 1
            self.log.info(
                "smtp accepted {queue_id} {session} from={mail_from} local={local} "
                "remote={remote} size={size} requiretls={requiretls}",
                queue_id=tx.queue_id, session=self.session_id, mail_from=tx.mail_from,
                local=len(targets), remote=len(tx.remote), size=tx.size,
                requiretls=tx.requiretls,
            )
            self.metrics.inc("smtp_accepted_total", role=self.role)
            self.tx = None
            self.state = State.READY
            self._send(replies.MESSAGE_ACCEPTED.with_text(f"Message accepted as {tx.queue_id}"))

        def failed(f: TwistedFailure) -> None:
            self.log.failure("smtp commit failed {queue_id} {session}", f,
                             queue_id=tx.queue_id, session=self.session_id)
            self.metrics.inc("smtp_rejected_total", role=self.role, reason="store_error")
            self._abort_transaction()
            self.state = State.READY
            self._send(replies.LOCAL_ERROR)

        self._await(d, done, failed)

    def _abort_transaction(self) -> None:
        tx = self.tx
        self.tx = None
        if tx is not None and tx.blob is not None:
            blob, tx.blob = tx.blob, None
            try:
                blob.abort()
            except Exception:  # noqa: BLE001 - already durable or gone
                self.log.debug("blob abort failed")

    # -- AUTH (RFC 4954) --------------------------------------------------------------

    def _do_auth(self, cmd: commands.Auth) -> None:
        if self.role == "smtp" or self.sasl is None:
            self._send(replies.NOT_IMPLEMENTED)
            return
        if self.state is State.INITIAL:
            self._send(replies.NEED_HELO)
            return
        if self.authenticated is not None:
            self._send(replies.ALREADY_AUTHENTICATED)
            return
        if self.tx is not None:
            self._send(replies.BAD_SEQUENCE)
            return
        if not self._auth_allowed():
            self._send(replies.MUST_STARTTLS)
            return
        try:
            self._exchange = self.sasl.start(cmd.mechanism, self._conn_info())
        except UnknownMechanism:
            self._send(replies.BAD_MECHANISM)
            return
        self.state = State.AUTH
        self._auth_final_pending = False
        self._auth_step(cmd.initial)

    def _auth_step(self, data: bytes | None) -> None:
        exchange = self._exchange
        assert exchange is not None
        self._await(maybeDeferred(exchange.step, data), self._auth_outcome, self._auth_error)

    def _auth_outcome(self, outcome: Outcome) -> None:
        mech = getattr(self._exchange, "mechanism", "")
        if isinstance(outcome, Continue):
            self._send_challenge(outcome.challenge)
            return
        if isinstance(outcome, Success):
            if outcome.additional is not None:
                # RFC 4954 §4: additional data with success goes in a last 334 challenge;
                # the client answers with an empty line, then 235.
                self._auth_success = outcome
                self._auth_final_pending = True
                self._send_challenge(outcome.additional)
                return
            self._auth_succeeded(outcome)
            return
        assert isinstance(outcome, SASLFailure)
        self._exchange = None
        self.state = State.READY
        result = "rate_limited" if outcome.rate_limited else (
            "temporary" if outcome.temporary else "failure")
        self.log.info("smtp auth {result} mechanism={mechanism} from {remote_ip} {session}",
                      result=result, mechanism=mech, remote_ip=self.remote_ip,
                      session=self.session_id)
        self.metrics.inc("smtp_auth_total", mechanism=mech, result=result)
        if outcome.rate_limited:
            self._send(replies.AUTH_RATE_LIMITED)
        elif outcome.temporary:
            self._send(replies.AUTH_TEMPORARY)
        else:
            self._send(replies.AUTH_FAILED)

    def _send_challenge(self, challenge: bytes) -> None:
        self.state = State.AUTH
        self._send(Reply(334, None, base64.b64encode(challenge).decode("ascii")))

    def _auth_succeeded(self, outcome: Success) -> None:
        mech = outcome.mechanism or getattr(self._exchange, "mechanism", "")
        self._exchange = None
        self.state = State.READY
        self.authenticated = outcome.authcid
        self.log.info("smtp auth success mechanism={mechanism} account={account} {session}",
                      mechanism=mech, account=outcome.authcid, session=self.session_id)
        self.metrics.inc("smtp_auth_total", mechanism=mech, result="success")
        self._send(replies.AUTH_SUCCEEDED)

    def _auth_error(self, f: TwistedFailure) -> None:
        self.log.failure("smtp auth step failed {session}", f, session=self.session_id)
        mech = getattr(self._exchange, "mechanism", "")
        self.metrics.inc("smtp_auth_total", mechanism=mech, result="temporary")
        self._exchange = None
        self.state = State.READY
        self._send(replies.AUTH_TEMPORARY)

    def _auth_response(self, line: bytes) -> None:
        if line == b"*":  # RFC 4954 §4: the client cancels
            self._exchange = None
            self._auth_final_pending = False
            self.state = State.READY
            self.metrics.inc("smtp_auth_total", mechanism="", result="aborted")
            self._send(replies.AUTH_ABORTED)
            return
        try:
            data = commands.decode_sasl_response(line.decode("ascii").strip())
        except (commands.CommandError, UnicodeDecodeError):
            self._exchange = None
            self._auth_final_pending = False
            self.state = State.READY
            self._send(replies.AUTH_BAD_BASE64)
            return
        if self._auth_final_pending:
            self._auth_final_pending = False
            if data:
                self._exchange = None
                self.state = State.READY
                self._send(replies.AUTH_FAILED)
                return
            self._auth_succeeded(self._auth_success)
            return
        self._auth_step(data)

    _handlers: dict[type, Callable[[SMTPServerProtocol, Any], None]] = {
        commands.Helo: _do_helo,
        commands.Mail: _do_mail,
        commands.Rcpt: _do_rcpt,
        commands.Data: _do_data,
        commands.Bdat: _do_bdat,
        commands.Rset: _do_rset,
        commands.Noop: _do_noop,
        commands.Quit: _do_quit,
        commands.Vrfy: _do_vrfy,
        commands.Expn: _do_expn,
        commands.Help: _do_help,
        commands.StartTLS: _do_starttls,
        commands.Auth: _do_auth,
    }

