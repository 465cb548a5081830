"""``mxd sendmail`` / ``mxd-sendmail``: a sendmail-compatible submission command.

For scripts and local programs (cron, ``mail``, git send-email): the message comes on
stdin, recipients from the arguments and/or the message headers (``-t``); it is submitted
over SMTP submission (RFC 6409) to the local mxd or a configured remote server, with SASL
(the most secure mechanism offered, SCRAM-*-PLUS first) over TLS.  Nothing is queued
locally: the exit status says whether the server took the message (sysexits.h codes), and
every failure is one line on stderr.

Flags (classic sendmail): ``-f ADDR``/``-r ADDR`` envelope sender, ``-F NAME`` full name
for a From header we add, ``-t`` recipients from To/Cc/Bcc (Bcc is then removed),
``-i``/``-oi`` a lone "." does not end the message, ``-bm`` deliver (the only mode),
``-oem``/``-oee`` accepted (errors are reported by the exit status), ``-N``/``-R``/``-V``
DSN parameters (RFC 3461) passed on.  Other classic flags (``-o*``, ``-B``, ``-v``,
``-O``, ``-A*``, ``-C``, ``-L``, ``-X``, ``-h``, ``-G``, ``-U``, ``-m``, ``-n``, ``-d*``)
are accepted and ignored.  ``--config PATH`` names our own config file (default
``/etc/mxd/sendmail.toml``; when that file does not exist, the defaults below apply).

Config (TOML), every key optional::

    host = "127.0.0.1"        # submission server
    port = 587
    tls = "starttls"          # starttls | implicit (465) | none (loopback only)
    tls_verify = true         # check the certificate against `host` (or tls_server_name)
    tls_server_name = ""      # name to verify, when `host` is an IP address
    ca_file = ""              # PEM roots; default: the system store
    username = ""             # empty: no AUTH
    password_file = ""        # readable only by its owner (chmod 600)
    mechanisms = []           # empty: the most secure offered
    sender = ""               # default envelope sender (default: USER@hostname)
    hostname = ""             # for EHLO and Message-ID (default: this host's name)
    timeout = 60.0
"""

from __future__ import annotations

import enum
import getpass
import re
import socket
import sys
import time
import tomllib
import uuid
from collections.abc import Sequence
from email.utils import formatdate, getaddresses
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import attrs

from mxd.errors import MxdError

DEFAULT_CONFIG = Path("/etc/mxd/sendmail.toml")
PROG = "mxd-sendmail"


class Exit(enum.IntEnum):
    """sysexits.h."""

    OK = 0
    USAGE = 64  # command line usage error
    DATAERR = 65  # data format error
    NOINPUT = 66  # cannot open input
    NOUSER = 67  # addressee unknown
    NOHOST = 68  # host name unknown
    UNAVAILABLE = 69  # service unavailable
    SOFTWARE = 70  # internal software error
    OSERR = 71  # system error
    IOERR = 74  # input/output error
    TEMPFAIL = 75  # temp failure; user is invited to retry
    PROTOCOL = 76  # remote error in protocol
    NOPERM = 77  # permission denied
    CONFIG = 78  # configuration error


