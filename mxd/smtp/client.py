"""SMTP client (RFC 5321) for delivery and submission, with the ESMTP extensions mxd uses.

One connection: greeting, EHLO (HELO fallback, RFC 5321 §3.2), STARTTLS (RFC 3207) as the
``TLSPolicy`` says, AUTH with mxd.sasl client mechanisms (RFC 4954), then one or more
transactions, each delivering one message to several recipients with per-recipient results,
then QUIT.  Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
SMTPUTF8 (RFC 6531), CHUNKING/BDAT and BINARYMIME (RFC 3030), ENHANCEDSTATUSCODES
(RFC 2034/3463), DSN (RFC 3461), REQUIRETLS (RFC 8689).

Choices made here:

* A message declared 8BITMIME to a peer without 8BITMIME is not converted: it fails
  permanently with 5.6.3 (RFC 6152 §3 allows either; conversion would break signatures).
  Likewise BINARYMIME without CHUNKING+BINARYMIME, and an SMTPUTF8 message to a peer
  without SMTPUTF8 (5.6.7, RFC 6531 §3.4).  A message larger than the peer's SIZE fails
  with 5.3.4.
* The body is streamed from the stored file; line ends are normalised to CRLF (a bare CR
  or LF becomes CRLF, so no "smuggling" terminator can be formed) and lines starting with
  "." are dot-stuffed (RFC 5321 §4.5.2).  BDAT sends BINARYMIME bodies unchanged.
* Timeouts are RFC 5321 §4.5.3.2's defaults, measured on the injected clock.
* TLS: the policy's mode decides whether STARTTLS is tried (opportunistic), required, or
  required and verified; ``TLSPolicy.verifier`` (a ``TLSVerifier``) is where DANE (RFC 7672)
  and MTA-STS (RFC 8461) checks run on the peer's chain after the handshake.  The outcome
  of every connection is recorded as a typed ``TLSResult`` in RFC 8460's words (for TLS
  reporting), with the reason of a failure.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any, BinaryIO, Protocol

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from mxd.smtp import xtext
from mxd.smtp.clientdata import BodyProducer, DataEncoder
from mxd.smtp.clientvalues import (
    POLICY_NAMES,
    ClientAuth,
    ClientMessage,
    ClientRecipient,
    ClientSettings,
    RecipientResult,
    SMTPAuthError,
    SMTPClientError,
    SMTPConnectionError,
    SMTPLocalError,
    SMTPNoAnswerError,
    SMTPProtocolError,
    SMTPReplyError,
    SMTPTimeoutError,
    SMTPTLSError,
    TLSConnectionInfo,
    TLSMode,
    TLSPolicy,
    TLSResult,
    TLSVerifier,
    TransactionResult,
)
from mxd.smtp.replies import Reply
from mxd.tlsrpt.results import ResultType

log = Logger()


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, seconds: float) -> None: ...


# RFC 5321 §4.2: Reply-code [ SP textstring ] CRLF -- the text of a reply line is optional.
_REPLY_RE = re.compile(rb"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.S)
_ENHANCED_RE = re.compile(r"^([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)")

_CLEARTEXT_MECHS = frozenset({"PLAIN", "LOGIN"})


def choose_auth_mechanism(offered: Sequence[str], allowed: Sequence[str] | None, *,
                          tls: bool, channel_binding: bool) -> str | None:
    """The most secure SASL mechanism the server offers and ``allowed`` permits (None:
    all), in mxd.sasl.client's order (SCRAM-SHA-256-PLUS first); -PLUS only with channel
    binding data, PLAIN and LOGIN only over TLS.  None when nothing fits."""
    from mxd.sasl import client as sasl_client

    allow = [m.upper() for m in (allowed if allowed is not None else sasl_client.PREFERENCE)]
    if not tls:
        allow = [m for m in allow if m not in _CLEARTEXT_MECHS]
    return sasl_client.choose_mechanism(offered, allow, channel_binding)


# -- the protocol ------------------------------------------------------------------------


class SMTPClient(LineOnlyReceiver):
    """An SMTP client connection: ``start()``, ``send(message, body)`` (repeatable), ``quit()``."""

    delimiter = b"\r\n"

    def __init__(self, clock: IReactorTime, settings: ClientSettings, tls: TLSPolicy,
                 server_name: str, auth: ClientAuth | None = None, *,
                 implicit_tls: bool = False) -> None:
        self.clock = clock
        # The connection is TLS from its first byte (RFC 8314 §3, port 465): the caller
        # wrapped it (``wrapClientTLS`` with ``tls.client_options``, which verifies when the
        # mode is VERIFIED); no STARTTLS is sent.
        self.implicit_tls = implicit_tls
        self.settings = settings
        self.tls_policy = tls
        self.server_name = server_name
        self.auth = auth
        self.MAX_LENGTH = settings.max_reply_line
        self.extensions: dict[str, str] = {}
        self.esmtp = True
        self.tls_result = TLSResult(tls.policy_type, tls.policy_domain, tls.mode, used=False)
        self.ready: Deferred[None] = Deferred()
        self._lines: list[tuple[int, str]] = []
        self._replies: list[Reply] = []
        self._waiters: list[tuple[Deferred[Reply], DelayedCall | None]] = []
        self._lost: Failure | None = None
        self._in_starttls = False
        self._quitting = False
        self.transactions = 0
        self.peer_helo: str | None = None  # the domain in the server's last EHLO/HELO reply
        self.starttls_offered = False  # STARTTLS was in the EHLO reply before TLS
        self.auth_mechanism: str | None = None  # the SASL mechanism used, after AUTH
        self.auth_cb_type: str | None = None  # its channel-binding type (-PLUS only)
        # RFC 3207 §4.2: lines that arrive in the same read as the STARTTLS reply were
        # sent in plaintext behind it (response injection): a protocol error.
        self._tls_epoch = 0
        self._read_epoch = 0

    @property
    def local_ip(self) -> str | None:
        """Our address on this connection (RFC 8460 "sending-mta-ip"), when connected."""
        try:
            return str(self._t.getHost().host) if self.transport is not None else None
        except Exception:  # noqa: BLE001 - a transport without addresses (tests)
            return None

    @property
    def usable(self) -> bool:
        """Whether another transaction can be started on this connection."""
        return self._lost is None and not self._quitting and self.transport is not None

    # -- Twisted plumbing --------------------------------------------------------------

    def connectionMade(self) -> None:
        self.ready.callback(None)

    def connectionLost(self, reason: Failure = Failure(Exception("closed"))) -> None:
        if self._in_starttls:
            err: SMTPClientError = SMTPTLSError(f"TLS handshake failed: {reason.value}",
                                                ResultType.VALIDATION_FAILURE)
        else:
            err = SMTPConnectionError(f"connection lost: {reason.getErrorMessage()}")
        self._lost = Failure(err)
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            if timer is not None and timer.active():
                timer.cancel()
            d.errback(self._lost)

    def dataReceived(self, data: bytes) -> None:
        self._read_epoch = self._tls_epoch
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._protocol_error("reply line too long")

    def lineReceived(self, line: bytes) -> None:
        if self._lost is not None:
            return
        if self._read_epoch != self._tls_epoch:
            self._protocol_error("plaintext data after the STARTTLS reply (RFC 3207 §4.2)")
            return
        m = _REPLY_RE.match(line)
        if m is None:
            self._protocol_error(f"not an SMTP reply: {line[:80]!r}")
            return
        code = int(m.group(1))
        if self._lines and self._lines[0][0] != code:
            self._protocol_error("reply code changed within a multi-line reply")
            return
        self._lines.append((code, (m.group(3) or b"").decode("utf-8", "replace")))
        if m.group(2) != b"-":
            texts = [t for _c, t in self._lines]
            self._lines = []
            em = _ENHANCED_RE.match(texts[0]) if code != 220 or self.esmtp else None
            enhanced = None
            if em and em.group(1)[0] == str(code)[0]:
                enhanced = em.group(1)
                texts = [_ENHANCED_RE.sub("", t, count=1) for t in texts]
            self._deliver_reply(Reply(code, enhanced, texts[0] if texts else "", tuple(texts[1:])))

    @property
    def _t(self) -> Any:
        return self.transport

    def _protocol_error(self, why: str) -> None:
        log.warn("protocol error from {server}: {why}", server=self.server_name, why=why)
        self._in_starttls = False
        err = SMTPProtocolError(why)
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            if timer is not None and timer.active():
                timer.cancel()
            d.errback(err)
        self._lost = Failure(err)
        if self.transport is not None:
            self._t.abortConnection()

    def _deliver_reply(self, reply: Reply) -> None:
        if reply.code == 421:
            # RFC 5321 §3.8: the server is closing the channel: this reply answers the
            # command it was sent for; nothing after it will be answered or sent.
            err = SMTPReplyError.from_reply(reply)
            self._lost = Failure(err)
            waiters, self._waiters = self._waiters[1:], self._waiters[:1]
            for d, timer in waiters:
                if timer is not None and timer.active():
                    timer.cancel()
                d.errback(err)
        if self._waiters:
            d, timer = self._waiters.pop(0)
            if timer is not None and timer.active():
                timer.cancel()
            d.callback(reply)
        else:
            self._replies.append(reply)

    def _expect(self, timeout: float, what: str) -> Deferred[Reply]:
        """A Deferred for the next reply; errbacks with SMTPTimeoutError after ``timeout``."""
        if self._replies:
            return succeed(self._replies.pop(0))
        if self._lost is not None:
            return fail(self._lost)
        d: Deferred[Reply] = Deferred()
        entry: list[Any] = [d, None]

        def expire() -> None:
            if (d, entry[1]) in self._waiters:
                self._waiters.remove((d, entry[1]))
            d.errback(SMTPTimeoutError(f"timeout waiting for the reply to {what}"))
            if self.transport is not None:
                self._t.abortConnection()

        entry[1] = self.clock.callLater(timeout, expire)
        self._waiters.append((d, entry[1]))
        return d

    def _send(self, line: str) -> None:
        self._t.write(line.encode("utf-8") + b"\r\n")

    async def _command(self, line: str, timeout: float, what: str = "") -> Reply:
        if self._lost is not None and not self._replies:
            self._lost.raiseException()  # closed, or closing after a 421 (RFC 5321 §3.8)
        self._send(line)
        return await self._expect(timeout, what or line.split(" ", 1)[0])

    # -- session -----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Greeting, EHLO/HELO, STARTTLS per policy, AUTH; errbacks with SMTPClientError."""
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        greeting = await self._expect(self.settings.greeting_timeout, "greeting")
        if greeting.code != 220:
            raise SMTPReplyError.from_reply(greeting, "greeting")
        if self.implicit_tls:
            # The greeting came through the TLS layer: the handshake is complete.
            info = self._tls_info()
            self.tls_result = attrs.evolve(
                self.tls_result, used=True, version=info.version, cipher=info.cipher,
                verified=self.tls_policy.mode is TLSMode.VERIFIED
                and self.tls_policy.client_options is not None)
        await self._hello()
        if not self.implicit_tls:
            await self._starttls()
        if self.auth is not None:
            await self._authenticate(self.auth)

    async def _hello(self) -> None:
        reply = await self._command(f"EHLO {self.settings.helo_name}", self.settings.ehlo_timeout)
        if reply.code == 250:
            words = reply.lines[0].split() if reply.lines else []
            self.peer_helo = words[0] if words else None
            self.esmtp = True
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _sep, params = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params
            return
        if reply.code == 421:
            raise SMTPReplyError.from_reply(reply, "EHLO")
        # RFC 5321 §3.2: a server that does not know EHLO: fall back to HELO.
        self.esmtp = False
        self.extensions = {}
        reply = await self._command(f"HELO {self.settings.helo_name}", self.settings.ehlo_timeout)
        if reply.code != 250:
            raise SMTPReplyError.from_reply(reply, "HELO")

    def has(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    async def _starttls(self) -> None:
        policy = self.tls_policy
        self.starttls_offered = self.has("STARTTLS")
        if policy.mode is TLSMode.NONE:
            return
        if not self.has("STARTTLS"):
            if policy.mode is TLSMode.OPPORTUNISTIC:
                return
            self.tls_result = attrs.evolve(self.tls_result, failure=ResultType.STARTTLS_NOT_SUPPORTED)
            raise SMTPTLSError(f"{self.server_name} does not offer STARTTLS",
                               ResultType.STARTTLS_NOT_SUPPORTED)
        reply = await self._command("STARTTLS", self.settings.ehlo_timeout)
        if reply.code != 220:
            self.tls_result = attrs.evolve(self.tls_result, failure=ResultType.STARTTLS_NOT_SUPPORTED)
            if policy.mode is TLSMode.OPPORTUNISTIC:
                return
            raise SMTPTLSError(f"STARTTLS refused: {reply.summary}",
                               ResultType.STARTTLS_NOT_SUPPORTED)
        options = policy.client_options
        if options is None:
            from twisted.internet.ssl import CertificateOptions

            options = CertificateOptions()  # opportunistic: no verification (RFC 7435)
        # RFC 3207 §4.2: discard what we knew; nothing may be pipelined across the switch.
        if self._replies or self._buffer:
            self._protocol_error("plaintext data after the STARTTLS reply (RFC 3207 §4.2)")
            raise SMTPProtocolError("plaintext data after the STARTTLS reply")
        self._tls_epoch += 1
        self._in_starttls = True
        try:
            self._t.startTLS(options)
        except Exception as e:  # a transport without TLS, bad options
            self._in_starttls = False
            self.tls_result = attrs.evolve(self.tls_result,
                                           failure=ResultType.VALIDATION_FAILURE, detail=str(e))
            self._t.abortConnection()
            raise SMTPTLSError(f"cannot start TLS: {e}") from e
        try:
            await self._hello()  # the reply arrives only after a successful handshake
        except SMTPTLSError as e:
            self.tls_result = attrs.evolve(self.tls_result, failure=e.result_type,
                                           detail=str(e))
            raise
        finally:
            self._in_starttls = False
        info = self._tls_info()
        verified = False
        if policy.verifier is not None:
            check = policy.verifier.verify(info)
            failure = check.result_type
            if failure is None and not check.ok:
                failure = ResultType.VALIDATION_FAILURE
            if failure is not None:
                self.tls_result = attrs.evolve(self.tls_result, used=True, failure=failure,
                                               detail=check.detail, version=info.version,
                                               cipher=info.cipher)
                if policy.mode is TLSMode.VERIFIED:
                    # The policy and the reason, for the queue, the admin and DSNs
                    # (as Postfix says "no matching DANE TLSA records").
                    what = POLICY_NAMES.get(policy.policy_type, "TLS")
                    raise SMTPTLSError(f"{self.server_name}: {what} verification failed: "
                                       f"{check.detail or failure.value} ({failure.value})",
                                       failure)
            else:
                verified = check.verified
        elif policy.mode is TLSMode.VERIFIED and policy.client_options is not None:
            verified = True  # the connection creator verified during the handshake
        self.tls_result = attrs.evolve(self.tls_result, used=True, verified=verified,
                                       version=info.version, cipher=info.cipher)

    def _tls_info(self) -> TLSConnectionInfo:
        version = cipher = None
        chain: tuple[Any, ...] = ()
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if handle is not None and hasattr(handle, "get_protocol_version_name"):
            try:
                version = handle.get_protocol_version_name()
                cipher = handle.get_cipher_name()
                certs = handle.get_peer_cert_chain() or []
                chain = tuple(c.to_cryptography() if hasattr(c, "to_cryptography") else c
                              for c in certs)
            except Exception as e:  # noqa: BLE001 - informational only
                log.debug("no TLS details: {error}", error=e)
        return TLSConnectionInfo(version, cipher, chain, self.server_name)

    async def _authenticate(self, auth: ClientAuth) -> None:
        from mxd.sasl import client as sasl_client

        tls = self.tls_result.used
        if not tls and not auth.allow_plaintext:
            # RFC 4954 §4: credentials never go over an unencrypted connection by default.
            raise SMTPAuthError(538, "5.7.11", ["refusing to authenticate without TLS"], False)
        offered = self.extensions.get("AUTH", "").split()
        bindings, cb_type = self._channel_binding() if tls else (None, None)
        mech_name = choose_auth_mechanism(offered, auth.allowed_mechanisms, tls=tls,
                                          channel_binding=cb_type is not None)
        if mech_name is None:
            why = f"no usable AUTH mechanism in {offered or 'the EHLO reply'}"
            if not tls and offered and all(m.upper() in _CLEARTEXT_MECHS for m in offered):
                why = f"the server offers only {' '.join(offered)} without TLS"
            raise SMTPAuthError(530, "5.7.0", [why], True)
        # RFC 5802 §6: a SCRAM client that can bind to the channel but is not offered a
        # -PLUS mechanism says so (gs2 "y"), so a server that does support -PLUS detects
        # that the offer was stripped; ``make_client`` decides "y"/"n" from these values.
        plus_offered = any(m.upper().endswith("-PLUS") for m in offered)
        mech = sasl_client.make_client(
            mech_name, auth.username, auth.password,
            channel_bindings=bindings if cb_type is not None else None, cb_type=cb_type,
            server_offered_plus=plus_offered)
        self.auth_mechanism = mech_name
        self.auth_cb_type = cb_type if mech_name.upper().endswith("-PLUS") else None
        initial = mech.initial_response()
        line = f"AUTH {mech_name}"
        if initial is not None:
            line += " " + (base64.b64encode(initial).decode() if initial else "=")
        reply = await self._command(line, self.settings.ehlo_timeout, "AUTH")
        while reply.code == 334:
            try:
                challenge = base64.b64decode(" ".join(reply.lines).strip(), validate=True)
                response = mech.step(challenge)
            except Exception as e:
                reply = await self._command("*", self.settings.ehlo_timeout, "AUTH")
                raise SMTPAuthError(535, "5.7.8", [f"authentication aborted: {e}"], True) from e
            reply = await self._command(base64.b64encode(response).decode(),
                                        self.settings.ehlo_timeout, "AUTH")
        if reply.code != 235:
            raise SMTPAuthError(reply.code, reply.enhanced, [f"AUTH {mech_name}:", *reply.lines],
                                reply.code >= 500, "AUTH")
        try:
            mech.finish(None)
        except Exception as e:  # SCRAM: the server never proved it knows the password
            raise SMTPAuthError(535, "5.7.8", [f"AUTH {mech_name}: {e}"], True, "AUTH") from e

    def _channel_binding(self) -> tuple[Any, str | None]:
        """This connection's channel bindings and the type a -PLUS mechanism uses:
        tls-exporter on TLS 1.3 (RFC 9266 §3), tls-unique on TLS 1.2 (RFC 5929 §3, the
        default of RFC 5802 §6); (None, None) when there is none to use."""
        from mxd.sasl.channelbinding import channel_bindings_from_transport

        try:
            cb = channel_bindings_from_transport(self.transport, server_side=False)
        except Exception as e:  # noqa: BLE001 - no binding rather than no delivery
            log.debug("no channel binding: {error}", error=e)
            return None, None
        if cb is None:
            return None, None
        cb_type = "tls-exporter" if cb.tls_version == "TLSv1.3" else "tls-unique"
        return cb, cb_type if cb.get(cb_type) is not None else None

    # -- transactions ------------------------------------------------------------------

    def check_message(self, message: ClientMessage) -> None:
        """Raise SMTPLocalError when the peer cannot take ``message`` (see module doc)."""
        if message.smtputf8 and not self.has("SMTPUTF8"):
            raise SMTPLocalError(553, "5.6.7", ["the peer does not support SMTPUTF8"], True)
        if message.body.upper() == "8BITMIME" and not self.has("8BITMIME"):
            raise SMTPLocalError(554, "5.6.3", ["the peer does not support 8BITMIME"], True)
        if message.body.upper() == "BINARYMIME" and not (
                self.has("BINARYMIME") and self.has("CHUNKING")):
            raise SMTPLocalError(554, "5.6.3", ["the peer does not support BINARYMIME"], True)
        limit = self.extensions.get("SIZE", "").strip()
        if limit.isdigit() and int(limit) and message.size > int(limit):
            raise SMTPLocalError(552, "5.3.4", [f"message too big for the peer ({limit})"], True)
        if message.requiretls and not (self.tls_result.used and self.has("REQUIRETLS")):
            # RFC 8689 §4.2.1 (verification of the TLS connection comes with the policy).
            raise SMTPLocalError(550, "5.7.30", ["REQUIRETLS not supported by the peer"], True)
        if message.requiretls and not (self.tls_result.verified and not self.tls_result.failure):
            # RFC 8689 §4.2.1: the server's certificate must have been verified (DANE or
            # MTA-STS); the policy should never have let an unverified session get here.
            raise SMTPLocalError(550, "5.7.30",
                                 ["REQUIRETLS needs a verified TLS connection"], True)

    def _mail_line(self, m: ClientMessage) -> str:
        params = []
        if self.has("SIZE") and m.size:
            params.append(f"SIZE={m.size}")
        if m.body.upper() in ("8BITMIME", "BINARYMIME") and self.esmtp:
            params.append(f"BODY={m.body.upper()}")
        if m.smtputf8:
            params.append("SMTPUTF8")
        if m.requiretls:
            params.append("REQUIRETLS")
        if self.has("DSN"):
            if m.ret:
                params.append(f"RET={m.ret.upper()}")
            if m.envid:
                params.append(f"ENVID={xtext.encode(m.envid)}")
        return " ".join([f"MAIL FROM:<{m.mail_from}>", *params])

    def _rcpt_line(self, r: ClientRecipient) -> str:
        params = []
        if self.has("DSN"):
            if r.notify:
                params.append("NOTIFY=" + ",".join(sorted(n.upper() for n in r.notify)))
            if r.orcpt:
                params.append(f"ORCPT={r.orcpt}")
        return " ".join([f"RCPT TO:<{r.address}>", *params])

    def send(self, message: ClientMessage, body: BinaryIO) -> Deferred[TransactionResult]:
        """One transaction; fires with per-recipient results.

        A recipient refused at RCPT keeps that reply (``RecipientResult.at_rcpt``); the
        others get the final reply to the body.  Errbacks with SMTPLocalError (nothing
        sent), SMTPReplyError for MAIL FROM (applies to every recipient), SMTPReplyError 421
        when the server closes the channel mid-transaction (RFC 5321 §3.8; the connection
        is then unusable), or SMTPConnectionError/SMTPTimeoutError.
        """
        return ensureDeferred(self._transaction(message, body))

    async def _transaction(self, m: ClientMessage, body: BinaryIO) -> TransactionResult:
        self.check_message(m)
        self.transactions += 1
        s = self.settings
        pipelining = self.has("PIPELINING")
        chunking = s.use_chunking and self.has("CHUNKING") or m.body.upper() == "BINARYMIME"
        lines = [self._mail_line(m)] + [self._rcpt_line(r) for r in m.recipients]
        if not chunking:
            lines.append("DATA")
        replies: list[Reply] = []
        if pipelining:
            # RFC 2920 §3.1: MAIL, RCPTs and DATA go in one write; replies come in order.
            self._t.write("".join(f"{x}\r\n" for x in lines).encode("utf-8"))
            for i, x in enumerate(lines):
                t = s.mail_timeout if i == 0 else s.rcpt_timeout if x != "DATA" else s.data_init_timeout
                replies.append(await self._expect(t, x.split(" ", 1)[0]))
        else:
            for i, x in enumerate(lines):
                t = s.mail_timeout if i == 0 else s.rcpt_timeout if x != "DATA" else s.data_init_timeout
                replies.append(await self._command(x, t))
                if i == 0 and not replies[0].ok:
                    break
                if x == "DATA":
                    break
                if i == len(m.recipients) and not any(r.ok for r in replies[1:]):
                    break  # no recipient accepted: do not start DATA
        mail_reply = replies[0]
        data_accepted = (not chunking and len(replies) > len(m.recipients) + 1
                         and replies[-1].code == 354)
        if not mail_reply.ok:
            await self._abort_data(data_accepted)
            raise SMTPReplyError.from_reply(mail_reply, "MAIL FROM")
        rcpt_replies = replies[1 : 1 + len(m.recipients)]
        accepted = [r.ok for r in rcpt_replies]
        if not any(accepted):
            await self._abort_data(data_accepted)
            return TransactionResult(tuple(RecipientResult(r.address, rep, at_rcpt=True)
                                           for r, rep in zip(m.recipients, rcpt_replies, strict=False)), None)
        if self._lost is not None:
            self._lost.raiseException()  # RFC 5321 §3.8: a 421 came; send no data
        if chunking:
            final = await self._bdat(m, body)
        else:
            data_reply = replies[-1]
            if data_reply.code != 354:
                await self._reset()
                final = data_reply
            else:
                final = await self._data(body)
        results = []
        for r, rep, ok in zip(m.recipients, rcpt_replies, accepted, strict=True):
            results.append(RecipientResult(r.address, final, False) if ok
                           else RecipientResult(r.address, rep, at_rcpt=True))
        return TransactionResult(tuple(results), final)

    async def _abort_data(self, data_accepted: bool) -> None:
        """End a transaction that cannot deliver (MAIL refused or no recipient accepted).

        RFC 2920 §3.1: when the pipelined DATA was accepted anyway, send an empty message
        (a lone dot) before RSET, which would otherwise become message text."""
        if data_accepted:
            self._send(".")
            await self._expect(self.settings.data_end_timeout, "end of data")
        await self._reset()

    async def _reset(self) -> None:
        if self._lost is not None:
            return  # the server closed the channel (421) or the connection is gone
        try:
            await self._command("RSET", self.settings.mail_timeout)
        except SMTPClientError:
            pass

    async def _data(self, body: BinaryIO) -> Reply:
        encoder = DataEncoder()
        producer = BodyProducer(body, self._t, encoder.encode, self.clock,
                                 self.settings.data_block_timeout, self._stall)
        try:
            await producer.start()
        except SMTPClientError:
            raise
        except OSError as e:
            self._t.abortConnection()
            raise SMTPConnectionError(f"reading the message failed: {e}") from e
        if self._lost is not None:
            self._lost.raiseException()
        self._t.write(encoder.finish() + b".\r\n")
        return await self._expect(self.settings.data_end_timeout, "end of data")

    def _stall(self) -> None:
        log.warn("{server} stopped taking data", server=self.server_name)
        if self.transport is not None:
            self._t.abortConnection()

    async def _bdat(self, m: ClientMessage, body: BinaryIO) -> Reply:
        encoder = DataEncoder(dot_stuff=False)
        binary = m.body.upper() == "BINARYMIME"
        size = max(1, self.settings.chunk_size)
        chunk = body.read(size)
        while True:
            nxt = body.read(size)
            data = chunk if binary else encoder.encode(chunk)
            last = not nxt
            if last and not binary:
                data += encoder.finish()
            cmd = f"BDAT {len(data)}{' LAST' if last else ''}"
            self._t.write(cmd.encode() + b"\r\n" + data)
            reply = await self._expect(self.settings.data_end_timeout if last
                                       else self.settings.data_block_timeout, "BDAT")
            if last or not reply.ok:
                if not reply.ok and not last:
                    await self._reset()
                return reply
            chunk = nxt

    def quit(self) -> Deferred[None]:
        """Send QUIT, wait briefly for the reply and close; never errbacks."""
        async def run() -> None:
            if self._quitting:
                return
            self._quitting = True
            try:
                if self._lost is None:
                    await self._command("QUIT", 10.0)
            except SMTPClientError:
                pass
            finally:
                if self.transport is not None:
                    self._t.loseConnection()
        return ensureDeferred(run())


__all__ = [
    "ClientAuth",
    "ClientMessage",
    "ClientRecipient",
    "ClientSettings",
    "DataEncoder",
    "RecipientResult",
    "Reply",
    "SMTPAuthError",
    "SMTPClient",
    "SMTPClientError",
    "SMTPConnectionError",
    "SMTPLocalError",
    "SMTPNoAnswerError",
    "SMTPProtocolError",
    "SMTPReplyError",
    "SMTPTLSError",
    "SMTPTimeoutError",
    "TLSConnectionInfo",
    "TLSMode",
    "TLSPolicy",
    "TLSResult",
    "TLSVerifier",
    "TransactionResult",
    "choose_auth_mechanism",
]
