"""Typed values of parsed IMAP commands (RFC 3501 §9, RFC 9051 §9 and extensions).

Sequence sets, sections, fetch items, search keys and one argument class per command.
Pure values; ``mxd.imap.parser`` builds them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import attrs

from mxd.imap.framer import BlobLiteral, Literal


@attrs.frozen
class SeqSet:
    """A sequence set (RFC 9051 §9 ``sequence-set``); 0 stands for ``*``.

    ``saved`` is the RFC 5182 ``$`` (the last saved search result).
    """

    ranges: tuple[tuple[int, int], ...] = ()
    saved: bool = False
    # (star, merged ranges, their low ends) of the last ``resolve``: a set is normalised
    # once per value of ``*``, not once per message it is tested against.
    _normal: list[Any] = attrs.field(factory=list, init=False, eq=False, repr=False,
                                     hash=False)

    def resolve(self, star: int) -> list[tuple[int, int]]:
        """The set as sorted, disjoint, non-adjacent ranges, ``*`` replaced by ``star``.

        RFC 9051 §9: "1:*,1:*" is the same set as "1:*"; a client may send thousands of
        overlapping ranges, and the cost of testing a value must not grow with them."""
        cached = self._normal
        if cached and cached[0] == star:
            return cached[1]
        spans = sorted((min(a or star, b or star), max(a or star, b or star))
                       for a, b in self.ranges)
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        cached[:] = [star, merged, [lo for lo, _ in merged]]
        return merged

    def contains(self, n: int, star: int) -> bool:
        merged = self.resolve(star)
        i = bisect.bisect_right(self._normal[2], n) - 1
        return i >= 0 and n <= merged[i][1]

    def iter_values(self, star: int, limit: int) -> Iterator[int]:
        """Values in the set that are ≤ ``limit`` (sorted, no duplicates)."""
        for lo, hi in self.resolve(star):
            if lo > limit:
                return
            yield from range(lo, min(hi, limit) + 1)


@attrs.frozen
class Section:
    """A BODY[...] section (RFC 3501 §6.4.5)."""

    part: tuple[int, ...] = ()
    text: str = ""  # "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        s = ".".join(str(p) for p in self.part)
        if self.text:
            s = f"{s}.{self.text}" if s else self.text
        if self.fields:
            s += " (" + " ".join(self.fields) + ")"
        return s


@attrs.frozen
class FetchAtt:
    """One fetch item.  ``name`` is the upper-case item (BODY, BINARY, BINARY.SIZE, ...)."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None  # (offset, length)
    peek: bool = False
    lazy: bool = False  # RFC 8970 §3.2: PREVIEW (LAZY)


@attrs.frozen
class SearchKey:
    """A node of a search program; ``name`` is the upper-case key, "AND" for a list."""

    name: str
    args: tuple[Any, ...] = ()


@attrs.frozen
class Command:
    tag: str
    name: str  # upper case; UID commands are "UID FETCH" etc.
    args: Any = None


@attrs.frozen
class LoginArgs:
    username: str
    password: str


@attrs.frozen
class AuthenticateArgs:
    mechanism: str
    initial: bytes | None  # decoded SASL-IR; b"" for "="; None when absent


@attrs.frozen
class MailboxArgs:
    mailbox: str


@attrs.frozen
class CreateArgs:
    mailbox: str
    special_use: tuple[str, ...] = ()


@attrs.frozen
class RenameArgs:
    old: str
    new: str


@attrs.frozen
class SelectArgs:
    mailbox: str
    condstore: bool = False
    qresync: tuple[int, int, SeqSet | None] | None = None  # uidvalidity, modseq, known uids


@attrs.frozen
class ListArgs:
    reference: str
    patterns: tuple[str, ...]
    select_opts: frozenset[str] = frozenset()
    return_opts: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()
    extended: bool = False
    lsub: bool = False
    metadata_entries: tuple[str, ...] = ()  # RFC 9590 RETURN (METADATA (entries))


@attrs.frozen
class StatusArgs:
    mailbox: str
    items: tuple[str, ...]


@attrs.frozen
class AppendArgs:
    mailbox: str
    flags: tuple[str, ...]
    date: datetime | None
    message: Literal | BlobLiteral


@attrs.frozen
class FetchArgs:
    seqset: SeqSet
    atts: tuple[FetchAtt, ...]
    changedsince: int | None = None
    vanished: bool = False


@attrs.frozen
class StoreArgs:
    seqset: SeqSet
    mode: str  # "set" | "add" | "remove"
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@attrs.frozen
class SearchArgs:
    key: SearchKey
    charset: str | None = None
    return_opts: tuple[str, ...] | None = None  # None: plain SEARCH; () = RETURN ()
    # RFC 5267 §4.4 / RFC 9394 §3.1: RETURN (PARTIAL first:last), 1-based positions in
    # the result; negative ones count from its end (-1 is the last).
    partial: tuple[int, int] | None = None


@attrs.frozen
class ESearchArgs(SearchArgs):
    """The ESEARCH command (RFC 7377 §2): a search over the mailboxes that the source
    options name, ``("SELECTED", ())``, ``("MAILBOXES", ("a", "b"))``...; no IN: the
    selected mailbox."""

    sources: tuple[tuple[str, tuple[str, ...]], ...] = ()


@attrs.frozen
class CancelUpdateArgs:
    """CANCELUPDATE (RFC 5267 §4.3): the tags of the searches to stop updating."""

    tags: tuple[str, ...]


@attrs.frozen
class ThreadArgs:
    """THREAD (RFC 5256 §3): the algorithm, then a SEARCH program."""

    algorithm: str
    charset: str
    key: SearchKey


@attrs.frozen
class SortArgs:
    """SORT (RFC 5256 §3): (sort-key, reverse) pairs, then a SEARCH program."""

    criteria: tuple[tuple[str, bool], ...]
    charset: str
    key: SearchKey
    return_opts: tuple[str, ...] | None = None  # RFC 5267 ESORT; None: plain SORT
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL, in sort order


@attrs.frozen
class CopyArgs:
    seqset: SeqSet
    mailbox: str


@attrs.frozen
class SeqSetArgs:
    seqset: SeqSet


@attrs.frozen
class EnableArgs:
    capabilities: tuple[str, ...]


@attrs.frozen
class IdArgs:
    params: tuple[tuple[str, str | None], ...] | None