class SendmailError(MxdError):
    """A failure with its exit status; the message is the one line printed."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- command line ------------------------------------------------------------------------


@attrs.frozen
class Options:
    recipients: tuple[str, ...] = ()
    sender: str | None = None
    full_name: str | None = None
    extract: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi
    notify: str | None = None  # -N
    ret: str | None = None  # -R
    envid: str | None = None  # -V
    config: Path | None = None


# Flags that take a value (joined, "-fuser", or separate, "-f user").
_WITH_VALUE = set("fFrNRVBCLOXhpq")
_IGNORED = set("vGUmnsdA")  # flags without a value we accept and ignore


def parse_args(argv: Sequence[str]) -> Options:
    """Parse sendmail's command line; SendmailError(USAGE) for what we cannot do."""
    opts: dict[str, Any] = {"recipients": []}
    i = 0
    args = list(argv)
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            opts["recipients"] += args[i:]
            break
        if a == "--config" or a.startswith("--config="):
            if "=" in a:
                opts["config"] = Path(a.split("=", 1)[1])
            elif i < len(args):
                opts["config"] = Path(args[i])
                i += 1
            else:
                raise SendmailError(Exit.USAGE, "--config needs a file name")
            continue
        if not a.startswith("-") or a == "-":
            opts["recipients"].append(a)
            continue
        flag, rest = a[1:2], a[2:]
        if flag == "o":  # -oi, -oem, -oee, -odb, -oQ..., -o X
            if rest == "i":
                opts["ignore_dots"] = True
            elif rest == "" and i < len(args):
                i += 1  # "-o X" with the option separate: ignored
            continue  # -oem/-oee: errors are reported by the exit status
        if flag == "b":
            if rest not in ("m", ""):
                raise SendmailError(Exit.USAGE, f"-b{rest} is not supported (only -bm, "
                                    "deliver a message)")
            continue
        if flag == "t":
            opts["extract"] = True
            continue
        if flag == "i":
            opts["ignore_dots"] = True
            continue
        if flag in _WITH_VALUE:
            if rest:
                value = rest
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise SendmailError(Exit.USAGE, f"-{flag} needs a value")
            if flag in "fr":
                opts["sender"] = value
            elif flag == "F":
                opts["full_name"] = value
            elif flag == "N":
                opts["notify"] = value
            elif flag == "R":
                opts["ret"] = value
            elif flag == "V":
                opts["envid"] = value
            continue  # -B, -C, -L, -O, -X, -h, -p, -q: ignored
        if flag in _IGNORED:
            continue
        raise SendmailError(Exit.USAGE, f"unknown option {a}")
    opts["recipients"] = tuple(opts["recipients"])
    return Options(**opts)


# -- the message -------------------------------------------------------------------------


def read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    """Read stdin; without -i a line with a lone "." ends the message (classic sendmail).
    Line ends become CRLF."""
    lines = []
    for line in stream:
        if not ignore_dots and line.rstrip(b"\r\n") == b".":
            break
        lines.append(line.rstrip(b"\r\n"))
    return b"".join(x + b"\r\n" for x in lines)


_HEADER_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")


def split_headers(data: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded continuation lines, CRLF kept) and the
    rest (the empty line and body).  SendmailError(DATAERR) when a header line is
    neither a field nor a continuation (RFC 5322 §2.2)."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        end = len(data) if end < 0 else end + 2
        line = data[pos:end]
        if line in (b"\r\n", b""):
            return fields, data[pos:]
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise SendmailError(Exit.DATAERR, "the message starts with a continuation line")
            fields[-1] += line
        elif _HEADER_NAME.match(line):
            fields.append(line)
        elif not fields:
            # No header at all: the whole input is the body (classic sendmail does this).
            return [], b"\r\n" + data
        else:
            raise SendmailError(Exit.DATAERR, "malformed header line: "
                                f"{line[:60].decode('utf-8', 'replace').strip()!r}")
        pos = end
    return fields, b"\r\n"


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].decode("ascii", "replace").strip().lower()


def _value(field: bytes) -> str:
    return field.split(b":", 1)[1].decode("utf-8", "replace").replace("\r\n", "").strip()


@attrs.frozen
class Prepared:
    data: bytes
    recipients: tuple[str, ...]
    eight_bit: bool
    smtputf8: bool


