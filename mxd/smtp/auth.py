"""SMTP AUTH (RFC 4954) over the SASL contract of ``mxd.sasl.api`` (RFC 4422).

SASL-IR (``AUTH MECH initial``; ``=`` is empty), ``*`` aborts (501 5.0.0), challenges
as one base64 line after 334, 235 2.7.0 on success, 535 5.7.8 on failure, 454 4.7.0 when
temporary or rate limited.  Additional data with success (SCRAM's server-final) goes in
a last 334 challenge that the client answers with an empty line (RFC 4954 §4).
"""

from __future__ import annotations

import base64

from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure as TwistedFailure

from mxd.sasl.api import Continue, Outcome, Success, UnknownMechanism
from mxd.sasl.api import Failure as SASLFailure
from mxd.smtp import commands, replies
from mxd.smtp.replies import Reply
from mxd.smtp.session import SessionBase, State


class AuthMixin(SessionBase):
    """AUTH handling for ``SMTPServerProtocol``."""

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
