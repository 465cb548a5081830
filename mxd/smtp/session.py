"""SMTP session plumbing: settings, states, the transaction record, I/O and pausing.

The base of ``mxd.smtp.server.SMTPServerProtocol`` (RFC 5321): greeting, timers, reply
output, the pause-while-asynchronous rule that keeps pipelined replies in order
(RFC 2920), line and raw input dispatch.  Commands live in ``server``, message data in
``message``, AUTH in ``auth``.
"""


from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import attrs
from twisted.internet import main, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure as TwistedFailure
from zope.interface import implementer

from mxd import randomids
from mxd.metrics import IMetrics, NoopMetrics
from mxd.sasl.api import (
    ChannelBindings,
    ConnectionInfo,
    ISASLServer,
    ServerExchange,
)
from mxd.smtp import commands, replies
from mxd.smtp.address import Address
from mxd.smtp.data import (
    BareLineEndingScanner,
    DataReader,
    HeaderSection,
    Spool,
)
from mxd.smtp.interfaces import (
    IDirectory,
    IMessageCheck,
    IMessageChecker,
    IOutbound,
    NoChecks,
)
from mxd.smtp.replies import Reply
from mxd.store.interfaces import Account, BlobWriter, IMailStore, OutboundRecipient
from mxd.tls import handshake_failure

T = TypeVar("T")

Role = Literal["smtp", "submission", "submissions"]
ChannelBindingsFn = Callable[[Any], "ChannelBindings | None"]
# Runs a blocking call off the reactor thread (e.g. twisted.internet.threads.deferToThread).
RunBlocking = Callable[[Callable[[], Any]], "Deferred[Any]"]