def prepare(raw: bytes, opts: Options, sender: str, hostname: str,
            now: float | None = None) -> Prepared:
    """Add Date, Message-ID and From when missing (RFC 5322 §3.6; RFC 6409 §8 lets the
    submission agent complete them), take recipients from To/Cc/Bcc with -t and drop Bcc
    (RFC 5322 §3.6.3), and check every address."""
    from mxd.smtp.address import AddressError, parse_mailbox

    fields, rest = split_headers(raw)
    names = {_name(f) for f in fields}
    recipients = list(opts.recipients)
    if opts.extract:
        values = [_value(f) for f in fields if _name(f) in ("to", "cc", "bcc")]
        recipients += [addr for _n, addr in getaddresses(values) if addr]
        fields = [f for f in fields if _name(f) != "bcc"]
    if not recipients:
        raise SendmailError(Exit.USAGE, "no recipients (give addresses or use -t)"
                            if not opts.extract else "no recipients in To, Cc or Bcc")
    for addr in [*recipients, sender]:
        try:
            parse_mailbox(addr)
        except AddressError as e:
            raise SendmailError(Exit.DATAERR, f"bad address {addr!r}: {e}") from None
    added = []
    if "date" not in names:
        added.append(f"Date: {formatdate(now if now is not None else time.time(), localtime=True)}")
    if "message-id" not in names:
        added.append(f"Message-ID: <{uuid.uuid4().hex}@{hostname}>")
    if "from" not in names:
        name = opts.full_name
        if name:
            quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            added.append(f"From: {quoted} <{sender}>")
        else:
            added.append(f"From: {sender}")
    head = b"".join(a.encode("utf-8") + b"\r\n" for a in added) + b"".join(fields)
    data = head + rest
    uniq = tuple(dict.fromkeys(recipients))
    return Prepared(data, uniq, eight_bit=any(b > 127 for b in data),
                    smtputf8=not all(a.isascii() for a in (*uniq, sender)))


# -- config ------------------------------------------------------------------------------


@attrs.frozen
class SendmailConfig:
    host: str = "127.0.0.1"
    port: int = 587
    tls: str = "starttls"
    tls_verify: bool = True
    tls_server_name: str = ""
    ca_file: str = ""
    username: str = ""
    password_file: str = ""
    mechanisms: tuple[str, ...] = ()
    sender: str = ""
    hostname: str = ""
    timeout: float = 60.0


