"""SMTP replies with enhanced status codes (RFC 5321 §4.2, RFC 3463, RFC 5248).

Every reply the server sends is a named constant here (or built by ``Reply.with_text``),
so tests and logs speak of ``RELAY_DENIED`` rather than of bare numbers.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Reply:
    """One SMTP reply (RFC 5321 §4.2), sent by the server or read by the client: code,
    enhanced status code (RFC 3463; None when there is none, e.g. 220 greetings) and the
    text of its first line, ``more`` for the lines after it."""

    code: int
    enhanced: str | None
    text: str
    more: tuple[str, ...] = ()

    @property
    def lines(self) -> tuple[str, ...]:
        """The text of every line."""
        return (self.text, *self.more)

    @property
    def ok(self) -> bool:
        """A positive completion (RFC 5321 §4.2.1: 2yz); 354 and 334 are checked by code."""
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def summary(self) -> str:
        """The reply as one line, for logs and DSN Diagnostic-Code fields."""
        return f"{self.code} {' '.join(self.lines)}".strip()

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)

    def wire(self, extra: tuple[str, ...] = ()) -> list[bytes]:
        """Wire lines (without CRLF).  RFC 5321 §4.2.1: "code-" on all but the last line."""
        texts = [self.text, *self.more, *extra]
        out = []
        for i, t in enumerate(texts):
            sep = " " if i == len(texts) - 1 else "-"
            prefix = f"{self.code}{sep}"
            if self.enhanced is not None:  # RFC 2034 §3: on every line
                prefix += self.enhanced + " "
            out.append((prefix + t).encode("utf-8"))
        return out


# -- 2xx ----------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Message accepted")
CHUNK_OK = Reply(250, "2.0.0", "Chunk accepted")
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
AUTH_SUCCEEDED = Reply(235, "2.7.0", "Authentication successful")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321")

# -- 3xx ----------------------------------------------------------------------------
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")

# -- 4xx ----------------------------------------------------------------------------
SERVICE_UNAVAILABLE = Reply(421, "4.3.2", "Service not available, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_TRANSACTIONS = Reply(421, "4.7.0", "Too many messages in this session, reconnect")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error, message not accepted; try again later")
DIRECTORY_UNAVAILABLE = Reply(451, "4.4.3", "Directory temporarily unavailable; try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_RATE_LIMITED = Reply(454, "4.7.0", "Too many authentication failures; try again later")

# -- 5xx ----------------------------------------------------------------------------
UNRECOGNISED = Reply(500, "5.5.1", "Command unrecognised")
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_ADDRESS_SYNTAX = Reply(501, "5.1.7", "Bad address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BARE_LINEFEED_COMMAND = Reply(500, "5.5.2", "Bare CR or LF in command line")
AUTH_ABORTED = Reply(501, "5.0.0", "Authentication aborted")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64 response")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
ALREADY_TLS = Reply(503, "5.5.1", "TLS already active")
BAD_MECHANISM = Reply(504, "5.5.4", "Unrecognised authentication mechanism")
BAD_PARAMETER = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognised or not implemented")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
MECHANISM_TOO_WEAK = Reply(534, "5.7.9", "Authentication mechanism is too weak")
ENCRYPTION_REQUIRED_FOR_AUTH = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated account")
NON_ASCII_WITHOUT_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Header section too large")
BARE_LINEFEED_DATA = Reply(
    550, "5.6.0", "Message contains bare CR or LF; lines must end with CRLF (RFC 5321 §2.3.8)"
)
BDAT_WITHOUT_CHUNKING = Reply(503, "5.5.1", "BDAT chunk sequence broken")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT")
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
# RFC 5321 §6.3 loop detection; RFC 3463 X.4.6 "Routing loop detected".
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops (Received fields): mail loop?")
REQUIRETLS_NEEDS_TLS = Reply(530, "5.7.10", "REQUIRETLS needs a TLS connection")
