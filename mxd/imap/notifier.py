"""NOTIFY (RFC 5465) in the session: the process-wide hub and each session's queue.

The hub (``NotifyHub``, one per process in ``IMAPShared``) watches the mailboxes of the
accounts that have NOTIFY sessions through the store's change notices, one subscription
per mailbox whoever listens (no polling); mailbox names, subscriptions and annotations
changed by IMAP commands are published to it by the commands themselves.  Each NOTIFY
session has a ``Notifier``: the events its NOTIFY SET asks for go into a bounded queue
(one pending STATUS per mailbox, a list of LIST/METADATA lines) that is written out
whenever no command runs (RFC 5465 §1: "the client listens for event notifications all
the time"), during IDLE (§4) and before a command's tagged reply.  A queue that
outgrows its bound (a client that does not read, or a flood of changes) ends in ``* OK
[NOTIFICATIONOVERFLOW]`` and NOTIFY NONE (§5.8).

With ``[server] workers = N`` the store's change notices cross processes (message
events), and so do names, subscriptions and annotations on a store that reports them
(``on_account_changes``: SQLite writes them to a journal the other processes read when
the database changed, mxd.store.watch): a rename there arrives as a rename (LIST with
OLDNAME), a SETMETADATA as METADATA.  On a store that does not (PostgreSQL), names and
subscriptions changed by another node are found by comparing the account's names once
per ``POLL_INTERVAL`` (one query per account, not per session, and only while a session
asks for MailboxName or SubscriptionChange; a rename reads as a delete and a create),
and annotation changes reach sessions of the same process only.

Events a session causes itself are not queued for it where the session knows it caused
them (mailbox names, subscriptions, annotations: §5 "The server SHOULD omit notifying
the client if the event is caused by this client"); message events come from the store,
which does not say who caused them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure as TwFailure

from mxd.imap import response
from mxd.imap.dispatch import CommandDetached, Reply, no, ok
from mxd.imap.notify import (
    SELECTED,
    SELECTED_DELAYED,
    SUPPORTED,
    Event,
    EventGroup,
    NotifyArgs,
    NotifySpec,
    matches,
)
from mxd.store.interfaces import AccountChange, MailboxChange, NoSuchMailbox, StoreError

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession
    from mxd.imap.values import Command

log = Logger()

MAX_PENDING = 1000  # queued STATUS mailboxes plus lines, per session (§5.8 beyond)
MAX_WATCHED = 5000  # mailboxes of one account the hub watches (NO [NOTIFICATIONOVERFLOW] beyond)

_KIND_EVENT = {"exists": Event.MESSAGE_NEW, "expunge": Event.MESSAGE_EXPUNGE,
               "flags": Event.FLAG_CHANGE}


class _Account:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}  # mailbox id -> name
        self.unsubscribe: dict[int, Callable[[], None]] = {}
        self.notifiers: set[Notifier] = set()
        self.loading: Deferred[None] | None = None
        # For changes made by other processes: the mailbox names and subscriptions as
        # last seen, compared once per POLL_INTERVAL while a session wants them.
        self.boxes: set[str] | None = None
        self.subscribed: set[str] = set()
        self.timer: Any = None
        self.polling = False


POLL_INTERVAL = 1.0  # seconds between two looks at an account's names (per process)


class NotifyHub:
    """Which NOTIFY sessions of this process watch which account's mailboxes."""

    def __init__(self) -> None:
        self._accounts: dict[int, _Account] = {}
        self._journal: bool | None = None  # the store passes other processes' account
        # changes (None: not asked yet)

    async def join(self, n: Notifier) -> bool:
        """Start passing ``n`` the events of its account; False when the account has
        too many mailboxes to watch."""
        acc = self._accounts.setdefault(n.account_id, _Account())
        acc.notifiers.add(n)
        if self._journal is None:  # one listener for the process, whichever account
            listen = getattr(n.store, "on_account_changes", None)
            self._journal = bool(listen(self._foreign)) if listen is not None else False
        if not acc.names:
            await self._load(n.store, n.account_id, acc)
        if n.wants_names() and acc.boxes is None and not self._journal:
            acc.boxes, acc.subscribed = await _names_now(n.store, n.account_id)
            self._poll_later(n.account_id, acc, n.session.clock)
        return len(acc.names) <= MAX_WATCHED

    def leave(self, n: Notifier) -> None:
        acc = self._accounts.get(n.account_id)
        if acc is None:
            return
        acc.notifiers.discard(n)
        if not acc.notifiers:
            for unsub in acc.unsubscribe.values():
                unsub()
            if acc.timer is not None and acc.timer.active():
                acc.timer.cancel()
            del self._accounts[n.account_id]

    def names(self, account_id: int) -> dict[int, str]:
        acc = self._accounts.get(account_id)
        return acc.names if acc is not None else {}

    async def _load(self, store: Any, account_id: int, acc: _Account) -> None:
        """Watch every mailbox of the account (again: after a create, rename or
        delete); one store subscription per mailbox."""
        boxes = await store.list_mailboxes(account_id)
        if self._accounts.get(account_id) is not acc:
            return  # every session left meanwhile
        names = {b.id: b.name for b in boxes[:MAX_WATCHED + 1]}
        for mid in list(acc.unsubscribe):
            if mid not in names:
                acc.unsubscribe.pop(mid)()
        for mid in names:
            if mid not in acc.unsubscribe:
                acc.unsubscribe[mid] = store.subscribe(
                    mid, lambda ch, a=account_id: self._changed(a, ch))
        acc.names = names

    def _changed(self, account_id: int, change: MailboxChange) -> None:
        acc = self._accounts.get(account_id)
        if acc is None:
            return
        name = acc.names.get(change.mailbox_id)
        if change.kind in ("deleted", "renamed"):
            self._reload(account_id)
            return
        if name is None:
            return
        for n in list(acc.notifiers):
            n.message_event(change.mailbox_id, name, change.kind)

    def _reload(self, account_id: int) -> None:
        acc = self._accounts.get(account_id)
        if acc is None or not acc.notifiers:
            return
        store = next(iter(acc.notifiers)).store
        Deferred.fromCoroutine(self._load(store, account_id, acc)).addErrback(
            lambda f: log.failure("notify: reloading mailboxes failed", f))

    # -- events published by commands ---------------------------------------------------
    def mailbox_event(self, account_id: int, event: Event, name: str, *, old: str | None = None,
                      exists: bool = True, subscribed: bool = False,
                      origin: Any = None) -> None:
        """MailboxName (create: exists; delete: not exists; rename: ``old``) or
        SubscriptionChange (``subscribed``) for the sessions of ``account_id``."""
        if event == Event.MAILBOX_NAME:
            self._reload(account_id)
        acc = self._accounts.get(account_id)
        if acc is not None and acc.boxes is not None:
            _seen(acc, event, name, old, exists, subscribed)  # the poll must not repeat it
        for n in list(acc.notifiers if acc is not None else ()):
            if n.session is not origin:
                n.mailbox_event(event, name, old=old, exists=exists, subscribed=subscribed)

    # -- names, subscriptions and annotations changed by other processes ---------------
    def _foreign(self, changes: list[AccountChange]) -> None:
        """RFC 5465 §5.4-§5.7 for what another process committed (its sessions were told
        by the command; here nobody caused it, so every NOTIFY session hears it)."""
        reload: set[int] = set()
        for c in changes:
            acc = self._accounts.get(c.account_id)
            if acc is None:
                continue
            if c.kind == "metadata":
                for n in list(acc.notifiers):
                    n.metadata_event(c.name, list(c.entries))
                continue
            if c.name is None:
                continue
            event = Event.MAILBOX_NAME if c.kind == "name" else Event.SUBSCRIPTION_CHANGE
            if event == Event.MAILBOX_NAME:
                reload.add(c.account_id)
            for n in list(acc.notifiers):
                n.mailbox_event(event, c.name, old=c.old, exists=c.exists,
                                subscribed=c.subscribed)
        for account_id in reload:
            self._reload(account_id)

    def _poll_later(self, account_id: int, acc: _Account, clock: Any) -> None:
        def tick() -> None:
            acc.timer = None
            if self._accounts.get(account_id) is not acc:
                return
            def again(r: object) -> None:
                if isinstance(r, TwFailure):
                    log.failure("notify: reading mailbox names failed", r)
                self._poll_later(account_id, acc, clock)

            Deferred.fromCoroutine(self._poll(account_id, acc)).addBoth(again)

        if any(n.wants_names() for n in acc.notifiers) and acc.timer is None:
            acc.timer = clock.callLater(POLL_INTERVAL, tick)
        elif not any(n.wants_names() for n in acc.notifiers):
            acc.boxes = None

    async def _poll(self, account_id: int, acc: _Account) -> None:
        """RFC 5465 §5.4, §5.5 for what another worker process changed: the names and
        subscriptions compared with what was last seen (a rename there reads as a
        delete and a create here: the old name is not known)."""
        if not acc.notifiers or acc.boxes is None:
            return
        store = next(iter(acc.notifiers)).store
        boxes, subscribed = await _names_now(store, account_id)
        if self._accounts.get(account_id) is not acc or acc.boxes is None:
            return
        events: list[tuple[Event, str, bool, bool]] = []
        for name in sorted(boxes - acc.boxes):
            events.append((Event.MAILBOX_NAME, name, True, name in subscribed))
        for name in sorted(acc.boxes - boxes):
            events.append((Event.MAILBOX_NAME, name, False, False))
        for name in sorted(subscribed ^ acc.subscribed):
            events.append((Event.SUBSCRIPTION_CHANGE, name, name in boxes, name in subscribed))
        acc.boxes, acc.subscribed = boxes, subscribed
        if any(e == Event.MAILBOX_NAME for e, _, _, _ in events):
            self._reload(account_id)
        for event, name, exists, sub in events:
            for n in list(acc.notifiers):
                n.mailbox_event(event, name, old=None, exists=exists, subscribed=sub)

    def metadata_event(self, account_id: int, mailbox: str | None, entries: list[str],
                       origin: Any = None) -> None:
        """MailboxMetadataChange (``mailbox``) or ServerMetadataChange (None)."""
        acc = self._accounts.get(account_id)
        for n in list(acc.notifiers if acc is not None else ()):
            if n.session is not origin:
                n.metadata_event(mailbox, entries)