def load_config(path: Path | None) -> tuple[SendmailConfig, str | None]:
    """The config and the password (None: no AUTH); SendmailError(CONFIG) naming the
    file and key for every problem."""
    explicit = path is not None
    p = path or DEFAULT_CONFIG
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if explicit:
            raise SendmailError(Exit.CONFIG, f"{p}: config file not found") from None
        data = {}
    except (OSError, UnicodeDecodeError) as e:
        raise SendmailError(Exit.CONFIG, f"{p}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SendmailError(Exit.CONFIG, f"{p}: not valid TOML: {e}") from None
    fields = {f.name: f for f in attrs.fields(SendmailConfig)}
    kw: dict[str, Any] = {}
    for k, v in data.items():
        if k not in fields:
            raise SendmailError(Exit.CONFIG, f"{p}: {k}: unknown key (known keys: "
                                f"{', '.join(fields)})")
        default = fields[k].default
        want = type(default)
        if want is tuple:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise SendmailError(Exit.CONFIG, f"{p}: {k}: expected an array of strings")
            v = tuple(x.upper() for x in v)
        elif want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        elif not isinstance(v, want) or isinstance(v, bool) != isinstance(default, bool):
            raise SendmailError(Exit.CONFIG, f"{p}: {k}: expected {want.__name__}, got {v!r}")
        kw[k] = v
    cfg = SendmailConfig(**kw)
    if cfg.tls not in ("starttls", "implicit", "none"):
        raise SendmailError(Exit.CONFIG, f"{p}: tls: expected starttls, implicit or none, "
                            f"got {cfg.tls!r}")
    if not 0 < cfg.port < 65536:
        raise SendmailError(Exit.CONFIG, f"{p}: port: expected 1 to 65535, got {cfg.port}")
    if cfg.timeout <= 0:
        raise SendmailError(Exit.CONFIG, f"{p}: timeout: must be positive")
    if bool(cfg.username) != bool(cfg.password_file):
        raise SendmailError(Exit.CONFIG, f"{p}: username and password_file go together")
    password = None
    if cfg.password_file:
        from mxd.config_transports import read_secret

        pw = Path(cfg.password_file)
        if not pw.is_absolute():
            pw = p.parent / pw
        try:
            password = read_secret(pw)
        except FileNotFoundError:
            raise SendmailError(Exit.CONFIG, f"{p}: password_file: not found: {pw}") from None
        except PermissionError:
            raise SendmailError(Exit.CONFIG, f"{p}: password_file: cannot read {pw}: "
                                "permission denied") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise SendmailError(Exit.CONFIG, f"{p}: password_file: {e}") from None
    if cfg.ca_file and not Path(cfg.ca_file).is_file():
        raise SendmailError(Exit.CONFIG, f"{p}: ca_file: not found: {cfg.ca_file}")
    return cfg, password


# -- submission --------------------------------------------------------------------------


def exit_for_reply(code: int, enhanced: str | None, stage: str) -> Exit:
    """sysexits status for an SMTP failure reply at ``stage`` (RCPT, MAIL FROM, ...)."""
    if code < 500:
        return Exit.TEMPFAIL
    enh = enhanced or ""
    if code == 535 or enh.startswith("5.7.8"):
        return Exit.NOPERM  # RFC 4954 §6: authentication credentials invalid
    if stage == "AUTH":
        return Exit.UNAVAILABLE  # no mechanism we may use (e.g. only PLAIN without TLS)
    if stage == "RCPT" and (enh.startswith("5.1.") or code in (550, 551, 553)):
        return Exit.NOUSER
    if enh.startswith("5.6.") or enh == "5.3.4" or code == 552 and stage != "RCPT":
        return Exit.DATAERR
    if enh.startswith("5.7."):
        return Exit.NOPERM
    return Exit.UNAVAILABLE


async def submit(reactor: Any, cfg: SendmailConfig, password: str | None, sender: str,
                 message: Prepared, opts: Options, *, endpoint: Any = None) -> str:
    """Submit one message; returns the server's final reply text, or raises SendmailError.

    ``endpoint`` (tests) replaces the TCP connection to cfg.host:cfg.port."""
    import io

    from twisted.internet import error as terror
    from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS

    from mxd.smtp.client import (
        ClientAuth,
        ClientMessage,
        ClientRecipient,
        ClientSettings,
        SMTPAuthError,
        SMTPClient,
        SMTPClientError,
        SMTPProtocolError,
        SMTPReplyError,
        SMTPTLSError,
        TLSMode,
        TLSPolicy,
    )

    hostname = cfg.hostname or socket.gethostname()
    options: Any = _tls_options(cfg) if cfg.tls != "none" else None
    mode = (TLSMode.NONE if cfg.tls == "none" else
            TLSMode.VERIFIED if cfg.tls_verify else TLSMode.REQUIRED)
    policy = TLSPolicy(mode=mode, client_options=options)
    t = cfg.timeout
    settings = ClientSettings(helo_name=hostname, greeting_timeout=t, ehlo_timeout=t,
                              mail_timeout=t, rcpt_timeout=t, data_init_timeout=t,
                              data_block_timeout=t, data_end_timeout=t)
    auth = None
    if cfg.username and password is not None:
        auth = ClientAuth(cfg.username, password, cfg.mechanisms or None,
                          allow_plaintext=cfg.tls == "none" and _loopback(cfg.host))
    client = SMTPClient(reactor, settings, policy, cfg.tls_server_name or cfg.host, auth,
                        implicit_tls=cfg.tls == "implicit")
    ep: Any = endpoint or HostnameEndpoint(reactor, cfg.host, cfg.port, timeout=t)
    if cfg.tls == "implicit":
        ep = wrapClientTLS(options, ep)
    where = f"{cfg.host}:{cfg.port}"
    try:
        await connectProtocol(ep, client)
    except terror.DNSLookupError:
        raise SendmailError(Exit.NOHOST, f"cannot resolve {cfg.host}") from None
    except Exception as e:  # noqa: BLE001 - any connect failure is temporary
        raise SendmailError(Exit.TEMPFAIL, f"cannot connect to {where}: "
                            f"{getattr(e, 'osError', None) or e}") from None
    try:
        try:
            await client.start()
        except SMTPAuthError as e:
            raise SendmailError(exit_for_reply(e.code, e.enhanced, "AUTH")
                                if e.code >= 500 else Exit.TEMPFAIL,
                                f"{where}: authentication failed: {e}") from None
        except SMTPTLSError as e:
            raise SendmailError(Exit.UNAVAILABLE if cfg.tls_verify else Exit.TEMPFAIL,
                                f"{where}: TLS: {e}") from None
        except SMTPProtocolError as e:
            raise SendmailError(Exit.PROTOCOL, f"{where}: {e}") from None
        except SMTPReplyError as e:
            raise SendmailError(exit_for_reply(e.code, e.enhanced, e.command or "greeting"),
                                f"{where}: {e}") from None
        except SMTPClientError as e:
            raise SendmailError(Exit.TEMPFAIL, f"{where}: {e}") from None
        notify = frozenset(n.strip().upper() for n in opts.notify.split(",")) \
            if opts.notify else None
        cm = ClientMessage(sender, tuple(ClientRecipient(r, notify) for r in message.recipients),
                           size=len(message.data),
                           body="8BITMIME" if message.eight_bit else "7BIT",
                           smtputf8=message.smtputf8, ret=opts.ret, envid=opts.envid)
        try:
            result = await client.send(cm, io.BytesIO(message.data))
        except SMTPProtocolError as e:
            raise SendmailError(Exit.PROTOCOL, f"{where}: {e}") from None
        except SMTPReplyError as e:
            raise SendmailError(exit_for_reply(e.code, e.enhanced, e.command or "DATA"),
                                f"{where}: {e.command or 'message'} refused: {e}") from None
        except SMTPClientError as e:
            raise SendmailError(Exit.TEMPFAIL, f"{where}: {e}") from None
        refused = [r for r in result.recipients if not r.delivered]
        if refused:
            worst = max(refused, key=lambda r: r.reply.code)
            stage = "RCPT" if worst.at_rcpt else "DATA"
            code = exit_for_reply(worst.reply.code, worst.reply.enhanced, stage)
            texts = "; ".join(f"<{r.address}>: {r.reply.summary}" for r in refused)
            sent = len(result.recipients) - len(refused)
            raise SendmailError(code, f"{where}: refused {texts}"
                                + (f" (sent to the other {sent})" if sent else ""))
        return result.data_reply.summary if result.data_reply else ""
    finally:
        await client.quit()


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _tls_options(cfg: SendmailConfig) -> Any:
    from twisted.internet.ssl import (
        Certificate,
        CertificateOptions,
        optionsForClientTLS,
        platformTrust,
    )

    if not cfg.tls_verify:
        return CertificateOptions()
    if cfg.ca_file:
        trust: Any = Certificate.loadPEM(Path(cfg.ca_file).read_bytes())
    else:
        trust = platformTrust()
    return optionsForClientTLS(cfg.tls_server_name or cfg.host, trust)


def default_sender(cfg: SendmailConfig) -> str:
    if cfg.sender:
        return cfg.sender
    if "@" in cfg.username:
        return cfg.username
    return f"{getpass.getuser()}@{cfg.hostname or socket.gethostname()}"


def main(argv: Sequence[str] | None = None, stdin: BinaryIO | None = None,
         stderr: TextIO | None = None) -> int:
    """The console script: returns the sysexits status (never a traceback)."""
    err = stderr or sys.stderr
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parse_args(args)
        cfg, password = load_config(opts.config)
        sender = opts.sender if opts.sender is not None else default_sender(cfg)
        try:
            raw = read_message(stdin or sys.stdin.buffer, opts.ignore_dots)
        except OSError as e:
            raise SendmailError(Exit.IOERR, f"cannot read the message: {e}") from None
        prepared = prepare(raw, opts, sender, cfg.hostname or socket.gethostname())
        _run_reactor(cfg, password, sender, prepared, opts)
        return int(Exit.OK)
    except SendmailError as e:
        print(f"{PROG}: {e}", file=err)
        return int(e.code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return int(Exit.TEMPFAIL)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        print(f"{PROG}: internal error: {e.__class__.__name__}: {e}", file=err)
        return int(Exit.SOFTWARE)


def _run_reactor(cfg: SendmailConfig, password: str | None, sender: str,
                 prepared: Prepared, opts: Options) -> None:
    """Run the submission on the global reactor (this is a short-lived command)."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import ensureDeferred

    r: Any = global_reactor
    outcome: list[Any] = []

    def go() -> None:
        d = ensureDeferred(submit(r, cfg, password, sender, prepared, opts))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: r.stop())

    r.callWhenRunning(go)
    r.run(installSignalHandlers=False)
    if not outcome:
        raise SendmailError(Exit.SOFTWARE, "the submission did not finish")
    from twisted.python.failure import Failure

    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