@attrs.frozen
class SMTPServerSettings:
    """Limits and policy of one SMTP listener (RFC 5321 §4.5.3 for the size limits)."""

    max_message_size: int = 50 * 1024 * 1024  # SIZE (RFC 1870), enforced while reading
    max_recipients: int = 100  # per transaction; LIMITS RCPTMAX (RFC 9422)
    max_transactions: int = 100  # per session; LIMITS MAILMAX (RFC 9422)
    max_errors: int = 20  # error replies per session before 421
    # Deadlines (Postfix's "per-request deadline" model): bytes that trickle in do not
    # restart a timer.  A command line must be complete within command_timeout of the
    # previous reply (RFC 5321 §4.5.3.2.7: at least 5 minutes); with the listener
    # under load (busy_fraction of max_connections in use) within command_timeout_busy.
    command_timeout: float = 300.0
    command_timeout_busy: float = 10.0
    busy_fraction: float = 0.75
    # DATA/BDAT: data_timeout from the start of the data, extended by the bytes received
    # divided by data_min_rate (bytes/s), never to more than data_timeout from now.
    data_timeout: float = 300.0
    data_min_rate: float = 500.0
    max_connections: int = 200  # in total on this listener
    max_connections_per_ip: int = 20
    # One IPv4 /24 or IPv6 /48 may hold at most this many of max_connections.
    max_connections_per_network: int = 50
    max_line_length: int = 2048  # command lines (RFC 5321 §4.5.3.1.4 is 512 without extensions)
    max_auth_line_length: int = 12288  # RFC 4954 §4
    max_header_size: int = 1024 * 1024  # header section held in memory before the body
    # RFC 5321 §6.3: refuse a message with more Received fields than this (a loop);
    # "normally at least 100".
    max_hops: int = 100
    allow_plaintext_auth_on_loopback: bool = False
    recipient_cache_ttl: float = 30.0  # seconds a RCPT lookup is cached; 0 disables
    banner: str = "ESMTP mxd"
    requiretls: bool = True  # offer REQUIRETLS (RFC 8689 §4) on TLS sessions
    close_timeout: float = 30.0  # a closing connection's peer gets this long to go away

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
    # The domain of the first forwarded local address (mxd.forwarding): the envelope
    # sender of the queued copy is rewritten into it (SRS) and the checker seals with
    # its key (ARC).  None when nothing is forwarded.
    forward_domain: str | None = None
    # message data
    blob: BlobWriter | None = None
    size: int = 0
    too_big: bool = False
    too_many_hops: bool = False
    bare_line_ending: bool = False
    headers: HeaderSection | None = None
    header_bytes: bytes = b""
    check: IMessageCheck | None = None  # the message check under way (port 25, signing)
    spool: Spool | None = None  # the body, kept aside while the check runs
    mailbox: str = "INBOX"  # where local copies go (a check may say Junk)
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
class SessionBase(LineReceiver):
    """The I/O half of an SMTP session; see ``SMTPServerProtocol``."""

    log = Logger()
    delimiter = b"\r\n"

    def __init__(
        self, *, role: Role, settings: SMTPServerSettings, store: IMailStore,
        directory: IDirectory, sasl: ISASLServer | None, outbound: IOutbound | None,
        tls: Any | None, clock: IReactorTime, hostname: str,
        checker: IMessageChecker | None = None, metrics: IMetrics | None = None,
        channel_bindings: ChannelBindingsFn | None = None,
        on_close: Callable[[Any], None] | None = None,
        run_blocking: RunBlocking | None = None,
        busy: Callable[[], bool] | None = None,
        forwarder: Any = None,
    ) -> None:
        self.role: Role = role
        self.forwarder = forwarder  # mxd.forwarding.Forwarder, or None (no forwarding)
        self.settings = settings
        self.store = store
        self.directory = directory
        self.sasl = sasl
        self.outbound = outbound
        self.tls_options = tls
        self.clock: Any = clock  # IReactorTime (zope interfaces confuse mypy)
        self.hostname = hostname
        self.checker: IMessageChecker = checker if checker is not None else NoChecks()

        self.metrics: IMetrics = metrics if metrics is not None else NoopMetrics()
        self._channel_bindings_fn = channel_bindings or _default_channel_bindings
        self._on_close = on_close
        self.run_blocking = run_blocking
        self._busy = busy if busy is not None else (lambda: False)
        self._data_deadline = 0.0
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
        self._reading_paused = False  # the transport's reading is stopped (see PAUSE_BUFFER)
        self.session_id = randomids.token_hex(6)
        self.network = ""  # the client's /24 or /48 (set by the factory)
        self.last_line_at = 0.0  # clock time of the last complete line (or the connect)

    @property
    def _tr(self) -> Any:
        """The transport, untyped (zope interfaces confuse mypy)."""
        return self.transport

    # -- connection -------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self._tr.getPeer()
        self.remote_ip = str(getattr(peer, "host", "unknown"))
        self.last_line_at = self.clock.seconds()
        self.log.info(
            "smtp connection {session} from {remote_ip} role={role}",
            session=self.session_id, remote_ip=self.remote_ip, role=self.role,
        )
        self.metrics.inc("smtp_connections_total", role=self.role)
        self._await_command()
        self._send(Reply(220, None, f"{self.hostname} {self.settings.banner}"))

    def connectionLost(self, reason: TwistedFailure = None) -> None:  # type: ignore[assignment]
        self.state = State.CLOSED
        self._cancel_timer()
        self._abort_transaction()
        failed = handshake_failure(reason) if not self.tls_active else None
        if failed is not None:
            self.metrics.inc("smtp_tls_handshake_failures_total", role=self.role)
            self.log.info("smtp tls {session} handshake from {remote_ip} failed: {reason}",
                          session=self.session_id, remote_ip=self.remote_ip, reason=failed)
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
        if self.state is State.CLOSED:
            return  # the close deadline (``_close``) stays
        if self._timer is not None and self._timer.active():
            self._timer.reset(seconds)
        else:
            self._timer = self.clock.callLater(seconds, self._timed_out)

    def command_deadline(self) -> float:
        """Seconds allowed for the next command line (shorter while the listener is busy)."""
        return (self.settings.command_timeout_busy if self._busy()
                else self.settings.command_timeout)

    def _await_command(self) -> None:
        """Start the deadline of the next command line; bytes do not extend it."""
        self._reset_timer(self.command_deadline())

    def _start_data_deadline(self) -> None:
        """DATA or a BDAT chunk starts: data_timeout, extended as bytes arrive."""
        self._data_deadline = self.clock.seconds() + self.settings.data_timeout
        self._reset_timer(self.settings.data_timeout)

    def _data_progress(self, size: int) -> None:
        """Postfix's smtpd_min_data_rate: each byte buys 1/data_min_rate seconds, up to
        data_timeout from now; a trickle cannot keep a session alive."""
        now = self.clock.seconds()
        self._data_deadline = min(now + self.settings.data_timeout,
                                  self._data_deadline + size / self.settings.data_min_rate)
        self._reset_timer(max(0.0, self._data_deadline - now))

    def evictable(self) -> bool:
        """Between transactions and not waiting on anything: closing it loses nothing."""
        return (self.state in (State.INITIAL, State.READY) and self.tx is None
                and not self.paused)

    def evict(self) -> None:
        """Make room for another client (the listener is full): 421 and close now, and
        give the slot back at once rather than when the peer has gone."""
        self.log.info("smtp {session} from {remote_ip} closed to make room",
                      session=self.session_id, remote_ip=self.remote_ip)
        self._close(replies.TOO_MANY_CONNECTIONS.with_text(
            "Too many connections from your network, closing"))
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None

    def shutdown_when_idle(self) -> bool:
        """The server is stopping: between transactions, say so (RFC 5321 §3.8: 421)
        and close; True when closed.  A transaction in progress is left to finish."""
        if self.state is State.CLOSED:
            return True
        if not self.evictable():
            return False
        self._close(replies.SERVICE_UNAVAILABLE.with_text("Server shutting down, try again "
                                                          "later"))
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None
        return True

    def shorten_deadline(self, seconds: float) -> None:
        """Under load: a session waiting for a command gets at most ``seconds`` more."""
        if self.state in (State.DATA, State.BDAT, State.CLOSED):
            return
        t = self._timer
        if t is not None and t.active() and t.getTime() - self.clock.seconds() > seconds:
            t.reset(seconds)

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
        send_now(self._tr, b"".join([line + b"\r\n" for line in reply.wire(extra)]))
        # 452 too many recipients is our own limit at work, not a client error: RFC 5321
        # §4.5.3.1.10 tells the client to send the rest in a later transaction.
        if reply.code >= 400 and reply.code != 421 and reply is not replies.TOO_MANY_RECIPIENTS:
            self.errors += 1
            if self.errors >= self.settings.max_errors:
                self._close(replies.TOO_MANY_ERRORS)

    def _close(self, reply: Reply | None = None) -> None:
        if self.state is State.CLOSED:
            return
        if reply is not None and self.transport is not None:
            send_now(self._tr, b"".join([line + b"\r\n" for line in reply.wire()]))
        self.state = State.CLOSED
        self._cancel_timer()
        self._abort_transaction()
        self.paused = True  # process nothing more
        self._buffer = b""
        if self.transport is not None:
            if close_now(self._tr):
                return
            # A TLS transport closes only after reading the peer's close_notify or end of
            # stream (RFC 8446 §6.1): reading must run even if a pending step paused it.
            # What arrives is dropped (LineReceiver's ``paused``); a peer that never
            # closes is cut off after close_timeout.
            resume = getattr(self.transport, "resumeProducing", None)
            if resume is not None:
                resume()
            self._tr.loseConnection()
            self._timer = self.clock.callLater(self.settings.close_timeout, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.log.info("smtp {session}: peer did not close; aborting", session=self.session_id)
            self._tr.abortConnection()

    # -- pausing around asynchronous steps --------------------------------------------

    def _await(self, d: Deferred[T], on_result: Callable[[T], None],
               on_error: Callable[[TwistedFailure], None]) -> None:
        """Stop processing input until ``d`` fires; then run the handler and resume.

        A Deferred that has already fired (a cached directory answer, a checker with
        nothing to do) runs its handler at once, without pausing the transport: the
        reply is written before any later pipelined command is read either way."""
        def ok(result: T) -> None:
            if self.state is State.CLOSED:
                return
            try:
                on_result(result)
            except Exception:  # noqa: BLE001 - never leave the session wedged
                self.log.failure("smtp handler failed {session}", session=self.session_id)
                self._abort_transaction()
                self._send(replies.LOCAL_ERROR)
            self._resume()  # no-op unless paused (by this wait or one it ended)

        def err(f: TwistedFailure) -> None:
            if self.state is State.CLOSED:
                return
            try:
                on_error(f)
            except Exception:  # noqa: BLE001
                self.log.failure("smtp error handler failed {session}", session=self.session_id)
                self._send(replies.LOCAL_ERROR)
            self._resume()  # no-op unless paused (by this wait or one it ended)

        fired = False

        def mark(result: object) -> object:
            nonlocal fired
            fired = True
            return result

        d.addBoth(mark)
        if not fired:
            self.pauseProducing()
        d.addCallbacks(ok, err)

    def _resume(self) -> None:
        if self.state is State.CLOSED or not self.paused:
            return
        self.resumeProducing()

    # While a step is pending, input is held back in LineReceiver's buffer (``paused``)
    # rather than by pausing the transport: a client that waits for the reply sends
    # nothing meanwhile, and stopping and restarting the socket's reading would cost two
    # ``epoll_ctl`` calls per wait.  A client that keeps sending while it should wait is
    # stopped once PAUSE_BUFFER octets are held: no more than one socket read (64 KiB)
    # brings, so that the held commands, run in one go at the resume, hold the reactor
    # no longer than a read's worth always could.
    PAUSE_BUFFER = 64 * 1024

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._reading_paused:
            self._reading_paused = False
            resume = getattr(self.transport, "resumeProducing", None)
            if resume is not None:
                resume()
        self.dataReceived(b"")

    # -- input ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if (self.paused and not self._reading_paused
                and len(self._buffer) + len(data) > self.PAUSE_BUFFER):
            pause = getattr(self.transport, "pauseProducing", None)
            if pause is not None:
                self._reading_paused = True
                pause()
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.info("smtp line too long {session}", session=self.session_id)
        self._close(replies.LINE_TOO_LONG)

    def lineReceived(self, line: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._await_command()  # the deadline of the line after this one
        self.last_line_at = self.clock.seconds()
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
        try:
            handler(self, cmd)
        except Exception:  # noqa: BLE001 - a bug must cost one reply, not the session
            self.log.failure("smtp command failed {session}", session=self.session_id)
            self._abort_transaction()
            if self.state is not State.CLOSED:
                self.line_mode = 1
                self.state = State.READY if self.helo is not None else State.INITIAL
                self._send(replies.LOCAL_ERROR)
                self._resume()

    def rawDataReceived(self, data: bytes) -> None:
        self._data_progress(len(data))
        if self.state is State.DATA:
            self._data_bytes(data)
        elif self.state is State.BDAT:
            self._bdat_bytes(data)

    def _abort_transaction(self) -> None:
        tx = self.tx
        self.tx = None
        if tx is not None and tx.spool is not None:
            tx.spool.close()
            tx.spool = None
        if tx is not None and tx.blob is not None:
            blob, tx.blob = tx.blob, None
            try:
                blob.abort()
            except Exception:  # noqa: BLE001 - already durable or gone
                self.log.debug("blob abort failed")

    # -- provided by the subclasses ----------------------------------------------------

    _handlers: dict[type, Callable[[Any, Any], None]] = {}

    def _auth_response(self, line: bytes) -> None:
        raise NotImplementedError

    def _data_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def _bdat_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def _auth_allowed(self) -> bool:
        raise NotImplementedError

    def _conn_info(self) -> ConnectionInfo:
        raise NotImplementedError


def close_now(transport: Any) -> bool:
    """Close a plain TCP connection whose output has all gone to the socket at once
    (shutdown and close, then the protocol's ``connectionLost``), as the reactor would
    after ``loseConnection`` had waited for writability with nothing left to write: two
    ``epoll_ctl`` calls and a reactor turn fewer per SMTP session.  False (nothing done)
    for anything else, a TLS connection in particular (its close waits for the peer's
    close_notify), which then goes through ``loseConnection``."""
    disconnect = getattr(getattr(transport, "reactor", None), "_disconnectSelectable", None)
    if (disconnect is None or type(transport) is not tcp.Server or transport.TLS
            or not transport.connected or transport.disconnecting
            or transport._tempDataBuffer or len(transport.dataBuffer) != transport.offset
            or transport.producer is not None):
        return False
    disconnect(transport, main.CONNECTION_DONE, False)
    return True


def send_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but on a plain TCP connection with nothing waiting in
    its buffer the octets go to the socket at once.  Twisted's ``write`` only buffers
    them and asks the reactor to watch the socket for writability, which sends them on
    its next turn and stops watching: two ``epoll_ctl`` calls and a reactor turn per
    reply, a good part of the reactor's CPU per message of an SMTP session (which
    answers each command with a short reply that fits the socket's buffer).  What the
    socket does not take, and everything on a TLS connection (implicit or STARTTLS),
    goes the usual way."""
    # Not once STARTTLS has begun: Twisted then keeps the same transport object and sends
    # through its TLS layer (``transport.TLS``).
    if (type(transport) is tcp.Server and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport._tempDataBuffer
            and len(transport.dataBuffer) == transport.offset):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            data = data[sent:]
    if data:
        transport.write(data)
