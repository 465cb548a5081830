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

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure as TwistedFailure

from mxd.sasl.api import ConnectionInfo
from mxd.smtp import commands, replies
from mxd.smtp.address import (
    Address,
    AddressError,
    encode_xtext,
    parse_envid,
    parse_notify,
    parse_orcpt,
)
from mxd.smtp.auth import AuthMixin
from mxd.smtp.message import MessageMixin
from mxd.smtp.replies import Reply
from mxd.smtp.session import (
    ChannelBindingsFn,
    Role,
    RunBlocking,
    SMTPServerSettings,
    State,
    Transaction,
    _is_loopback,
)
from mxd.srs import SRSError
from mxd.store.interfaces import Account, OutboundRecipient

__all__ = ["ChannelBindingsFn", "Role", "RunBlocking", "SMTPServerProtocol", "SMTPServerSettings",
           "State"]


class SMTPServerProtocol(AuthMixin, MessageMixin):
    """One SMTP session.  Created by ``SMTPFactory`` (see ``mxd.smtp.service``)."""

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
        if self.tls_active and self.settings.requiretls:
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
        self.authenticated = None
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
        if params and not self.extended:
            # RFC 5321 §4.1.1.11: parameters only for extensions announced by EHLO.
            return replies.BAD_PARAMETER.with_text("No parameters after HELO; use EHLO")
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
            elif key == "REQUIRETLS" and self.tls_active and self.settings.requiretls:
                # RFC 8689 §4.1 (not advertised: an unknown parameter, 555 below)
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

    def _postmaster_domain(self) -> str:
        """The local domain for a bare <Postmaster>: the host name or its closest parent
        that is a local domain (mx.example.org -> example.org)."""
        labels = self.hostname.lower().split(".")
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:])
            if self.directory.is_local_domain(candidate):
                return candidate
        return self.hostname

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
        if cmd.params and not self.extended:
            self._send(replies.BAD_PARAMETER.with_text("No parameters after HELO; use EHLO"))
            return
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
            rcpt = Address("postmaster", self._postmaster_domain())
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

        forwarded = False
        if self.forwarder is not None and not rcpt.is_literal:
            handled = self._forward(tx, rcpt, normalised, notify, orcpt)
            if handled is None:
                return  # answered
            forwarded = handled

        def resolved(account: Account | None) -> None:
            if account is None:
                if forwarded:  # a forward rule that keeps a copy only where one exists
                    self._send(replies.RECIPIENT_OK)
                    return
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

    def _forward(self, tx: Transaction, rcpt: Address, normalised: str,
                 notify: frozenset[str] | None, orcpt: str | None) -> bool | None:
        """Forwarding (``mxd.forwarding``) for a local recipient: None when the RCPT is
        answered here, True when forwarded and a local copy is wanted too, False when the
        address is not forwarded."""
        forwarder = self.forwarder
        assert forwarder is not None
        if forwarder.is_bounce_address(rcpt.local_unquoted):
            # Mail to one of our SRS addresses: a bounce of mail we forwarded goes back
            # to its original sender; an address not made here is unknown (no relay).
            try:
                target = forwarder.bounce_target(f"{rcpt.local_unquoted}@{rcpt.domain_ascii}")
            except SRSError as e:
                self.log.info("smtp srs address refused {recipient}: {error} {session}",
                              recipient=normalised, error=str(e), session=self.session_id)
                self.metrics.inc("smtp_rejected_total", role=self.role, reason="bad_srs")
                self._send(replies.NO_SUCH_USER)
                return None
            targets: tuple[str, ...] = (target,)
            keep = False
            domain = rcpt.domain_ascii
        else:
            rule = forwarder.rule_for(normalised)
            if rule is None:
                return False
            targets, keep, domain = rule.targets, rule.keep_copy, rule.domain
        if self.outbound is None:
            self._send(replies.LOCAL_ERROR)
            return None
        if tx.recipient_count + len(targets) > self.settings.max_recipients:
            self._send(replies.TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.10
            return None
        # RFC 3461 §4.2: the original recipient travels with each forwarded copy.
        original = orcpt or f"rfc822;{encode_xtext(normalised)}"
        for target in targets:
            tx.remote.append(OutboundRecipient(address=target, notify=notify, orcpt=original))
        tx.recipient_count += len(targets)
        tx.forward_domain = tx.forward_domain or domain
        self.state = State.RCPT
        self.log.info("smtp forward {recipient} -> {targets} {session}", recipient=normalised,
                      targets=",".join(targets), session=self.session_id)
        if keep:
            return True
        self._send(replies.RECIPIENT_OK)
        return None

    _handlers: dict[type, Callable[[SMTPServerProtocol, Any], None]] = {
        commands.Helo: _do_helo,
        commands.Mail: _do_mail,
        commands.Rcpt: _do_rcpt,
        commands.Data: MessageMixin._do_data,
        commands.Bdat: MessageMixin._do_bdat,
        commands.Rset: _do_rset,
        commands.Noop: _do_noop,
        commands.Quit: _do_quit,
        commands.Vrfy: _do_vrfy,
        commands.Expn: _do_expn,
        commands.Help: _do_help,
        commands.StartTLS: _do_starttls,
        commands.Auth: AuthMixin._do_auth,
    }