async def _names_now(store: Any, account_id: int) -> tuple[set[str], set[str]]:
    boxes = await store.list_mailboxes(account_id)
    list_subscriptions = getattr(store, "list_subscriptions", None)
    if list_subscriptions is not None:
        subscribed = set(await list_subscriptions(account_id))
    else:
        subscribed = {b.name for b in boxes if b.subscribed}
    return {b.name for b in boxes}, subscribed


def _seen(acc: _Account, event: Event, name: str, old: str | None, exists: bool,
          subscribed: bool) -> None:
    """Apply a change this process made (and reported) to the last-seen names."""
    assert acc.boxes is not None
    if event == Event.SUBSCRIPTION_CHANGE:
        (acc.subscribed.add if subscribed else acc.subscribed.discard)(name)
    elif old is not None:  # a rename moves the inferiors along (RFC 3501 §6.3.5)
        def moved(names: set[str]) -> set[str]:
            return {name + n[len(old):] if n == old or n.startswith(old + "/") else n
                    for n in names}
        acc.boxes, acc.subscribed = moved(acc.boxes), moved(acc.subscribed)
    elif exists:
        acc.boxes.add(name)
        acc.boxes.update("/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1))
    else:
        acc.boxes.discard(name)


class Notifier:
    """One session's NOTIFY SET: its spec, its queue, its output."""

    def __init__(self, session: IMAPSession, spec: NotifySpec, subscribed: set[str]) -> None:
        self.session = session
        self.spec = spec
        self.store = session.store
        assert session.account is not None
        self.account_id = session.account.id
        self.subscribed = subscribed
        self._status: dict[int, tuple[str, set[str]]] = {}  # mailbox id -> (name, kinds)
        self._lines: list[bytes] = []
        self._flushing = False
        self._scheduled = False
        self.closed = False

    @property
    def hub(self) -> NotifyHub:
        hub: NotifyHub = self.session.factory.shared.notify
        return hub

    def wants_names(self) -> bool:
        """Does the spec ask for MailboxName or SubscriptionChange anywhere?"""
        return any(g.events & {Event.MAILBOX_NAME, Event.SUBSCRIPTION_CHANGE}
                   for g in self.spec.others)

    def _selected_name(self) -> str | None:
        v = self.session.view
        return v.info.name if v is not None else None

    def _room(self) -> bool:
        if len(self._status) + len(self._lines) < MAX_PENDING:
            return True
        # RFC 5465 §5.8: tell the client, then behave as after NOTIFY NONE.
        self._status.clear()
        self._lines.clear()
        self.session.stop_notify()
        self.session.untagged(b"OK [NOTIFICATIONOVERFLOW] Too many notifications; NOTIFY is off")
        return False

    # -- events -------------------------------------------------------------------------
    def message_event(self, mailbox_id: int, name: str, kind: str) -> None:
        if self.closed or name == self._selected_name():
            return  # the selected mailbox's events come through the session (§3.1)
        ev = _KIND_EVENT.get(kind)
        if ev is None or ev not in self.spec.events_for(name, self.subscribed):
            return
        if mailbox_id not in self._status and not self._room():
            return
        self._status.setdefault(mailbox_id, (name, set()))[1].add(kind)
        self.schedule()

    def mailbox_event(self, event: Event, name: str, *, old: str | None, exists: bool,
                      subscribed: bool) -> None:
        if self.closed:
            return
        if event == Event.SUBSCRIPTION_CHANGE:
            if subscribed:
                self.subscribed.add(name)
            else:
                self.subscribed.discard(name)
        if not any(event in g.events and (matches(g, name, self.subscribed) or (
                old is not None and matches(g, old, self.subscribed))) for g in self.spec.others):
            return
        if not self._room():
            return
        utf8 = self.session.utf8
        # RFC 5465 §5.4: LIST for the name, \NonExistent when it is gone, OLDNAME for a
        # rename (RFC 5258 extended data); §5.5: \Subscribed iff subscribed now.
        attrs_ = ("\\Subscribed" if event == Event.SUBSCRIPTION_CHANGE and subscribed else
                  "\\NonExistent" if not exists else "")
        line = f'LIST ({attrs_}) "/" '.encode() + response.mailbox(name, utf8)
        if old is not None:
            line += b' ("OLDNAME" (' + response.mailbox(old, utf8) + b"))"
        self._lines.append(line)
        self.schedule()

    def metadata_event(self, mailbox: str | None, entries: list[str]) -> None:
        if self.closed:
            return
        if mailbox is None:
            wanted = any(Event.SERVER_METADATA_CHANGE in g.events for g in self.spec.others)
        else:
            wanted = any(Event.MAILBOX_METADATA_CHANGE in g.events
                         and matches(g, mailbox, self.subscribed) for g in self.spec.others)
        if not wanted or not self._room():
            return
        # RFC 5465 §5.6, §5.7: an unsolicited METADATA response naming the entries
        # (RFC 5464 §4.4.2: without values; the client asks with GETMETADATA).
        box = b'""' if mailbox is None else response.mailbox(mailbox, self.session.utf8)
        self._lines.append(b"METADATA " + box + b" " + b" ".join(
            response.astring(e) for e in entries))
        self.schedule()

    # -- output -------------------------------------------------------------------------
    def pending(self) -> bool:
        return bool(self._status or self._lines)

    def schedule(self) -> None:
        """Write the queue out soon, if the session is between commands (or idling)."""
        if self._scheduled or self.closed:
            return
        self._scheduled = True
        self.session.clock.callLater(0, self._start_flush)

    def _start_flush(self) -> None:
        self._scheduled = False
        if self.closed or not self.session.may_push():
            return  # the running command's end (or resumed output) flushes
        Deferred.fromCoroutine(self.flush()).addErrback(
            lambda f: None if f.check(CommandDetached) else log.failure("notify flush failed", f))

    async def flush(self) -> None:
        """Send what is queued: STATUS per mailbox (RFC 5465 §5.1-§5.3), then the LIST
        and METADATA lines in the order their events came."""
        if self._flushing or self.closed:
            return
        self._flushing = True
        try:
            while self._status and not self.closed:
                mailbox_id, (name, kinds) = next(iter(self._status.items()))
                del self._status[mailbox_id]
                line = await self._status_line(name, kinds)
                if line is not None and not self.closed:
                    self.session.untagged(line)
            lines, self._lines = self._lines, []
            for line in lines:
                self.session.untagged(line)
        finally:
            self._flushing = False

    async def _status_line(self, name: str, kinds: set[str]) -> bytes | None:
        try:
            box = await self.store.get_mailbox(self.account_id, name, counts=True)
        except NoSuchMailbox:
            return None
        except StoreError as e:
            log.error("notify: STATUS of {name} failed: {error}", name=name, error=str(e))
            return None
        condstore = "CONDSTORE" in self.session.enabled
        items: list[str] = []
        if kinds & {"exists", "expunge"}:
            # RFC 5465 §5.2, §5.3: STATUS (UIDNEXT MESSAGES); UNSEEN as Dovecot adds it.
            items += [f"MESSAGES {box.exists}", f"UIDNEXT {box.uidnext}"]
        items.append(f"UNSEEN {box.unseen}")
        if condstore:
            # §5.1-§5.3: with CONDSTORE, HIGHESTMODSEQ (and UIDVALIDITY for flag changes).
            items += [f"UIDVALIDITY {box.uidvalidity}", f"HIGHESTMODSEQ {box.highestmodseq}"]
        return b"STATUS " + response.mailbox(name, self.session.utf8) + (
            " (" + " ".join(items) + ")").encode()

    async def initial_status(self) -> None:
        """NOTIFY SET STATUS (§3.1): a STATUS for each watched mailbox other than the
        selected one, before the tagged OK."""
        selected = self._selected_name()
        for name in sorted(self.hub.names(self.account_id).values(),
                           key=lambda n: (n != "INBOX", n)):
            if name == selected or not self.spec.events_for(name, self.subscribed) & {
                    Event.MESSAGE_NEW, Event.MESSAGE_EXPUNGE, Event.FLAG_CHANGE}:
                continue
            try:
                box = await self.store.get_mailbox(self.account_id, name, counts=True)
            except NoSuchMailbox:
                continue
            items = [f"MESSAGES {box.exists}", f"UIDNEXT {box.uidnext}",
                     f"UIDVALIDITY {box.uidvalidity}", f"UNSEEN {box.unseen}"]
            if "CONDSTORE" in self.session.enabled:
                items.append(f"HIGHESTMODSEQ {box.highestmodseq}")
            self.session.untagged(b"STATUS " + response.mailbox(name, self.session.utf8)
                                  + (" (" + " ".join(items) + ")").encode())

    def close(self) -> None:
        self.closed = True
        self._status.clear()
        self._lines.clear()
        self.hub.leave(self)


async def cmd_notify(s: IMAPSession, cmd: Command) -> Reply:
    """RFC 5465 §3.1 NOTIFY NONE / NOTIFY SET [STATUS]."""
    from mxd.imap.commands import mailbox_name

    args: NotifyArgs = cmd.args
    assert s.account is not None
    bad_events = args.unsupported()
    if bad_events:
        # §3.1: unsupported events are a tagged NO (not BAD) whose BADEVENT code "MUST
        # list names of all events supported by the server".
        return no("Unsupported NOTIFY events", "BADEVENT (" + " ".join(SUPPORTED) + ")")
    s.stop_notify()
    if not args.groups:
        return ok("NOTIFY completed")
    selected: frozenset[str] = frozenset()
    delayed = False
    fetch_atts: tuple[Any, ...] = ()
    others: list[EventGroup] = []
    for g in args.groups:
        if g.filter in (SELECTED, SELECTED_DELAYED):
            selected, delayed, fetch_atts = g.events, g.filter == SELECTED_DELAYED, g.fetch_atts
        else:
            names = tuple(mailbox_name(s, n) for n in g.mailboxes)
            others.append(EventGroup(g.filter, names, g.events))
    spec = NotifySpec(selected, delayed, fetch_atts, tuple(others), args.status)
    subscribed: set[str] = set()
    if any(g.filter == "SUBSCRIBED" for g in others):
        list_subscriptions = getattr(s.store, "list_subscriptions", None)
        if list_subscriptions is not None:
            subscribed = set(await list_subscriptions(s.account.id))
        else:
            subscribed = {b.name for b in await s.store.list_mailboxes(s.account.id)
                          if b.subscribed}
    n = Notifier(s, spec, subscribed)
    if not await n.hub.join(n):
        n.close()
        # §3.1: "the server MAY refuse the command with a tagged NO [NOTIFICATIONOVERFLOW]".
        return no("Too many mailboxes to watch", "NOTIFICATIONOVERFLOW")
    s.notifier = n
    if args.status:
        await n.initial_status()
    # §3.1: NOTIFY SET implies a NOOP: the session's sync after the command sends the
    # selected mailbox's accumulated changes.
    return ok("NOTIFY completed")


def publish(s: IMAPSession, event: Event, name: str, *, old: str | None = None,
            exists: bool = True, subscribed: bool = False) -> None:
    """A command of ``s`` changed a mailbox name or subscription: tell the account's
    other NOTIFY sessions."""
    assert s.account is not None
    s.factory.shared.notify.mailbox_event(s.account.id, event, name, old=old, exists=exists,
                                          subscribed=subscribed, origin=s)


# -- the selected mailbox (RFC 5465 §5.1-§5.3, §6.1) -------------------------------------------

def wants_selected(s: IMAPSession) -> bool:
    """Are changes to the selected mailbox pushed between commands?"""
    n = s.notifier
    return n is not None and bool(n.spec.selected)


def expunge_now(s: IMAPSession) -> bool:
    """SELECTED-DELAYED (§6.1.2) holds expunges back until a command that may report them."""
    n = s.notifier
    return n is None or not n.spec.delayed


async def sync_selected(s: IMAPSession, expunge_ok: bool) -> None:
    """The session's sync, then for new messages the FETCH items of MessageNew (§5.2:
    "an unsolicited EXISTS response, followed by an unsolicited FETCH response
    containing the information requested by the client")."""
    view = s.view
    old_max = view.max_uid if view is not None else 0
    await s.sync(expunge_ok)
    n = s.notifier
    if n is None or not n.spec.fetch_atts or s.view is not view or view is None:
        return
    new = [u for u in view.uids[-64:] if u > old_max] if view.max_uid > old_max else []
    if not new:
        return
    if view.max_uid - old_max > len(new):
        new = [u for u in view.uids if u > old_max]
    from mxd.imap.fetch import do_fetch
    from mxd.imap.values import Command, FetchArgs, SeqSet

    args = FetchArgs(SeqSet(((new[0], new[-1]),)), n.spec.fetch_atts)
    await do_fetch(s, Command("*", "UID FETCH", args))
