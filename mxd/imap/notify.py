"""IMAP NOTIFY (RFC 5465): the command's grammar and what a NOTIFY SET asks for.

Pure: ``parse_notify`` reads ``NOTIFY NONE`` / ``NOTIFY SET [STATUS] event-group...``
(RFC 5465 §8) into a ``NotifyArgs``, refusing with ParseError (tagged BAD) what §5 and
§6.1 call errors; ``NotifySpec`` answers which events a mailbox name is watched for.
The session side (hub, queues, output) is ``mxd.imap.notifier``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from mxd.imap.values import FetchAtt
from mxd.store.interfaces import HIERARCHY_SEPARATOR

if TYPE_CHECKING:
    from mxd.imap.parser import Reader

MAX_GROUPS = 64
MAX_NAMED_MAILBOXES = 1000  # named in SUBTREE and MAILBOXES, per NOTIFY command
MAX_FETCH_ATTS = 32


class Event(enum.StrEnum):
    """RFC 5465 §5 event names (§8: case-insensitive on the wire)."""

    MESSAGE_NEW = "MessageNew"
    MESSAGE_EXPUNGE = "MessageExpunge"
    FLAG_CHANGE = "FlagChange"
    ANNOTATION_CHANGE = "AnnotationChange"
    MAILBOX_NAME = "MailboxName"
    SUBSCRIPTION_CHANGE = "SubscriptionChange"
    MAILBOX_METADATA_CHANGE = "MailboxMetadataChange"
    SERVER_METADATA_CHANGE = "ServerMetadataChange"


MESSAGE_EVENTS = frozenset({Event.MESSAGE_NEW, Event.MESSAGE_EXPUNGE, Event.FLAG_CHANGE,
                            Event.ANNOTATION_CHANGE})
# What mxd sends: not AnnotationChange (per-message annotations, RFC 5257, are not kept).
SUPPORTED = (Event.MESSAGE_NEW, Event.MESSAGE_EXPUNGE, Event.FLAG_CHANGE, Event.MAILBOX_NAME,
             Event.SUBSCRIPTION_CHANGE, Event.MAILBOX_METADATA_CHANGE,
             Event.SERVER_METADATA_CHANGE)
_BY_NAME = {e.value.upper(): e for e in Event}

SELECTED = "SELECTED"
SELECTED_DELAYED = "SELECTED-DELAYED"
# RFC 5465 §6 filter-mailboxes: whether it takes one-or-more-mailbox.
FILTERS = {SELECTED: False, SELECTED_DELAYED: False, "INBOXES": False, "PERSONAL": False,
           "SUBSCRIBED": False, "SUBTREE": True, "MAILBOXES": True}


@attrs.frozen
class EventGroup:
    """One ``(filter-mailboxes events)`` of NOTIFY SET.  ``events`` holds the names as
    given (known ones as ``Event``, others as upper-case text: an unsupported event is a
    tagged NO, not a syntax error, §3.1)."""

    filter: str
    mailboxes: tuple[str, ...] = ()  # wire names for SUBTREE and MAILBOXES
    events: frozenset[str] = frozenset()  # empty: NONE
    fetch_atts: tuple[FetchAtt, ...] = ()  # MessageNew's, SELECTED filters only


@attrs.frozen
class NotifyArgs:
    groups: tuple[EventGroup, ...] = ()  # empty: NOTIFY NONE
    status: bool = False  # NOTIFY SET STATUS

    def unsupported(self) -> list[str]:
        return sorted({e for g in self.groups for e in g.events} - set(SUPPORTED))


def _event(r: Reader) -> str:
    word = r.atom()
    return _BY_NAME.get(word.upper(), word.upper())


def _group(r: Reader, fetch_att: Callable[[Reader], FetchAtt], named: list[int]) -> EventGroup:
    r.expect(b"(")
    f = r.keyword()
    if f not in FILTERS:
        raise r.error(f"unknown mailbox filter {f[:40]}")
    names: tuple[str, ...] = ()
    if FILTERS[f]:
        r.sp()
        names = tuple(r.paren_list(r.astring)) if r.peek() == ord("(") else (r.astring(),)
        if not names:
            raise r.error("the mailbox filter needs a mailbox")
        named[0] += len(names)
        if named[0] > MAX_NAMED_MAILBOXES:
            raise r.error("too many mailboxes")
    r.sp()
    events: set[str] = set()
    fetch: tuple[FetchAtt, ...] = ()
    if not r.take(b"NONE"):
        r.expect(b"(")
        while True:
            ev = _event(r)
            events.add(ev)
            if ev == Event.MESSAGE_NEW and r.take(b" ("):
                atts: list[FetchAtt] = []
                while True:
                    atts.append(fetch_att(r))
                    if len(atts) > MAX_FETCH_ATTS:
                        raise r.error("too many fetch items")
                    if r.take(b")"):
                        break
                    r.sp()
                fetch = tuple(atts)
            if r.take(b")"):
                break
            r.sp()
    r.expect(b")")
    selected = f in (SELECTED, SELECTED_DELAYED)
    # RFC 5465 §5: "If one of MessageNew or MessageExpunge is specified, then both events
    # MUST be specified.  Otherwise, the server MUST respond with the tagged BAD";
    # FlagChange and AnnotationChange need both of them too.
    if (Event.MESSAGE_NEW in events) != (Event.MESSAGE_EXPUNGE in events):
        raise r.error("MessageNew and MessageExpunge go together")
    if events & {Event.FLAG_CHANGE, Event.ANNOTATION_CHANGE} and Event.MESSAGE_NEW not in events:
        raise r.error("FlagChange and AnnotationChange need MessageNew and MessageExpunge")
    # §6.1: "It is an error to specify other types of events with either the SELECTED
    # or the SELECTED-DELAYED selector."
    if selected and any(e in _BY_NAME.values() and e not in MESSAGE_EVENTS for e in events):
        raise r.error("only message events with SELECTED")
    if fetch and not selected:
        # §5.2: the FETCH response with the requested items is for the selected mailbox;
        # other mailboxes get STATUS.
        raise r.error("fetch items only with SELECTED or SELECTED-DELAYED")
    return EventGroup(f, names, frozenset(events), fetch)


def parse_notify(r: Reader, fetch_att: Callable[[Reader], FetchAtt]) -> NotifyArgs:
    """RFC 5465 §8: ``notify = "NOTIFY" SP (notify-set / notify-none)``."""
    r.sp()
    if r.take(b"NONE"):
        return NotifyArgs()
    r.expect(b"SET")
    status = r.take(b" STATUS")
    groups: list[EventGroup] = []
    named = [0]
    while r.take(b" "):
        groups.append(_group(r, fetch_att, named))
        if len(groups) > MAX_GROUPS:
            raise r.error("too many event groups")
    if not groups:
        raise r.error("NOTIFY SET needs an event group")
    if sum(g.filter in (SELECTED, SELECTED_DELAYED) for g in groups) > 1:
        # §6.1: "Only one of the mailbox specifiers affecting the currently selected
        # mailbox can be specified in any NOTIFY command."
        raise r.error("only one SELECTED or SELECTED-DELAYED filter")
    return NotifyArgs(tuple(groups), status)


@attrs.frozen
class NotifySpec:
    """A NOTIFY SET as it applies: the selected mailbox's events, and the other groups
    with their mailbox names resolved to store names by the session."""

    selected: frozenset[str] = frozenset()  # events for the selected mailbox
    delayed: bool = False  # SELECTED-DELAYED (§6.1.2: expunges wait for a command)
    fetch_atts: tuple[FetchAtt, ...] = ()
    others: tuple[EventGroup, ...] = ()  # mailboxes as store names
    status: bool = False

    def events_for(self, name: str, subscribed: Iterable[str] | set[str]) -> frozenset[str]:
        """The events watched for the (not selected) mailbox ``name``: the union of the
        groups that name it (RFC 5465 §6.2-§6.6; "inboxes" is INBOX, where mxd
        delivers; §6.6: MAILBOXES names are not patterns)."""
        out: set[str] = set()
        for g in self.others:
            if matches(g, name, subscribed):
                out |= g.events
        return frozenset(out)

    def watches_messages(self) -> bool:
        return bool(self.selected) or any(g.events & MESSAGE_EVENTS for g in self.others)


def matches(g: EventGroup, name: str, subscribed: Iterable[str] | set[str]) -> bool:
    f = g.filter
    if f == "PERSONAL":
        return True
    if f == "INBOXES":
        return name == "INBOX"
    if f == "SUBSCRIBED":
        return name in subscribed
    if f == "MAILBOXES":
        return name in g.mailboxes
    if f == "SUBTREE":  # §6.5: the mailbox and all its inferiors
        return any(name == top or name.startswith(top + HIERARCHY_SEPARATOR)
                   for top in g.mailboxes)
    return False
