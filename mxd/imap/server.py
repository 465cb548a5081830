"""IMAP4rev1 server protocol (RFC 3501) on Twisted, with the extensions mxd offers.

Why mxd has its own protocol instead of ``twisted.mail.imap4.IMAP4Server``: that class
runs commands pipelined behind STARTTLS inside the TLS session (command injection), has
no SASL-IR (RFC 4959), no LITERAL+ (RFC 7888), does not handle the ``*`` cancel of
AUTHENTICATE, encodes SASL challenges with embedded newlines (breaking SCRAM), ends IDLE
on any line, and calls its mailbox interfaces synchronously for counts and UIDs, while
mxd's store answers with Deferreds.  Here commands are framed by ``mxd.imap.framer``,
parsed by the pure ``mxd.imap.parser`` into typed values, dispatched through a typed
command table (``COMMANDS``: name → allowed states and handler), and run strictly one at a
time: reading from the socket pauses while a command's store call is outstanding.

Output flow control: the session registers as a streaming producer with its transport;
FETCH writes message bodies in chunks read from the store's files and waits whenever the
transport says its buffer is full, so a client that never reads cannot make the server
buffer without bound.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any, Literal

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure as TwFailure
from zope.interface import implementer

from mxd.clientnet import network_key
from mxd.imap import appendcmd, context, imap4rev2, inprogress, notifier, searchres, uidonly
from mxd.imap.appendsyntax import LiteralCounter
from mxd.imap.commands import COMMANDS, SYSTEM_FLAGS
from mxd.imap.deflate import CompressError, DeflateSettings, Inflater
from mxd.imap.dispatch import (
    CommandDetached,
    CommandSpec,
    Reply,
    State,
    bad,
    no,
    ok,
    store_error_reply,
)
from mxd.imap.errors import BadSequence, FramingError, ParseError
from mxd.imap.framer import (
    BlobLiteral,
    Framer,
    LiteralSink,
    NeedContinuation,
    RawCommand,
    command_words,
)
from mxd.imap.mailboxstate import MailboxStates
from mxd.imap.messagecache import MessageCache
from mxd.imap.parser import parse_command
from mxd.imap.values import Command
from mxd.imap.view import MailboxView
from mxd.metrics import NoopMetrics
from mxd.sasl.api import (
    ChannelBindings,
    ConnectionInfo,
    Continue,
    ISASLServer,
    Outcome,
    Success,
    UnknownMechanism,
)
from mxd.sasl.api import Failure as SASLFailure
from mxd.store.interfaces import (
    Account,
    IAccountStore,
    IMailStore,
    MailboxChange,
    MailboxInfo,
    MessageInfo,
    StoreError,
)
from mxd.store.metadata import IMetadataStore
from mxd.tls import handshake_failure

log = Logger()

# Commands after which the account's usage is read again (APPEND counts its own).
# Commands by which a client asks for what changed (RFC 9051 §6.1.2 NOOP, §6.3.13 IDLE,
# CHECK) or opens a mailbox: first learn at once what other processes committed (with
# [server] workers; mxd.store.watch otherwise reports it within a fraction of a second).
# FETCH catches up only when a message's body cannot be read (another process may have
# expunged it and removed the file: it is then NIL with [EXPUNGEISSUED], mxd.imap.fetch).
_CATCH_UP = frozenset({"NOOP", "CHECK", "IDLE", "SELECT", "EXAMINE", "STATUS"})

_USAGE_CHANGING = frozenset({"EXPUNGE", "UID EXPUNGE", "CLOSE", "DELETE", "COPY", "UID COPY",
                             "MOVE", "UID MOVE"})


@attrs.frozen
class IMAPServerSettings:
    """Limits and policy of the IMAP server."""

    max_line: int = 65536  # longest command line, without literals
    max_literal: int = 65536  # literals other than APPEND bodies (after login)
    max_literal_unauthenticated: int = 8192
    max_command: int = 1 << 20  # lines plus in-memory literals of one command
    append_limit: int = 64 * 1024 * 1024  # RFC 7889 APPENDLIMIT
    append_memory: int = 256 * 1024  # APPEND bodies above this stream to a file
    idle_timeout: float = 30 * 60.0  # RFC 3501 §5.4 autologout; RFC 2177 IDLE limit
    login_timeout: float = 180.0  # not-authenticated state, from connect (not extended)
    max_bad_commands: int = 20  # consecutive BADs before the connection is closed
    plaintext_login_on_loopback: bool = False  # allow LOGIN without TLS from loopback
    max_connections_per_ip: int = 50
    max_connections_per_network: int = 200  # per IPv4 /24, IPv6 /48
    max_connections: int = 5000  # in total (143 and 993 together)
    chunk_size: int = 65536  # body streaming chunk
    max_pipelined_appends: int = 32  # APPENDs of one session stored side by side
    work_slice: float = 0.004  # seconds of reactor time before a long command yields
    close_timeout: float = 30.0  # a closing connection's peer gets this long to go away
    deflate: DeflateSettings = DeflateSettings()  # RFC 4978 COMPRESS=DEFLATE


@implementer(IHandshakeListener, IPushProducer)
class IMAPSession(Protocol):
    """One IMAP connection."""

    factory: IMAPFactory
    search_result: tuple[int, ...] = ()  # RFC 5182: UIDs of the saved search result

    def __init__(self, factory: IMAPFactory) -> None:
        self.factory = factory
        self.settings = factory.settings
        self.store = factory.store
        self.accounts = factory.accounts
        self.sasl = factory.sasl
        self.clock: Any = factory.clock
        self.cache = factory.cache
        self.state = State.NOT_AUTHENTICATED
        self.tls = factory.implicit_tls
        self.tls_handshake_done = False
        self.channel_bindings: ChannelBindings | None = None
        self.account: Account | None = None
        self.usage: tuple[int, int | None] | None = None  # (bytes used, quota) of the account
        self.view: MailboxView | None = None
        self.enabled: set[str] = set()
        self.notifier: notifier.Notifier | None = None  # RFC 5465 NOTIFY SET in force
        self.deflate: Inflater | None = None  # RFC 4978: input inflater once COMPRESS is on
        self.literal_counter = LiteralCounter()  # sizes of APPEND literals (appendcmd)
        self._inflating = False
        self.contexts: dict[str, Any] = {}  # RFC 5267 §4: updated searches by tag
        self.context_touched: set[int] = set()  # UIDs this session's STOREs changed
        self._keywords: dict[str, str] = {}  # announced keywords of the selected mailbox
        self.framer = Framer(self._choose_sink, max_line=self.settings.max_line,
                             max_command=self.settings.max_command)
        self._busy = False
        self._processing = False
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[Deferred[None]] = []
        self._line_waiter: Deferred[bytes] | None = None
        self._idle_tag: str | None = None
        self._idle_pushing = False
        self._bad_count = 0
        self._timer: Any = None
        self._close_timer: Any = None
        self._closed = False
        self._greeted = False
        self._current: Deferred[None] | None = None
        # Pipelined APPENDs run side by side (their store writes share a group commit);
        # their tagged replies still go out in command order.
        self._running = 0  # commands running (more than one only if all are APPENDs)
        self._appends = 0  # of which APPENDs
        self._last_done: Deferred[None] | None = None  # fires when the last one replied
        self._held: RawCommand | None = None  # next command, waiting for them to finish
        self._slice_start = 0.0  # when the running command last had the reactor back
        self._progress_tag: str | None = None  # RFC 9585: the running command's tag
        self._progress_at = 0.0  # no progress line before this time
        self._progress_timer: Any = None
        self.peer_ip = ""
        self.network = ""
        self.client_id: dict[str, str | None] = {}
        self._socket: socket.socket | None | Literal[False] = None  # False: none to tune

    @property
    def tr(self) -> Any:
        """The transport, untyped (zope interfaces and mypy do not mix)."""
        return self.transport

    # -- connection -------------------------------------------------------------------
    def connectionMade(self) -> None:
        # TCP_NODELAY: a response is written in one piece per reactor iteration (the
        # transport joins writes), so Nagle's algorithm only ever delays the tail of a
        # response sent after an await (a FETCH batch, an IDLE push) until the client's
        # delayed ACK, tens of milliseconds later.
        sock = tcp_socket(self.transport)
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                log.debug("cannot set TCP_NODELAY")
        peer = self.tr.getPeer()
        self.peer_ip = str(getattr(peer, "host", ""))
        self.tr.registerProducer(self, True)
        self.network = network_key(self.peer_ip)
        sessions = self.factory.sessions
        same_ip = sum(1 for other in sessions if other.peer_ip == self.peer_ip)
        same_net = sum(1 for other in sessions if other.network == self.network)
        refusal = ("total" if len(sessions) >= self.settings.max_connections
                   else "per-ip" if same_ip >= self.settings.max_connections_per_ip
                   else "per-network" if same_net >= self.settings.max_connections_per_network
                   else None)
        if refusal is not None:
            self.factory.metrics.inc("imap_connections_refused", reason=refusal)
            self._closed = True
            # RFC 3501 §7.1.5: BYE as the greeting refuses the connection.
            self.tr.write(b"* BYE Too many connections" + (
                b" from your address" if refusal == "per-ip" else
                b" from your network" if refusal == "per-network" else b"") + b"\r\n")
            self.close_connection()
            return
        self._reset_timer()
        self.factory.sessions.add(self)
        self.factory.metrics.inc("imap_connections", implicit_tls="yes" if self.tls else "no")
        self.factory.metrics.set("imap_sessions", len(self.factory.sessions))
        self._greeted = False
        if not (self.factory.implicit_tls and ISSLTransport.providedBy(self.transport)):
            self._greet()

    def _greet(self) -> None:
        # On implicit TLS the greeting waits for the handshake, so that its capability
        # list can offer the -PLUS mechanisms (they need the channel bindings).
        if self._greeted:
            return
        self._greeted = True
        self.send(b"* OK [CAPABILITY " + self.capabilities().encode() + b"] "
                  + self.factory.hostname.encode("ascii", "replace") + b" mxd IMAP ready\r\n")

    def connectionLost(self, reason: TwFailure | None = None) -> None:
        self._closed = True
        self.state = State.LOGOUT
        self.factory.sessions.discard(self)
        self.factory.metrics.set("imap_sessions", len(self.factory.sessions))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        held, self._held = self._held, None
        if held is not None:  # read behind pipelined APPENDs, never run
            for p in held.parts:
                if isinstance(p, BlobLiteral):
                    p.sink.abort()
        failed = handshake_failure(reason) if not self.tls_handshake_done else None
        if failed is not None:
            self.factory.metrics.inc("imap_tls_handshake_failures")
            log.info("imap TLS handshake from {ip} failed: {reason}", ip=self.peer_ip,
                     reason=failed)
        self.framer.reset()
        self.stop_notify()
        self.deselect()
        for d in self._drain_waiters:
            d.errback(CommandDetached())
        self._drain_waiters = []
        if self._line_waiter is not None:
            w, self._line_waiter = self._line_waiter, None
            w.errback(CommandDetached())

    def handshakeCompleted(self) -> None:
        """TLS is up (implicit TLS or after STARTTLS): compute channel bindings."""
        self.tls_handshake_done = True
        self.channel_bindings = channel_bindings_for(self.transport)
        if not self._greeted:
            self._greet()

    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.peer_ip).is_loopback
        except ValueError:
            return False

    def conn_info(self) -> ConnectionInfo:
        return ConnectionInfo(remote_ip=self.peer_ip, tls=self.tls, loopback=self.is_loopback(),
                              channel_bindings=self.channel_bindings, service="imap")

    def login_allowed(self) -> bool:
        """May LOGIN be used (else LOGINDISABLED, RFC 3501 §6.2.3)?  The SASL layer's
        policy when it has one, so that both agree."""
        policy = getattr(self.sasl, "plaintext_allowed", None)
        if policy is not None:
            return bool(policy(self.conn_info()))
        return self.tls or (self.settings.plaintext_login_on_loopback and self.is_loopback())

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.state == State.NOT_AUTHENTICATED:
            if not self.tls and self.factory.tls is not None:
                caps.append("STARTTLS")
            if not self.login_allowed():
                caps.append("LOGINDISABLED")
            caps += ["AUTH=" + m for m in self.sasl.advertised(self.conn_info())]
        else:
            caps += ["NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE", "CHILDREN",
                     "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "ESEARCH", "CONDSTORE",
                     "QRESYNC", "BINARY", f"APPENDLIMIT={self.settings.append_limit}",
                     "UTF8=ACCEPT", "SORT", "SORT=DISPLAY", "ESORT", "SEARCHRES",  # RFC 5256, 5957, 5267, 5182
                     "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "THREAD=REFS",  # RFC 5256; Dovecot
                     "MULTIAPPEND", "CATENATE", "REPLACE", "COMPRESS=DEFLATE",  # RFC 3502, 4469, 8508, 4978
                     "UIDONLY",  # RFC 9586
                     *imap4rev2.MORE_CAPABILITIES]
            if hasattr(self.store, "get_usage"):
                caps += ["QUOTA", "QUOTA=RES-STORAGE"]  # RFC 9208
            caps += ["PREVIEW", "NOTIFY", "INPROGRESS"]  # RFC 8970, RFC 5465, RFC 9585
            if self.factory.shared.metadata is not None:
                caps += ["METADATA", "LIST-METADATA"]  # RFC 5464 §1 (with -SERVER), RFC 9590
        return " ".join(caps)

    def send_flags(self, view: MailboxView, keywords: Iterable[str]) -> None:
        """FLAGS and PERMANENTFLAGS for the selected mailbox (RFC 3501 §7.2.6, §7.1)."""
        self._keywords = {k.casefold(): k for k in keywords}
        fl = " ".join(list(SYSTEM_FLAGS) + sorted(self._keywords.values()))
        self.untagged(f"FLAGS ({fl})")
        if view.readonly:
            self.untagged("OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            self.untagged(f"OK [PERMANENTFLAGS ({fl} \\*)] Flags permitted")

    def announce_keywords(self, flags: Iterable[str]) -> None:
        """Send FLAGS/PERMANENTFLAGS again when ``flags`` hold a keyword the client has
        not been told of yet (RFC 3501 §7.2.6: FLAGS updates the client's list)."""
        view = self.view
        if view is None:
            return
        new = [f for f in flags if not f.startswith("\\") and f.casefold() not in self._keywords]
        if new:
            self.send_flags(view, list(self._keywords.values()) + new)

    def enable_condstore(self) -> None:
        """A CONDSTORE enabling command (RFC 7162 §3.1): the first one with a mailbox
        selected is preceded by ``* OK [HIGHESTMODSEQ n]``, since the client could not
        have asked for it at SELECT time."""
        if "CONDSTORE" in self.enabled:
            return
        self.enabled.add("CONDSTORE")
        if self.view is not None:
            self.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % self.view.modseq)

    @property
    def utf8(self) -> bool:
        """UTF-8 mailbox names and strings: UTF8=ACCEPT enabled (RFC 6855 §3), or
        IMAP4rev2 (RFC 9051 §5.1, Appendix E: mailbox names are UTF-8)."""
        return "UTF8=ACCEPT" in self.enabled or "IMAP4REV2" in self.enabled

    @property
    def rev2(self) -> bool:
        """Has the client enabled IMAP4rev2 (RFC 9051 §6.3.1)?"""
        return "IMAP4REV2" in self.enabled

    # -- timers -----------------------------------------------------------------------
    def _reset_timer(self) -> None:
        if self.state == State.NOT_AUTHENTICATED:
            # Before login the deadline counts from the connection, whatever trickles
            # in (as Dovecot's login timeout): unauthenticated peers cannot hold a slot.
            if self._timer is None or not self._timer.active():
                self._timer = self.clock.callLater(self.settings.login_timeout, self._timed_out)
            return
        timeout = self.settings.idle_timeout
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self.clock.callLater(timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        log.info("imap autologout of {ip}", ip=self.peer_ip)
        self.bye("Autologout; idle for too long")

    def close_connection(self) -> None:
        """Close after pending output.

        The producer must go first, or a TLS transport waits for it before sending
        close_notify.  Reading must run again: a TLS transport closes only once it has
        read the peer's close_notify or end of stream (RFC 8446 §6.1), and the session
        pauses reading while a command runs, LOGOUT included.  Whatever arrives now is
        dropped (``dataReceived`` ignores a closed session).  A peer that never closes
        its side is cut off after ``close_timeout``."""
        t = self.tr
        if t is None:
            return
        if getattr(t, "producer", self) is not None:
            try:
                t.unregisterProducer()
            except Exception:  # noqa: BLE001 - transports differ in what they allow here
                log.debug("unregisterProducer failed on close")
        if self._reading_paused:
            self._reading_paused = False
            t.resumeProducing()
        t.loseConnection()
        if self._close_timer is None:
            self._close_timer = self.clock.callLater(self.settings.close_timeout, self._abort)

    def _abort(self) -> None:
        self._close_timer = None
        t = self.tr
        if t is not None:
            log.info("imap connection from {ip} did not close; aborting it", ip=self.peer_ip)
            t.abortConnection()

    def shutdown_when_idle(self) -> bool:
        """The server is stopping: unless a command is running (IDLE does not count),
        send BYE (RFC 9051 §7.1.5) and close; True when closed."""
        if self._closed:
            return True
        if self._idle_tag is None and (self._busy or self._processing):
            return False
        self.bye("Server shutting down")
        return True

    def bye(self, text: str) -> None:
        if self._closed:
            return
        self.send(b"* BYE " + text.encode() + b"\r\n")
        self._closed = True
        self.state = State.LOGOUT
        self.close_connection()

    # -- output -----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        t = self.tr
        if t is not None and not getattr(t, 'disconnecting', False):
            t.write(data)

    def untagged(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.send(b"* " + data + b"\r\n")

    async def breathe(self, done: int | None = None, goal: int | None = None) -> None:
        """Let the reactor serve other connections once this command has run for a work
        slice (DESIGN.md: no request stalls other sessions for more than a few ms);
        long FETCH and SEARCH loops call it between messages, with how many of how
        many they have done when they know (RFC 9585 INPROGRESS, at most once a second)."""
        now = self.clock.seconds()
        if now - self._slice_start < self.settings.work_slice:
            return
        if self._progress_tag is not None and now >= self._progress_at:
            self._progress_at = now + inprogress.INTERVAL
            self.untagged(inprogress.line(self._progress_tag, done, goal))
        d: Deferred[None] = Deferred()
        self.clock.callLater(0, d.callback, None)
        await d
        self._slice_start = self.clock.seconds()
        if self._closed:
            raise CommandDetached()

    def _progress_tick(self) -> None:
        """RFC 9585 for a command waiting on the store (``inprogress.TIMED``)."""
        self._progress_timer = None
        if self._progress_tag is None or self._closed:
            return
        now = self.clock.seconds()
        if now >= self._progress_at:
            self._progress_at = now + inprogress.INTERVAL
            self.untagged(inprogress.line(self._progress_tag, None, None))
        self._progress_timer = self.clock.callLater(
            max(0.0, self._progress_at - now), self._progress_tick)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is full."""
        if self._closed:
            raise CommandDetached()
        if self._write_paused:
            d: Deferred[None] = Deferred()
            self._drain_waiters.append(d)
            await d

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        self._write_paused = False
        if self.notifier is not None and self.notifier.pending():
            self.notifier.schedule()
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(None)
        if not self._closed and not self._processing:
            self._process()

    def stopProducing(self) -> None:
        self._closed = True

    # -- input ------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._reset_timer()
        if self.deflate is not None:
            self.deflate.receive(data)
            self._inflate_some()
            return
        self.framer.feed(data)
        self._process()
        if self.framer.in_command:
            self._ack_now()

    def _inflate_some(self) -> None:
        """COMPRESS (RFC 4978): decompress into the framer while it has room
        (``inflate_budget`` octets waiting), so that a small compressed input never
        becomes a large buffer; the rest waits until commands have taken what is there."""
        d = self.deflate
        if d is None or self._inflating:
            return
        self._inflating = True
        try:
            while not self._closed and d.pending and self.framer.buffered < d.budget:
                try:
                    chunk = d.inflate()
                except CompressError as e:
                    self.bye(f"COMPRESS: {e}")
                    return
                if not chunk:
                    break
                self.framer.feed(chunk)
                self._process()
                if self.framer.in_command:
                    self._ack_now()
        finally:
            self._inflating = False

    def _ack_now(self) -> None:
        """Acknowledge the received bytes at once instead of after the delayed-ACK timer.

        A client that keeps Nagle's algorithm on and writes a literal and the CRLF after it
        in two sends (Python's imaplib does) holds the CRLF until the literal is
        acknowledged; the server has nothing to say until the command line is complete, so
        its ACK would wait for the delayed-ACK timer (40 ms on Linux) on every APPEND.
        The same holds inside a literal: a literal over 16 KiB comes in several TLS
        records, and Nagle holds back the last, small one until the first is acknowledged.
        So the ACK goes at once whenever a command is still incomplete after the bytes at
        hand.  TCP_QUICKACK sends the pending ACK now (Linux; elsewhere nothing is done).
        """
        if _TCP_QUICKACK is None or self._socket is False:
            return
        if self._socket is None:
            self._socket = tcp_socket(self.transport) or False
            if self._socket is False:
                return
        try:
            self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            self._socket = False

    def _choose_sink(self, head: bytes, size: int, nonsync: bool) -> LiteralSink | None:
        _, name, sub = command_words(head)
        if self.state in (State.AUTHENTICATED, State.SELECTED) and (
                name in ("APPEND", "REPLACE") or (name == "UID" and sub == "REPLACE")):
            # RFC 3502 MULTIAPPEND, RFC 4469 CATENATE, RFC 8508 REPLACE: each message's
            # size is checked before its octets are accepted (mxd.imap.appendcmd).
            sink = appendcmd.choose_sink(self, self.framer.pending_parts, size)
            if sink is not False:
                return sink  # type: ignore[return-value]
        limit = (self.settings.max_literal if self.state != State.NOT_AUTHENTICATED
                 else self.settings.max_literal_unauthenticated)
        if size > limit:
            raise FramingError(f"[TOOBIG] Literal too large (limit {limit})")
        return None

    def _check_append_size(self, size: int) -> None:
        """RFC 7889 APPENDLIMIT and the account's quota (RFC 9208 §4.1.1), before any
        octet of the message is accepted: NO [TOOBIG] / NO [OVERQUOTA]."""
        if size > self.settings.append_limit:
            err = FramingError(f"[TOOBIG] Message larger than APPENDLIMIT "
                               f"{self.settings.append_limit}")
            err.append = True
            raise err
        if self.usage is not None:
            used, limit = self.usage
            if limit is not None and used + size > limit:
                err = FramingError("[OVERQUOTA] The message would exceed the quota")
                err.append = True
                # Another session may have freed space since: look again for next time.
                self.clock.callLater(0, lambda: Deferred.fromCoroutine(self.refresh_usage()))
                raise err

    async def refresh_usage(self) -> None:
        """Read the account's (used, quota) again, for the check of APPEND sizes."""
        get_usage = getattr(self.store, "get_usage", None)
        if get_usage is None or self.account is None:
            return
        try:
            self.usage = await get_usage(self.account.id)
        except StoreError:
            self.usage = None

    def note_appended(self, size: int) -> None:
        if self.usage is not None:
            self.usage = (self.usage[0] + size, self.usage[1])

    def _set_reading(self, on: bool) -> None:
        if self.transport is None or self._closed:
            return
        if on and self._reading_paused:
            self._reading_paused = False
            self.tr.resumeProducing()
        elif not on and not self._reading_paused:
            self._reading_paused = True
            self.tr.pauseProducing()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            # A client that does not read its responses gets no more commands run: the
            # output stays bounded by the transport's buffer (its pauseProducing).
            while not self._closed and not self._write_paused and (
                    not self._busy or self._line_waiter is not None or self._may_pipeline()):
                if not self._busy and self._held is not None:
                    held, self._held = self._held, None
                    self._start(held)
                    continue
                if self._line_waiter is not None or self._idle_tag is not None:
                    try:
                        line = self.framer.read_line()
                    except FramingError as e:
                        self.bye(str(e))
                        return
                    if line is None:
                        break
                    if self._idle_tag is not None:
                        self._idle_line(line)
                    else:
                        w, self._line_waiter = self._line_waiter, None
                        assert w is not None
                        w.callback(line)
                    continue
                try:
                    ev = self.framer.next_event()
                except FramingError as e:
                    self._framing_error(e)
                    continue
                if ev is None:
                    break
                if isinstance(ev, NeedContinuation):
                    self.send(b"+ Ready for literal data\r\n")
                    continue
                if self._busy:
                    self._pipeline(ev)
                else:
                    self._start(ev)
        finally:
            self._processing = False
        if self.deflate is not None and self.deflate.pending:
            self._inflate_some()
        self._set_reading(not self._write_paused
                          and (not self._busy or self._line_waiter is not None
                               or self._may_pipeline()))

    def _may_pipeline(self) -> bool:
        """May the next command be read while commands run?  Only behind APPENDs."""
        return (self._held is None and self._running > 0 and self._appends == self._running
                and self._running < self.settings.max_pipelined_appends
                and self._line_waiter is None and self._idle_tag is None)

    def _pipeline(self, raw: RawCommand) -> None:
        """A command read while APPENDs run: another APPEND starts now, anything else
        (including one that does not parse) waits until they are done."""
        if command_words(raw.first_line)[1] == "APPEND":
            try:
                cmd = parse_command(raw)
            except ParseError:
                cmd = None
            spec = COMMANDS.get(cmd.name) if cmd is not None else None
            if cmd is not None and spec is not None and self.state in spec.states:
                self._launch(cmd, spec)
                return
        self._held = raw

    def _framing_error(self, e: FramingError) -> None:
        msg = str(e)
        if e.fatal or e.tag is None:
            self.bye(msg)
            return
        code = None
        if msg.startswith("[") and "] " in msg:
            code, msg = msg[1:msg.index("] ")], msg[msg.index("] ") + 2:]
        # RFC 7889 §4: an APPEND over the limit is NO [TOOBIG] (over the quota NO
        # [OVERQUOTA]); other refused literals BAD.
        self.send_tagged(e.tag, no(msg, code) if e.append else bad(msg, code))

    def _start(self, raw: RawCommand) -> None:
        try:
            cmd = parse_command(raw)
        except ParseError as e:
            for p in raw.parts:
                if not isinstance(p, (bytes,)) and hasattr(p, "sink"):
                    p.sink.abort()
            self._bad(e.tag, str(e))
            return
        spec = COMMANDS.get(cmd.name)
        if spec is None:
            self._bad(cmd.tag, f"Unknown command {cmd.name}")
            return
        if self.state not in spec.states:
            for p in raw.parts:  # REPLACE outside the selected state: drop its body
                if isinstance(p, BlobLiteral):
                    p.sink.abort()
            self._bad(cmd.tag, f"{cmd.name} not allowed in the {self.state} state")
            return
        # Reading is paused (or not) by ``_process`` once this returns, as the command
        # left things: a command that finishes at once (FETCH of small bodies, NOOP) or
        # that may be pipelined (APPEND) then costs no pause and resume of the transport.
        self._launch(cmd, spec)

    def _launch(self, cmd: Command, spec: CommandSpec) -> None:
        self._slice_start = self.clock.seconds()
        if self._running == 0 and self.state != State.NOT_AUTHENTICATED:
            self._progress_tag = cmd.tag  # RFC 9585: a long command reports progress
            self._progress_at = self._slice_start + inprogress.INTERVAL
            if cmd.name in inprogress.TIMED:
                self._progress_timer = self.clock.callLater(inprogress.INTERVAL,
                                                            self._progress_tick)
        prev = self._last_done
        done: Deferred[None] = Deferred()
        self._last_done = done
        self._busy = True
        self._running += 1
        if cmd.name == "APPEND":
            self._appends += 1
        d = Deferred.fromCoroutine(self._run(cmd, spec, prev, done))
        self._current = d

    def _bad(self, tag: str | None, text: str) -> None:
        self._bad_count += 1
        self.send(((tag or "*") + " BAD ").encode() + text.encode("utf-8", "replace") + b"\r\n")
        if self._bad_count >= self.settings.max_bad_commands:
            self.bye("Too many invalid commands")

    async def _run(self, cmd: Command, spec: CommandSpec, prev: Deferred[None] | None = None,
                   done: Deferred[None] | None = None) -> None:
        try:
            try:
                refused = uidonly.refusal(cmd) if uidonly.active(self) else None  # RFC 9586 §3
                if self.view is not None and refused is None:
                    cmd = searchres.substitute(cmd, self.search_result, self.view.uids)  # RFC 5182 $
                if cmd.name in _CATCH_UP and refused is None:
                    await self.catch_up()
                reply = refused if refused is not None else await spec.handler(self, cmd)
            finally:
                if prev is not None and not prev.called:
                    await prev  # replies in command order (RFC 3501 §5.5)
            if cmd.name in _USAGE_CHANGING and reply.status == "OK":
                await self.refresh_usage()
            self.factory.metrics.inc("imap_commands", command=cmd.name, status=reply.status)
            if reply.status == "BAD":
                self._bad_count += 1
            else:
                self._bad_count = 0
            if self.state == State.SELECTED and self.view is not None and not self._closed:
                expunge_ok = spec.expunge_ok or cmd.name.startswith("UID ")
                await notifier.sync_selected(self, expunge_ok)
            if self.notifier is not None:
                await self.notifier.flush()  # RFC 5465: queued events before the reply
            self.send_tagged(cmd.tag, reply)
        except CommandDetached:
            pass
        except (BadSequence, ParseError) as e:
            # Arguments that parse but do not make sense (a malformed modified UTF-7
            # mailbox name, a sequence number that does not exist).
            if not self._closed:
                self._bad_count += 1
                self.send_tagged(cmd.tag, bad(str(e)))
        except StoreError as e:
            if not self._closed:
                self.send_tagged(cmd.tag, store_error_reply(e))
        except Exception:  # noqa: BLE001 - one broken command must not kill the server
            log.failure("imap command {command} failed", command=cmd.name)
            if not self._closed:
                self.send_tagged(cmd.tag, no("Internal server error", "SERVERBUG"))
        finally:
            self._running -= 1
            if cmd.name == "APPEND":
                self._appends -= 1
            self._busy = self._running > 0
            self._progress_tag = None
            if self._progress_timer is not None and self._progress_timer.active():
                self._progress_timer.cancel()
            self._progress_timer = None
            if not self._busy:
                self._current = None
                if self.notifier is not None and self.notifier.pending():
                    self.notifier.schedule()
            if done is not None:
                if self._last_done is done:
                    self._last_done = None
                done.callback(None)
            if self._bad_count >= self.settings.max_bad_commands:
                self.bye("Too many invalid commands")
            if not self._closed:
                self._reset_timer()
                if not self._processing:
                    self._process()

    def send_tagged(self, tag: str, reply: Reply) -> None:
        code = f"[{reply.code}] " if reply.code else ""
        self.send(f"{tag} {reply.status} {code}{reply.text}\r\n".encode("utf-8", "replace"))

    async def read_line(self) -> bytes:
        """The next raw line from the client (AUTHENTICATE responses)."""
        d: Deferred[bytes] = Deferred()
        self._line_waiter = d
        if not self._processing:
            self._process()
        return await d

    # -- STARTTLS -----------------------------------------------------------------------
    def start_tls(self) -> None:
        # RFC 3501 §6.2.1 / RFC 7817: anything the client pipelined after STARTTLS was sent
        # in the clear and must not run inside TLS.
        self.framer.discard_buffer()
        assert self.factory.tls is not None
        self.tr.unregisterProducer()
        self.tr.startTLS(self.factory.tls)
        self.tr.registerProducer(self, True)
        self.tls = True

    # -- login ----------------------------------------------------------------------------
    async def finish_login(self, tag: str, outcome: Outcome) -> Reply:
        self.factory.metrics.inc("imap_logins", result="ok" if isinstance(outcome, Success) else "failed")
        if isinstance(outcome, SASLFailure):
            code = "UNAVAILABLE" if outcome.temporary else "AUTHENTICATIONFAILED"
            return no(outcome.reason or "Authentication failed", code)
        if not isinstance(outcome, Success):
            return no("Authentication failed", "AUTHENTICATIONFAILED")
        if outcome.authzid and outcome.authzid != outcome.authcid:
            return no("Proxy authorization is not supported", "AUTHORIZATIONFAILED")
        account = await self.accounts.get_account(outcome.authcid)
        if account is None:
            return no("Authentication failed", "AUTHENTICATIONFAILED")
        self.account = account
        self.state = State.AUTHENTICATED
        await self.refresh_usage()
        self.framer.reset()
        log.info("imap login {account} from {ip} mechanism={mech}", account=account.name,
                 ip=self.peer_ip, mech=outcome.mechanism or "LOGIN")
        return ok("Logged in", "CAPABILITY " + self.capabilities())

    async def authenticate(self, mechanism: str, initial: bytes | None) -> Reply:
        conn = self.conn_info()
        if mechanism not in self.sasl.advertised(conn):
            return no(f"Mechanism {mechanism} is not available", "CANNOT")
        try:
            exchange = self.sasl.start(mechanism, conn)
        except UnknownMechanism:
            return no(f"Mechanism {mechanism} is not available", "CANNOT")
        outcome = await exchange.step(initial)
        while isinstance(outcome, Continue):
            # RFC 9051 §6.2.2: the challenge is one line of base64.
            self.send(b"+ " + base64.b64encode(outcome.challenge) + b"\r\n")
            line = await self.read_line()
            if line.strip() == b"*":
                return bad("AUTHENTICATE cancelled")
            data = _b64(line)
            if data is None:
                return bad("Invalid base64 in AUTHENTICATE response")
            outcome = await exchange.step(data)
        if isinstance(outcome, Success) and outcome.additional:
            # RFC 4422 §5 additional data: a last challenge the client answers empty.
            self.send(b"+ " + base64.b64encode(outcome.additional) + b"\r\n")
            line = await self.read_line()
            if line.strip() == b"*":
                return bad("AUTHENTICATE cancelled")
        return await self.finish_login("", outcome)

    # -- IDLE -----------------------------------------------------------------------------
    def start_idle(self, tag: str) -> None:
        self._idle_tag = tag
        self.send(b"+ idling\r\n")

    def _idle_line(self, line: bytes) -> None:
        if line.strip().upper() != b"DONE":
            # RFC 2177: only DONE ends IDLE.
            self.untagged(b"BAD Expected DONE")
            return
        tag, self._idle_tag = self._idle_tag, None
        assert tag is not None
        self._busy = True

        async def finish() -> None:
            try:
                if self.view is not None:
                    await self.sync(True)
                self.send_tagged(tag, ok("IDLE terminated"))
            except CommandDetached:
                pass
            finally:
                self._busy = False
                if not self._closed and not self._processing:
                    self._process()

        Deferred.fromCoroutine(finish())

    # -- the selected mailbox -----------------------------------------------------------
    def select(self, view: MailboxView) -> None:
        """Make ``view`` (whose state was acquired from ``factory.states``) selected."""
        self.deselect()
        self.view = view
        self.state = State.SELECTED
        view.attach(self._on_change)

    def deselect(self) -> None:
        view, self.view = self.view, None
        self.search_result = ()  # RFC 5182 §2.1: no saved result in a newly selected mailbox
        self.contexts.clear()  # RFC 5267 §4.2: updates end with the mailbox's selection
        if view is not None:
            view.detach()
            self.factory.states.release(view.state)
        if self.state == State.SELECTED:
            self.state = State.AUTHENTICATED

    def may_push(self) -> bool:
        """May unsolicited responses go out now (no command running, output flowing)?"""
        return not self._closed and not self._busy and not self._write_paused

    def stop_notify(self) -> None:
        """NOTIFY NONE (RFC 5465 §3.1), also after an overflow (§5.8) and at the end."""
        n, self.notifier = self.notifier, None
        if n is not None:
            n.close()

    def _follow_rename(self, view: MailboxView) -> None:
        """The selected mailbox was renamed (by this or another session, in this or
        another process): it stays selected under its new name (the store's RENAME keeps
        its id, UIDVALIDITY and messages), so that commands naming it (DELETE, NOTIFY's
        selected mailbox, ESEARCH's mailbox) know it by that name."""
        def got(info: MailboxInfo) -> None:
            if self.view is view and info.id == view.info.id:
                view.info = attrs.evolve(view.info, name=info.name)

        self.store.get_mailbox_by_id(view.info.id).addCallbacks(
            got, lambda f: log.debug("renamed mailbox not found: {e}", e=f.getErrorMessage()))

    def _on_change(self, change: MailboxChange) -> None:
        """The shared mailbox state passes on a committed change (it has already marked
        the view dirty, deleted, or given it the expunged UIDs)."""
        if self.view is None:
            return
        if change.kind == "renamed":
            self._follow_rename(self.view)
        pushing = self._idle_tag is not None or notifier.wants_selected(self)
        if pushing and not self._idle_pushing:
            # RFC 2177: report changes at once while idling; RFC 5465 §5.2, §5.3: at once
            # between commands with NOTIFY SET (SELECTED ...).
            self._idle_pushing = True

            async def push() -> None:
                try:
                    if self._idle_tag is not None:
                        await notifier.sync_selected(self, True)
                    elif self.may_push():
                        await notifier.sync_selected(self, notifier.expunge_now(self))
                except CommandDetached:
                    pass
                finally:
                    self._idle_pushing = False

            def start_push() -> None:
                Deferred.fromCoroutine(push()).addErrback(
                    lambda f: log.failure("imap IDLE update failed", f))

            self.clock.callLater(0, start_push)

    async def sync(self, expunge_ok: bool) -> None:
        """Send the untagged responses that changes by other sessions call for."""
        view = self.view
        if view is None:
            return
        if view.deleted:
            # The selected mailbox is gone (another session deleted it): nothing the
            # client believes about sequence numbers holds any more.
            self.bye("Selected mailbox was deleted")
            raise CommandDetached()
        touched: set[int] = self.context_touched
        self.context_touched = set()
        while view.dirty:
            view.dirty = False
            await view.state.refresh(self.store)
            if self.view is not view:
                return
            old_max = view.max_uid
            upd = view.catch_up()
            touched.update(m.uid for _, m in upd.changed)
            touched.update(u for u in view.uids[bisect.bisect_right(view.uids, old_max):])
            if upd.exists is not None:
                self.announce_keywords(view.keywords())
            for _, m in upd.changed:
                self.announce_keywords(m.flags)
            for seq, m in upd.changed:
                self.untagged(self.fetch_flags_line(seq, m, with_uid=False))
            if upd.exists is not None:
                self.untagged(b"%d EXISTS" % upd.exists)
                if not view.readonly:
                    view.claim_recent(self.factory.recent)
                else:
                    view.recent.add_above(max(old_max, self.factory.recent.claimed(
                        view.info.id, view.info.uidnext - 1)))
                if not self.rev2:  # RFC 9051 Appendix E: no RECENT response in IMAP4rev2
                    self.untagged(b"%d RECENT" % len(view.recent))
        if touched and self.contexts:
            await context.touched(self, touched)
        if expunge_ok and view.pending_expunge:
            expunged = view.take_pending_expunges()
            self.report_expunged(expunged)

    async def catch_up(self) -> None:
        """Have the store look for other processes' commits now (a no-op without them)."""
        catch_up = getattr(self.store, "catch_up", None)
        if catch_up is not None:
            try:
                await catch_up()
            except StoreError:
                pass  # the command itself will meet the store's trouble

    def report_expunged(self, expunged: list[tuple[int, int]]) -> None:
        if not expunged:
            return
        context.removed(self, expunged)  # RFC 5267 §4.3 REMOVEFROM, while seqs hold
        if "QRESYNC" in self.enabled or uidonly.active(self):  # RFC 9586 §3.2
            from mxd.imap import response

            # RFC 7162 §3.2.10: VANISHED instead of EXPUNGE once QRESYNC is enabled.
            self.untagged(b"VANISHED " + response.seqset(uid for _, uid in expunged))
            return
        for seq, _ in expunged:
            self.untagged(b"%d EXPUNGE" % seq)

    def flags_of(self, m: MessageInfo) -> frozenset[str]:
        """A message's flags as this session shows them (with \\Recent, RFC 3501 §2.3.2)."""
        if self.view is not None and m.uid in self.view.recent and not self.rev2:
            return m.flags | {"\\Recent"}  # IMAP4rev2 has no \\Recent (RFC 9051 Appendix E)
        return m.flags

    def fetch_flags_line(self, seq: int, m: Any, with_uid: bool) -> bytes:
        from mxd.imap import response

        items = [b"FLAGS " + response.flags(self.flags_of(m))]
        if with_uid or "QRESYNC" in self.enabled:
            items.insert(0, b"UID %d" % m.uid)
        if "CONDSTORE" in self.enabled:
            items.append(b"MODSEQ (%d)" % m.modseq)
        return uidonly.fetch_head(self, seq, m.uid)[2:] + b" ".join(items) + b")"


class RecentClaims:
    """Which messages have been seen by a read-write session (RFC 3501 §2.3.2 \\Recent).

    Kept in this process: per mailbox, the highest UID some session has claimed.  A
    mailbox first seen after a restart starts with nothing recent, except mailboxes this
    process created (all their messages are new).  IMAP4rev2 drops \\Recent; this keeps
    rev1 clients that count it content.
    """

    def __init__(self) -> None:
        self._claimed: dict[int, int] = {}

    def created(self, mailbox_id: int) -> None:
        self._claimed[mailbox_id] = 0

    def claimed(self, mailbox_id: int, default: int) -> int:
        return self._claimed.setdefault(mailbox_id, default)

    def claim(self, mailbox_id: int, max_uid: int, default: int) -> int:
        """Claim UIDs up to ``max_uid``; returns the previous claim."""
        prev = self._claimed.setdefault(mailbox_id, default)
        if max_uid > prev:
            self._claimed[mailbox_id] = max_uid
        return prev


def _b64(line: bytes) -> bytes | None:
    line = line.strip()
    if line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return None


_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under a transport (through a TLSMemoryBIOProtocol wrapper), if any."""
    for _ in range(4):
        if transport is None:
            return None
        sock = getattr(transport, "socket", None)
        if isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM \
                and sock.family in (socket.AF_INET, socket.AF_INET6):
            return sock
        transport = getattr(transport, "transport", None)
    return None


def channel_bindings_for(transport: Any) -> ChannelBindings | None:
    """Channel bindings of a TLS transport, from mxd.sasl.channelbinding when present."""
    import importlib

    try:
        mod = importlib.import_module("mxd.sasl.channelbinding")
    except ImportError:
        return None
    try:
        result: ChannelBindings | None = mod.channel_bindings_from_transport(transport)
        return result
    except Exception:  # noqa: BLE001 - no bindings is safe: -PLUS is then refused
        log.failure("computing channel bindings failed")
        return None


class IMAPShared:
    """State shared by all IMAP listeners of one process (pass the same object to the
    143 and 993 factories): the message cache, \\Recent claims and the open sessions
    (for the per-IP connection limit)."""

    def __init__(self, cache: MessageCache | None = None,
                 metadata: IMetadataStore | None = None) -> None:
        self.cache = cache if cache is not None else MessageCache()
        self.metadata = metadata  # RFC 5464 annotations, when the store keeps them
        self.notify = notifier.NotifyHub()  # RFC 5465 NOTIFY sessions and what they watch
        self.recent = RecentClaims()
        self.states = MailboxStates()
        self.sessions: set[IMAPSession] = set()


class IMAPFactory(Factory):
    """Builds IMAP sessions; holds the collaborators they share."""

    def __init__(self, *, implicit_tls: bool, settings: IMAPServerSettings, store: IMailStore,
                 accounts: IAccountStore, sasl: ISASLServer,
                 tls: IOpenSSLServerConnectionCreator | None, clock: IReactorTime,
                 hostname: str, metrics: Any = None, shared: IMAPShared | None = None) -> None:
        self.implicit_tls = implicit_tls
        self.settings = settings
        self.store = store
        self.accounts = accounts
        self.sasl = sasl
        self.tls = tls
        self.clock: Any = clock
        self.hostname = hostname
        self.metrics: Any = metrics if metrics is not None else NoopMetrics()
        self.shared = shared if shared is not None else IMAPShared()
        self.cache = self.shared.cache
        self.recent = self.shared.recent
        self.states = self.shared.states
        if self.states.clock is None:
            self.states.clock = clock  # states linger after their last session
        self.sessions = self.shared.sessions

    def buildProtocol(self, addr: Any) -> IMAPSession:  # type: ignore[override]
        return IMAPSession(self)


def imap_factory(*, implicit_tls: bool, settings: IMAPServerSettings, store: IMailStore,
                 accounts: IAccountStore, sasl: ISASLServer,
                 tls: IOpenSSLServerConnectionCreator | None, clock: IReactorTime,
                 hostname: str, metrics: Any = None,
                 shared: IMAPShared | None = None) -> IProtocolFactory:
    """The factory to listen with: port 993 (``implicit_tls``) or 143 (STARTTLS).

    ``tls`` is required for implicit TLS; on 143 without it STARTTLS is not offered.
    Give every IMAP listener of a process the same ``shared``.
    """
    factory = IMAPFactory(implicit_tls=implicit_tls, settings=settings, store=store,
                          accounts=accounts, sasl=sasl, tls=tls, clock=clock,
                          hostname=hostname, metrics=metrics, shared=shared)
    if implicit_tls:
        if tls is None:
            raise ValueError("implicit TLS needs a TLS context")
        fac: Any = factory
        wrapped: Any = TLSMemoryBIOFactory(tls, False, fac)
        return wrapped
    result: Any = factory
    return result
