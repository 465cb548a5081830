"""IMAP command handlers (RFC 3501 §6, RFC 9051 §6 and extensions) and the command table.

Each handler takes the session and the parsed command and returns the tagged ``Reply``;
untagged data is written through the session as it is produced.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from twisted.logger import Logger

from mxd.imap import appendcmd, compress, imap4rev2, response, uidonly
from mxd.imap.dispatch import (
    ANY,
    AUTH,
    NOT_AUTH,
    SELECTED,
    CommandDetached,
    CommandSpec,
    Handler,
    Reply,
    State,
    bad,
    no,
    ok,
    store_error_reply,
)
from mxd.imap.errors import ParseError
from mxd.imap.fetch import do_fetch, resolve
from mxd.imap.framer import BlobLiteral, Literal
from mxd.imap.imap4rev2 import ENABLABLE
from mxd.imap.listmatch import compile_pattern, join_reference
from mxd.imap.metadata import cmd_getmetadata, cmd_setmetadata, list_metadata
from mxd.imap.multisearch import do_esearch
from mxd.imap.notifier import cmd_notify, publish
from mxd.imap.notify import Event
from mxd.imap.qresync import vanished
from mxd.imap.searchcmd import do_cancelupdate, do_search
from mxd.imap.sortcmd import do_sort
from mxd.imap.threadcmd import do_thread
from mxd.imap.utf7 import decode as utf7_decode
from mxd.imap.values import (
    AppendArgs,
    AuthenticateArgs,
    Command,
    CopyArgs,
    CreateArgs,
    EnableArgs,
    IdArgs,
    ListArgs,
    LoginArgs,
    MailboxArgs,
    RenameArgs,
    SelectArgs,
    SeqSetArgs,
    StatusArgs,
    StoreArgs,
)
from mxd.imap.view import MailboxView
from mxd.store.interfaces import (
    HIERARCHY_SEPARATOR,
    InvalidMailboxName,
    MailboxExists,
    MailboxInfo,
    NoSuchMailbox,
    QuotaExceeded,
    SpecialUse,
    StoreError,
)
from mxd.store.names import MAX_FLAG, MAX_MAILBOX_NAME

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

log = Logger()

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_FLAGS_CI = {f.upper(): f for f in SYSTEM_FLAGS}


def mailbox_name(s: IMAPSession, wire: str) -> str:
    """Client wire name → store name (mUTF-7 decoded, INBOX case-folded).

    A name that is not valid modified UTF-7 (RFC 3501 §5.1.3) parses as an astring, so
    it is not a syntax error: the command fails with NO (InvalidMailboxName), as in
    Dovecot."""
    try:
        name = wire if s.utf8 else utf7_decode(wire)
    except ParseError as e:
        raise InvalidMailboxName(f"{wire!r} is not valid modified UTF-7 ({e})") from None
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX" + HIERARCHY_SEPARATOR):
        name = "INBOX" + name[5:]
    return name


def new_name_problem(name: str) -> str | None:
    """Why a name cannot be given to a new mailbox (CREATE, RENAME), or None.

    RFC 3501 §6.3.8: "*" and "%" are wildcards in LIST; a mailbox named with them could
    not be listed by itself.  Empty levels and control characters are refused too."""
    if HIERARCHY_SEPARATOR * 2 in name or name.startswith(HIERARCHY_SEPARATOR):
        return "empty hierarchy level"
    if any(c in name for c in "*%") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "wildcard or control character in the name"
    if len(name) > MAX_MAILBOX_NAME:
        return "name too long"
    return None


def flags_problem(flags: tuple[str, ...]) -> Reply | None:
    """A clean refusal of flags the store cannot keep (before any store call)."""
    for f in flags:
        if len(f) > MAX_FLAG:
            return no(f"Keyword too long (at most {MAX_FLAG} characters)", "LIMIT")
    return None


def normalise_flags(flags: tuple[str, ...]) -> frozenset[str] | None:
    """System flags in their canonical case; None if an unknown ``\\`` flag is present."""
    out = set()
    for f in flags:
        if f.startswith("\\"):
            if f.upper() == "\\RECENT":
                continue
            canon = _SYSTEM_FLAGS_CI.get(f.upper())
            if canon is None:
                return None
            out.add(canon)
        else:
            out.add(f)
    return frozenset(out)


# -- any state --------------------------------------------------------------------------------

async def cmd_capability(s: IMAPSession, cmd: Command) -> Reply:
    s.untagged("CAPABILITY " + s.capabilities())
    return ok("CAPABILITY completed")


async def cmd_noop(s: IMAPSession, cmd: Command) -> Reply:
    return ok("NOOP completed")


async def cmd_logout(s: IMAPSession, cmd: Command) -> Reply:
    s.untagged(b"BYE Logging out")
    s.send_tagged(cmd.tag, ok("LOGOUT completed"))
    s.state = State.LOGOUT
    s.deselect()
    s._closed = True
    s.close_connection()
    raise CommandDetached()


async def cmd_id(s: IMAPSession, cmd: Command) -> Reply:
    args: IdArgs = cmd.args
    if args.params:
        s.client_id = {k[:64]: (v[:256] if v else v) for k, v in args.params[:30]}
        log.info("imap client id {ip} {client}", ip=s.peer_ip, client=s.client_id.get("name"))
    s.untagged(b'ID ("name" "mxd" "vendor" "mxd")')
    return ok("ID completed")


# -- not authenticated ------------------------------------------------------------------------

async def cmd_starttls(s: IMAPSession, cmd: Command) -> Reply:
    if s.tls or s.factory.tls is None:
        return bad("TLS is already active" if s.tls else "STARTTLS is not available")
    s.send_tagged(cmd.tag, ok("Begin TLS negotiation now"))
    s.start_tls()
    raise CommandDetached()


async def cmd_login(s: IMAPSession, cmd: Command) -> Reply:
    args: LoginArgs = cmd.args
    if not s.login_allowed():
        return no("LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
    outcome = await s.sasl.check_password(args.username, args.password, s.conn_info())
    return await s.finish_login(cmd.tag, outcome)


async def cmd_authenticate(s: IMAPSession, cmd: Command) -> Reply:
    args: AuthenticateArgs = cmd.args
    return await s.authenticate(args.mechanism, args.initial)


# -- authenticated ----------------------------------------------------------------------------

async def cmd_enable(s: IMAPSession, cmd: Command) -> Reply:
    args: EnableArgs = cmd.args
    done = []
    for cap in args.capabilities:
        if cap in ENABLABLE and cap not in s.enabled:
            if cap in ("CONDSTORE", "QRESYNC"):
                s.enable_condstore()  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE
            s.enabled.add(cap)
            done.append(ENABLABLE[cap])  # IMAP4rev2: RFC 9051 §6.3.1
    s.untagged("ENABLED" + "".join(" " + c for c in done))
    return ok("ENABLE completed")


async def cmd_namespace(s: IMAPSession, cmd: Command) -> Reply:
    s.untagged(b'NAMESPACE (("" "/")) NIL NIL')
    return ok("NAMESPACE completed")


async def _get_mailbox(s: IMAPSession, name: str, counts: bool = False) -> MailboxInfo | None:
    """The mailbox, or None; ``counts``: with its message, unseen and size totals (STATUS
    needs them; everything else only names or identifies the mailbox)."""
    assert s.account is not None
    try:
        return await s.store.get_mailbox(s.account.id, name, counts=counts)
    except NoSuchMailbox:
        return None


async def cmd_select(s: IMAPSession, cmd: Command) -> Reply:
    args: SelectArgs = cmd.args
    readonly = cmd.name == "EXAMINE"
    if s.view is not None:
        # RFC 9051 §7.1 and RFC 7162 §3.2.11: OK [CLOSED] parts the responses about the
        # mailbox closed implicitly from those about the one selected now.  Required in
        # IMAP4rev2 and with QRESYNC; sent always, as Dovecot does (a rev1 client
        # ignores a response code it does not know, RFC 3501 §7.1).
        s.untagged(b"OK [CLOSED] Previous mailbox closed")
    s.deselect()
    if args.condstore:
        s.enabled.add("CONDSTORE")  # RFC 7162 §3.1.8
    if args.qresync is not None and "QRESYNC" not in s.enabled:
        return bad("QRESYNC must be enabled first")
    name = mailbox_name(s, args.mailbox)
    info = await _get_mailbox(s, name)
    if info is None:
        return no(f"Mailbox {args.mailbox} does not exist", "NONEXISTENT")
    state = await s.factory.states.acquire(s.store, info)
    view = MailboxView(info, state, readonly)
    # Selected (and told of changes) from here on, so nothing committed while the rest
    # of the answer is prepared is missed; a failure below leaves no mailbox selected.
    s.select(view)
    try:
        return await _select(s, cmd, args, info, view, readonly)
    except BaseException:
        if s.view is view:
            s.deselect()
        raise


async def _select(s: IMAPSession, cmd: Command, args: SelectArgs, info: MailboxInfo,
                  view: MailboxView, readonly: bool) -> Reply:
    s.send_flags(view, view.keywords())
    if not readonly:
        view.claim_recent(s.factory.recent)
    else:
        # EXAMINE claims nothing but shows what no read-write session has seen yet
        # (RFC 3501 §6.3.2, §2.3.2), as STATUS RECENT counts it.
        view.recent.add_above(s.factory.recent.claimed(info.id, info.uidnext - 1))
    s.untagged(b"%d EXISTS" % view.exists)
    if s.rev2:
        # RFC 9051 §6.3.2: LIST of the mailbox, with accurate attributes, is a required
        # response; RECENT and OK [UNSEEN] are gone (Appendix E).
        s.untagged(await imap4rev2.select_list(s, info))
    else:
        s.untagged(b"%d RECENT" % len(view.recent))
        unseen = view.first_unseen()
        # RFC 9586 (abstract, §3): with UIDONLY no message numbers in responses.
        if unseen is not None and not uidonly.active(s):
            s.untagged(b"OK [UNSEEN %d] First unseen" % unseen)
    s.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % info.uidvalidity)
    s.untagged(b"OK [UIDNEXT %d] Predicted next UID" % max(info.uidnext, view.max_uid + 1))
    s.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % view.modseq)
    if args.qresync is not None:
        uidvalidity, modseq, known = args.qresync
        if uidvalidity == info.uidvalidity:
            # RFC 7162 §3.2.5.1: VANISHED (EARLIER) for known UIDs that are gone, then
            # FETCH for messages changed since the client's modseq.
            gone = await vanished(s.store, view, modseq, known, info.uidnext)
            if gone:
                s.untagged(b"VANISHED (EARLIER) " + response.seqset(gone))
            for uid in view.state.changed_since(modseq):
                m = view.msgs.get(uid)
                seq = view.seq_of(uid)
                if m is not None and seq is not None and m.modseq > modseq:
                    s.send(uidonly.fetch_head(s, seq, uid) + b"UID %d FLAGS %s MODSEQ (%d))\r\n" % (
                        uid, response.flags(m.flags), m.modseq))
    code = "READ-ONLY" if readonly else "READ-WRITE"
    return ok(f"{cmd.name} completed", code)


_SPECIAL_USE_NAMES = {u.value.upper(): u for u in SpecialUse}


async def cmd_create(s: IMAPSession, cmd: Command) -> Reply:
    args: CreateArgs = cmd.args
    assert s.account is not None
    name = mailbox_name(s, args.mailbox).rstrip(HIERARCHY_SEPARATOR)
    if not name or name.upper() == "INBOX":
        return no("Mailbox already exists", "ALREADYEXISTS")
    problem = new_name_problem(name)
    if problem is not None:
        return no(f"Invalid mailbox name: {problem}", "CANNOT")
    use = None
    if args.special_use:
        if len(args.special_use) > 1:
            return no("Only one special use per mailbox", "USEATTR")
        use = _SPECIAL_USE_NAMES.get(args.special_use[0].upper())
        if use is None:
            return no("Unknown special-use attribute", "USEATTR")
    # RFC 3501 §6.3.3: create missing superiors of a hierarchical name.
    parts = name.split(HIERARCHY_SEPARATOR)
    for i in range(1, len(parts)):
        parent = HIERARCHY_SEPARATOR.join(parts[:i])
        if await _get_mailbox(s, parent) is None:
            try:
                await s.store.create_mailbox(s.account.id, parent)
            except MailboxExists:
                pass
    try:
        box = await s.store.create_mailbox(s.account.id, name, use)
    except MailboxExists:
        return no("Mailbox already exists", "ALREADYEXISTS")
    s.factory.recent.created(box.id)
    publish(s, Event.MAILBOX_NAME, name)  # RFC 5465 §5.4
    return ok("CREATE completed")


async def cmd_delete(s: IMAPSession, cmd: Command) -> Reply:
    args: MailboxArgs = cmd.args
    assert s.account is not None
    name = mailbox_name(s, args.mailbox)
    if name == "INBOX":
        return no("INBOX cannot be deleted", "CANNOT")
    if s.view is not None and s.view.info.name == name:
        s.deselect()
    try:
        await s.store.delete_mailbox(s.account.id, name)
    except NoSuchMailbox:
        return no("Mailbox does not exist", "NONEXISTENT")
    publish(s, Event.MAILBOX_NAME, name, exists=False)
    return ok("DELETE completed")


async def cmd_rename(s: IMAPSession, cmd: Command) -> Reply:
    args: RenameArgs = cmd.args
    assert s.account is not None
    old = mailbox_name(s, args.old)
    new = mailbox_name(s, args.new).rstrip(HIERARCHY_SEPARATOR)
    if old == "INBOX":
        return no("Renaming INBOX is not supported", "CANNOT")
    if not new or new == "INBOX":
        return no("Mailbox already exists", "ALREADYEXISTS")
    problem = new_name_problem(new)
    if problem is not None:
        return no(f"Invalid mailbox name: {problem}", "CANNOT")
    try:
        await s.store.rename_mailbox(s.account.id, old, new)
    except NoSuchMailbox:
        return no("Mailbox does not exist", "NONEXISTENT")
    except MailboxExists:
        return no("Mailbox already exists", "ALREADYEXISTS")
    publish(s, Event.MAILBOX_NAME, new, old=old)
    return ok("RENAME completed")


async def cmd_subscribe(s: IMAPSession, cmd: Command) -> Reply:
    args: MailboxArgs = cmd.args
    assert s.account is not None
    name = mailbox_name(s, args.mailbox)
    try:
        await s.store.set_subscribed(s.account.id, name, cmd.name == "SUBSCRIBE")
    except NoSuchMailbox:
        return no("Mailbox does not exist", "NONEXISTENT")
    publish(s, Event.SUBSCRIPTION_CHANGE, name, subscribed=cmd.name == "SUBSCRIBE")  # §5.5
    return ok(f"{cmd.name} completed")


async def cmd_list(s: IMAPSession, cmd: Command) -> Reply:
    args: ListArgs = cmd.args
    assert s.account is not None
    if not args.lsub and args.patterns == ("",):
        # RFC 3501 §6.3.8: the hierarchy delimiter and root.
        s.untagged('LIST (\\Noselect) "/" ""')
        return ok("LIST completed")
    boxes = await s.store.list_mailboxes(s.account.id)
    by_name = {b.name: b for b in boxes}
    names = set(by_name)
    # Implied parents of hierarchical names (shown as \Noselect \NonExistent).
    implied = set()
    for n in list(names):
        parts = n.split(HIERARCHY_SEPARATOR)
        for i in range(1, len(parts)):
            p = HIERARCHY_SEPARATOR.join(parts[:i])
            if p not in names:
                implied.add(p)
    has_children = {n.rsplit(HIERARCHY_SEPARATOR, 1)[0] for n in names | implied
                    if HIERARCHY_SEPARATOR in n}
    reference = mailbox_name(s, args.reference) if args.reference else ""
    matchers = [compile_pattern(join_reference(reference, p if s.utf8 else _safe_utf7(p)))
                for p in args.patterns]

    def matches(n: str) -> bool:
        return any(m.matches(n) for m in matchers)

    # Subscriptions are names (RFC 3501 §6.3.6): one may outlive its mailbox.
    list_subscriptions = getattr(s.store, "list_subscriptions", None)
    if list_subscriptions is not None:
        subscribed = set(await list_subscriptions(s.account.id))
    else:
        subscribed = {b.name for b in boxes if b.subscribed}
    subscribed_only = args.lsub or "SUBSCRIBED" in args.select_opts
    recursive = "RECURSIVEMATCH" in args.select_opts
    special_only = "SPECIAL-USE" in args.select_opts
    show_subscribed = "SUBSCRIBED" in args.return_opts or "SUBSCRIBED" in args.select_opts
    extended = args.extended or s.rev2  # RFC 9051 §6.3.9: rev2 LIST is LIST-EXTENDED
    word = "LSUB" if args.lsub else "LIST"
    candidates = names | implied
    if subscribed_only:
        candidates |= subscribed
        for n in subscribed:  # superiors of subscribed names (LSUB's \Noselect parents)
            parts = n.split(HIERARCHY_SEPARATOR)
            candidates.update(HIERARCHY_SEPARATOR.join(parts[:i]) for i in range(1, len(parts)))
    for name in sorted(candidates, key=lambda n: (n != "INBOX", n)):
        if not matches(name):
            continue
        box = by_name.get(name)
        childinfo = False
        if subscribed_only and name not in subscribed:
            # A superior of a subscribed name the pattern does not reach: LSUB shows it
            # \Noselect (RFC 3501 §6.3.9); LIST (SUBSCRIBED RECURSIVEMATCH) with
            # CHILDINFO (RFC 5258 §3.5).  Otherwise it is not listed.
            prefix = name + HIERARCHY_SEPARATOR
            hidden = any(n.startswith(prefix) and not matches(n) for n in subscribed)
            if not hidden or not (args.lsub or recursive):
                continue
            childinfo = recursive
        elif subscribed_only and recursive:
            prefix = name + HIERARCHY_SEPARATOR
            childinfo = any(n.startswith(prefix) and not matches(n) for n in subscribed)
        if special_only and (box is None or box.special_use is None):
            continue
        attrs_: list[str] = []
        if args.lsub:
            if box is None or name not in subscribed:
                attrs_.append("\\Noselect")
        else:
            if box is None:
                attrs_.append("\\NonExistent" if extended else "\\Noselect")
                if extended and name in implied:
                    attrs_.insert(0, "\\Noselect")
            if box is not None or name in implied:
                attrs_.append("\\HasChildren" if name in has_children else "\\HasNoChildren")
            if box is not None and box.special_use is not None:
                attrs_.append(str(box.special_use))
            if show_subscribed and name in subscribed:
                attrs_.append("\\Subscribed")
        line = f"{word} ({' '.join(attrs_)}) \"/\" ".encode() + response.mailbox(name, s.utf8)
        if childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        s.untagged(line)
        if "STATUS" in args.return_opts and box is not None:
            await _send_status(s, box, args.status_items)
        if args.metadata_entries and box is not None:
            await list_metadata(s, box, args.metadata_entries)  # RFC 9590
    return ok(f"{word} completed")


def _safe_utf7(p: str) -> str:
    try:
        return utf7_decode(p)
    except Exception:  # noqa: BLE001 - a pattern that is not mUTF-7 matches literally
        return p


_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "HIGHESTMODSEQ",
                 "DELETED")


async def _send_status(s: IMAPSession, box: MailboxInfo, items: tuple[str, ...]) -> None:
    vals = []
    for it in items:
        if it == "MESSAGES":
            vals.append(f"MESSAGES {box.exists}")
        elif it == "RECENT":
            claimed = s.factory.recent.claimed(box.id, box.uidnext - 1)
            if claimed >= box.uidnext - 1:
                recent = 0
            else:
                msgs = await s.store.list_messages(box.id)
                recent = sum(1 for m in msgs if m.uid > claimed)
            vals.append(f"RECENT {recent}")
        elif it == "UIDNEXT":
            vals.append(f"UIDNEXT {box.uidnext}")
        elif it == "UIDVALIDITY":
            vals.append(f"UIDVALIDITY {box.uidvalidity}")
        elif it == "UNSEEN":
            vals.append(f"UNSEEN {box.unseen}")
        elif it == "SIZE":
            vals.append(f"SIZE {box.size}")
        elif it == "HIGHESTMODSEQ":
            vals.append(f"HIGHESTMODSEQ {box.highestmodseq}")
        elif it == "DELETED":
            vals.append(f"DELETED {box.deleted}")  # RFC 9051 §6.3.11
    s.untagged(b"STATUS " + response.mailbox(box.name, s.utf8) + f" ({' '.join(vals)})".encode())


async def cmd_status(s: IMAPSession, cmd: Command) -> Reply:
    args: StatusArgs = cmd.args
    for it in args.items:
        if it not in _STATUS_ITEMS:
            return bad(f"Unknown STATUS item {it}")
    box = await _get_mailbox(s, mailbox_name(s, args.mailbox), counts=True)
    if box is None:
        return no("Mailbox does not exist", "NONEXISTENT")
    if s.view is not None and s.view.info.id == box.id:
        await s.sync(False)
    await _send_status(s, box, args.items)
    return ok("STATUS completed")


async def cmd_append(s: IMAPSession, cmd: Command) -> Reply:
    if not isinstance(cmd.args, AppendArgs):  # RFC 3502 MULTIAPPEND, RFC 4469 CATENATE
        return await appendcmd.cmd_multiappend(s, cmd)
    args: AppendArgs = cmd.args
    msg = args.message
    blob = msg.sink if isinstance(msg, BlobLiteral) else None
    try:
        flags = normalise_flags(args.flags)
        if flags is None:
            return bad("Unknown system flag")
        if (refused := flags_problem(args.flags)) is not None:
            return refused
        size = msg.size if isinstance(msg, BlobLiteral) else len(msg.data)
        if size == 0:
            return no("Cannot append an empty message")
        if blob is None:
            assert isinstance(msg, Literal)
            blob = s.store.new_blob()
            blob.write(msg.data)
        when = args.date or datetime.fromtimestamp(s.clock.seconds(), UTC)
        assert s.account is not None
        try:
            # The mailbox is looked up in the operation that stores the message: one
            # round trip to the store per APPEND.
            done = await s.store.append_to(s.account.id, mailbox_name(s, args.mailbox), blob,  # type: ignore[arg-type]
                                           flags, when)
        except NoSuchMailbox:
            blob = None  # the store drops the body
            return no("Mailbox does not exist", "TRYCREATE")
        except QuotaExceeded:
            blob = None
            await s.refresh_usage()
            return no("Quota exceeded", "OVERQUOTA")
        except StoreError as e:
            blob = None
            return store_error_reply(e)  # a flag the store refuses is the client's mistake
        blob = None
        s.note_appended(size)
        if s.view is not None and s.view.info.id == done.mailbox_id:
            s.view.dirty = True
        return ok("APPEND completed", f"APPENDUID {done.uidvalidity} {done.uid}")
    finally:
        if blob is not None:
            blob.abort()


async def _quota_line(s: IMAPSession) -> bytes | None:
    """RFC 9208 §5.1: ``QUOTA "" (STORAGE used limit)`` in units of 1024 octets."""
    assert s.account is not None
    used, limit = await s.store.get_usage(s.account.id)
    if limit is None:
        return None
    return b'QUOTA "" (STORAGE %d %d)' % ((used + 1023) // 1024, limit // 1024)


async def cmd_getquotaroot(s: IMAPSession, cmd: Command) -> Reply:
    args: MailboxArgs = cmd.args
    name = mailbox_name(s, args.mailbox)
    if await _get_mailbox(s, name) is None:
        return no("Mailbox does not exist", "NONEXISTENT")
    # One quota root per account, named "" (RFC 9208 §3.2).
    line = await _quota_line(s)
    if line is None:
        s.untagged(b"QUOTAROOT " + response.mailbox(name, s.utf8))
    else:
        s.untagged(b"QUOTAROOT " + response.mailbox(name, s.utf8) + b' ""')
        s.untagged(line)
    return ok("GETQUOTAROOT completed")


async def cmd_getquota(s: IMAPSession, cmd: Command) -> Reply:
    args: MailboxArgs = cmd.args
    line = await _quota_line(s) if args.mailbox == "" else None
    if line is None:
        return no("No such quota root", "NONEXISTENT")
    s.untagged(line)
    return ok("GETQUOTA completed")


async def cmd_setquota(s: IMAPSession, cmd: Command) -> Reply:
    return no("Quotas are set by the administrator", "NOPERM")


async def cmd_idle(s: IMAPSession, cmd: Command) -> Reply:
    if s.view is not None:
        await s.sync(True)
    s.start_idle(cmd.tag)
    raise CommandDetached()


# -- selected -----------------------------------------------------------------------------------

async def cmd_check(s: IMAPSession, cmd: Command) -> Reply:
    return ok("CHECK completed")


async def cmd_close(s: IMAPSession, cmd: Command) -> Reply:
    view = s.view
    assert view is not None
    if not view.readonly:
        # RFC 3501 §6.4.2: expunge silently.
        await s.store.expunge(view.info.id)
    s.deselect()
    return ok("CLOSE completed")


async def cmd_unselect(s: IMAPSession, cmd: Command) -> Reply:
    # RFC 3691 §2: like CLOSE, but no message is expunged, even in read-write mode.
    s.deselect()
    return ok("UNSELECT completed")


async def cmd_expunge(s: IMAPSession, cmd: Command) -> Reply:
    view = s.view
    assert view is not None
    if view.readonly:
        return no("Mailbox is read-only", "READ-ONLY")
    uids: list[int] | None = None
    if cmd.name == "UID EXPUNGE":
        a: SeqSetArgs = cmd.args
        uids = list(resolve(view, a.seqset, uid=True))
        if not uids:
            return ok("UID EXPUNGE completed")
    removed = await s.store.expunge(view.info.id, uids)
    if s.view is view:
        s.report_expunged(view.expunge(removed))
    return ok(f"{cmd.name} completed")


async def cmd_store(s: IMAPSession, cmd: Command) -> Reply:
    args: StoreArgs = cmd.args
    view = s.view
    assert view is not None
    if view.readonly:
        return no("Mailbox is read-only", "READ-ONLY")
    flags = normalise_flags(args.flags)
    if flags is None:
        return bad("Unknown system flag")
    if (refused := flags_problem(args.flags)) is not None:
        return refused
    is_uid = cmd.name.startswith("UID ")
    try:
        uids = list(resolve(view, args.seqset, uid=is_uid))
    except ValueError as e:
        return bad(str(e))
    if not uids:
        return ok("STORE completed")
    if args.unchangedsince is not None:
        s.enable_condstore()
    changed, failed = await s.store.store_flags(view.info.id, uids, flags, args.mode,
                                                args.unchangedsince)
    if s.view is not view:
        return ok("STORE completed")
    view.set_messages(changed)
    if args.mode != "-":
        # RFC 3501 §7.2.6: a keyword new to the mailbox is announced (FLAGS and
        # PERMANENTFLAGS) before any FETCH that shows it.
        s.announce_keywords(flags)
    changed_uids = {m.uid for m in changed}
    s.context_touched |= changed_uids  # RFC 5267 §4.3: updates for our own changes too
    failed_set = set(failed)
    for uid in uids:
        seq = view.seq_of(uid)
        if seq is None or uid in failed_set:
            continue
        if args.silent and not (uid in changed_uids and "CONDSTORE" in s.enabled
                                and args.unchangedsince is not None):
            continue
        s.untagged(s.fetch_flags_line(seq, view.msgs[uid], with_uid=is_uid))
    if failed:
        if is_uid:
            mod = response.seqset(failed)
        else:
            mod = response.seqset(q for q in (view.seq_of(u) for u in failed) if q is not None)
        return ok("Conditional STORE failed", "MODIFIED " + mod.decode())
    return ok("STORE completed")


async def cmd_copy(s: IMAPSession, cmd: Command) -> Reply:
    args: CopyArgs = cmd.args
    view = s.view
    assert view is not None
    move = cmd.name.endswith("MOVE")
    if move and view.readonly:
        return no("Mailbox is read-only", "READ-ONLY")
    try:
        uids = list(resolve(view, args.seqset, uid=cmd.name.startswith("UID ")))
    except ValueError as e:
        return bad(str(e))
    dest = await _get_mailbox(s, mailbox_name(s, args.mailbox))
    if dest is None:
        return no("Mailbox does not exist", "TRYCREATE")
    if not uids:
        return ok(f"{cmd.name} completed")
    try:
        if move:
            pairs = await s.store.move(view.info.id, uids, dest.id)
        else:
            pairs = await s.store.copy(view.info.id, uids, dest.id)
    except QuotaExceeded:
        return no("Quota exceeded", "OVERQUOTA")
    code = None
    if pairs:
        pairs = sorted(pairs)
        code = "COPYUID %d %s %s" % (dest.uidvalidity, ",".join(str(a) for a, _ in pairs),
                                     ",".join(str(b) for _, b in pairs))
    if move:
        # RFC 6851 §4.3: COPYUID in an untagged OK before the expunges.
        if code:
            s.untagged(f"OK [{code}] Moved")
        if s.view is view:
            s.report_expunged(view.expunge([a for a, _ in pairs]))
            if dest.id == view.info.id:
                view.dirty = True  # RFC 6851: the moved copies are new messages here
        return ok(f"{cmd.name} completed")
    if dest.id == view.info.id:
        view.dirty = True
    return ok(f"{cmd.name} completed", code)


async def cmd_fetch(s: IMAPSession, cmd: Command) -> Reply:
    return await do_fetch(s, cmd)


async def cmd_search(s: IMAPSession, cmd: Command) -> Reply:
    return await do_search(s, cmd)


async def cmd_sort(s: IMAPSession, cmd: Command) -> Reply:
    return await do_sort(s, cmd)


async def cmd_thread(s: IMAPSession, cmd: Command) -> Reply:
    return await do_thread(s, cmd)


async def cmd_esearch(s: IMAPSession, cmd: Command) -> Reply:
    return await do_esearch(s, cmd)


async def cmd_cancelupdate(s: IMAPSession, cmd: Command) -> Reply:
    return await do_cancelupdate(s, cmd)


def _spec(states: frozenset[State], handler: Handler, expunge_ok: bool = True) -> CommandSpec:
    return CommandSpec(states, handler, expunge_ok)


# The command table (RFC 3501 §6, RFC 9051 §6 and the extensions in CAPABILITY).
COMMANDS: dict[str, CommandSpec] = {
    "CAPABILITY": _spec(ANY, cmd_capability),
    "NOOP": _spec(ANY, cmd_noop),
    "LOGOUT": _spec(ANY, cmd_logout),
    "ID": _spec(ANY, cmd_id),
    "STARTTLS": _spec(NOT_AUTH, cmd_starttls),
    "LOGIN": _spec(NOT_AUTH, cmd_login),
    "AUTHENTICATE": _spec(NOT_AUTH, cmd_authenticate),
    "ENABLE": _spec(AUTH, cmd_enable),
    "NAMESPACE": _spec(AUTH, cmd_namespace),
    "SELECT": _spec(AUTH, cmd_select),
    "EXAMINE": _spec(AUTH, cmd_select),
    "CREATE": _spec(AUTH, cmd_create),
    "DELETE": _spec(AUTH, cmd_delete),
    "RENAME": _spec(AUTH, cmd_rename),
    "SUBSCRIBE": _spec(AUTH, cmd_subscribe),
    "UNSUBSCRIBE": _spec(AUTH, cmd_subscribe),
    "LIST": _spec(AUTH, cmd_list),
    "LSUB": _spec(AUTH, cmd_list),
    "STATUS": _spec(AUTH, cmd_status),
    "APPEND": _spec(AUTH, cmd_append),
    "IDLE": _spec(AUTH, cmd_idle),
    "GETQUOTAROOT": _spec(AUTH, cmd_getquotaroot),
    "GETQUOTA": _spec(AUTH, cmd_getquota),
    "SETQUOTA": _spec(AUTH, cmd_setquota),
    "GETMETADATA": _spec(AUTH, cmd_getmetadata),  # RFC 5464
    "NOTIFY": _spec(AUTH, cmd_notify),  # RFC 5465
    "SETMETADATA": _spec(AUTH, cmd_setmetadata),
    "CHECK": _spec(SELECTED, cmd_check),
    "CLOSE": _spec(SELECTED, cmd_close),
    "UNSELECT": _spec(SELECTED, cmd_unselect),
    "EXPUNGE": _spec(SELECTED, cmd_expunge),
    "UID EXPUNGE": _spec(SELECTED, cmd_expunge),
    "FETCH": _spec(SELECTED, cmd_fetch, expunge_ok=False),
    "UID FETCH": _spec(SELECTED, cmd_fetch),
    "STORE": _spec(SELECTED, cmd_store, expunge_ok=False),
    "UID STORE": _spec(SELECTED, cmd_store),
    "SEARCH": _spec(SELECTED, cmd_search, expunge_ok=False),
    "UID SEARCH": _spec(SELECTED, cmd_search),
    "SORT": _spec(SELECTED, cmd_sort, expunge_ok=False),  # RFC 5256 §3: like SEARCH
    "UID SORT": _spec(SELECTED, cmd_sort),
    "THREAD": _spec(SELECTED, cmd_thread, expunge_ok=False),  # RFC 5256 §3: like SEARCH
    "UID THREAD": _spec(SELECTED, cmd_thread),
    "ESEARCH": _spec(AUTH, cmd_esearch),  # RFC 7377 §2: in the authenticated state too
    "CANCELUPDATE": _spec(SELECTED, cmd_cancelupdate),  # RFC 5267 §4.3
    "COPY": _spec(SELECTED, cmd_copy),
    "UID COPY": _spec(SELECTED, cmd_copy),
    "MOVE": _spec(SELECTED, cmd_copy),
    "UID MOVE": _spec(SELECTED, cmd_copy),
    "COMPRESS": _spec(AUTH, compress.cmd_compress),  # RFC 4978 §5: command-auth
    "REPLACE": _spec(SELECTED, appendcmd.cmd_replace),  # RFC 8508
    "UID REPLACE": _spec(SELECTED, appendcmd.cmd_replace),
}
