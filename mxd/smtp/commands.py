"""SMTP command lines (RFC 5321 §4.1.1, RFC 3030 BDAT, RFC 4954 AUTH, RFC 3207 STARTTLS).

``parse_command`` turns one line (bytes, CRLF removed) into a typed command value or
raises ``CommandError`` carrying the reply to send.  The command table maps each verb to
its parser; the server's state machine dispatches on the value's type.  Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

import attrs

from mxd.errors import MxdError
from mxd.smtp import replies
from mxd.smtp.address import (
    Address,
    AddressError,
    parse_domain,
    parse_mail_argument,
    parse_rcpt_argument,
)
from mxd.smtp.replies import Reply


class CommandError(MxdError):
    """A command line cannot be parsed; ``reply`` says what to answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@attrs.frozen
class Helo:
    domain: str  # a domain or an address literal, as given
    extended: bool  # EHLO (True) or HELO


@attrs.frozen
class Mail:
    sender: Address | None  # None: null reverse-path
    params: dict[str, str | None]


@attrs.frozen
class Rcpt:
    recipient: Address | None  # None: <Postmaster> without a domain
    params: dict[str, str | None]


@attrs.frozen
class Data:
    pass


@attrs.frozen
class Bdat:
    size: int
    last: bool


@attrs.frozen
class Rset:
    pass


@attrs.frozen
class Noop:
    pass


@attrs.frozen
class Quit:
    pass


@attrs.frozen
class Vrfy:
    argument: str


@attrs.frozen
class Expn:
    argument: str


@attrs.frozen
class Help:
    argument: str


@attrs.frozen
class StartTLS:
    pass


@attrs.frozen
class Auth:
    mechanism: str  # uppercased
    initial: bytes | None  # None: no initial response; b"" for "="


Command = Helo | Mail | Rcpt | Data | Bdat | Rset | Noop | Quit | Vrfy | Expn | Help | StartTLS | Auth

_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}\Z")  # RFC 4422 §3.1 sasl-mech
_HELO_LITERAL = re.compile(r"\[[^\[\]\\]+\]\Z")
MAX_BDAT_SIZE = 2**62


def decode_sasl_response(text: str) -> bytes:
    """RFC 4954 §4: base64 (``=`` alone is the empty response); CommandError when invalid."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CommandError(replies.AUTH_BAD_BASE64) from None


def _no_argument(cls: type) -> Callable[[str], Command]:
    def parse(arg: str) -> Command:
        if arg.strip():
            raise CommandError(replies.SYNTAX_ERROR.with_text("This command takes no argument"))
        return cls()

    return parse


def _helo(extended: bool) -> Callable[[str], Command]:
    def parse(arg: str) -> Command:
        arg = arg.strip()
        if not arg or " " in arg:
            raise CommandError(replies.SYNTAX_ERROR.with_text("EHLO/HELO needs one domain"))
        if not _HELO_LITERAL.match(arg):
            try:
                parse_domain(arg)
            except AddressError:
                # RFC 5321 §4.1.4 asks for a domain, but many clients send a bare host
                # name with underscores and the like; accept any printable token.
                if not arg.isprintable():
                    raise CommandError(replies.SYNTAX_ERROR) from None
        return Helo(arg, extended)

    return parse


def _mail(arg: str) -> Command:
    try:
        m = parse_mail_argument(arg)
    except AddressError as e:
        raise CommandError(replies.BAD_ADDRESS_SYNTAX.with_text(f"Syntax error: {e}")) from None
    return Mail(m.sender, m.params)


def _rcpt(arg: str) -> Command:
    try:
        r = parse_rcpt_argument(arg)
    except AddressError as e:
        raise CommandError(replies.BAD_RECIPIENT_SYNTAX.with_text(f"Syntax error: {e}")) from None
    return Rcpt(r.recipient, r.params)


def _bdat(arg: str) -> Command:
    parts = arg.split()
    if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or not parts[0].isascii():
        raise CommandError(replies.SYNTAX_ERROR.with_text("BDAT needs a chunk size"))
    if len(parts) == 2 and parts[1].upper() != "LAST":
        raise CommandError(replies.SYNTAX_ERROR.with_text("BDAT size [LAST]"))
    size = int(parts[0])
    if size > MAX_BDAT_SIZE:
        raise CommandError(replies.MESSAGE_TOO_BIG)
    return Bdat(size, len(parts) == 2)


def _auth(arg: str) -> Command:
    parts = arg.split()
    if not 1 <= len(parts) <= 2:
        raise CommandError(replies.SYNTAX_ERROR.with_text("AUTH mechanism [initial-response]"))
    mech = parts[0].upper()
    if not _MECHANISM.match(mech):
        raise CommandError(replies.BAD_MECHANISM)
    initial = decode_sasl_response(parts[1]) if len(parts) == 2 else None
    return Auth(mech, initial)


def _text(cls: type) -> Callable[[str], Command]:
    def parse(arg: str) -> Command:
        return cls(arg.strip())

    return parse


# The command table: verb -> parser of the rest of the line.
COMMANDS: dict[str, Callable[[str], Command]] = {
    "EHLO": _helo(True),
    "HELO": _helo(False),
    "MAIL": _mail,
    "RCPT": _rcpt,
    "DATA": _no_argument(Data),
    "BDAT": _bdat,
    "RSET": _no_argument(Rset),
    "NOOP": lambda arg: Noop(),  # RFC 5321 §4.1.1.9: a parameter may be given, ignored
    "QUIT": _no_argument(Quit),
    "VRFY": _text(Vrfy),
    "EXPN": _text(Expn),
    "HELP": _text(Help),
    "STARTTLS": _no_argument(StartTLS),
    "AUTH": _auth,
}


def parse_command(line: bytes) -> Command:
    """Parse one command line (without CRLF).  Raises CommandError with the reply."""
    if b"\r" in line or b"\n" in line:
        raise CommandError(replies.BARE_LINEFEED_COMMAND)
    if b"\x00" in line:
        raise CommandError(replies.SYNTAX_ERROR.with_text("NUL in command line"))
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(replies.SYNTAX_ERROR.with_text("Command line is not UTF-8")) from None
    verb, _, arg = text.partition(" ")
    parser = COMMANDS.get(verb.upper())
    if parser is None:
        raise CommandError(replies.UNRECOGNISED)
    return parser(arg)
