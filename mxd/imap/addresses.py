"""RFC 5322 §3.4 address lists as IMAP ENVELOPE sees them (RFC 3501 §7.4.2,
RFC 9051 §7.5.2): display name, source route (adl), mailbox and host.

A small tolerant parser of its own, because ENVELOPE needs what general-purpose parsers
drop: the obsolete source route of ``<@route:user@domain>`` (RFC 5322 §4.4 obs-route)
is the adl field, and a comment is the name of an address that has no display name
(``user@domain (Real Name)``, as Dovecot and Cyrus give it).  Comments and folding
whitespace inside an addr-spec (``<user (c)@ (c) domain.org>``, RFC 5322 §3.4.1 CFWS)
are dropped.  Groups give the start and end markers of RFC 3501 §7.4.2.  Junk never
raises: whatever cannot be read as an address is skipped.  Pure: works on str.
"""

from __future__ import annotations

import attrs

_SPECIALS = '()<>@,;:\\".[]'


@attrs.frozen
class Address:
    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@attrs.frozen
class GroupStart:
    name: str


@attrs.frozen
class GroupEnd:
    pass


Entry = Address | GroupStart | GroupEnd


@attrs.frozen
class _Tok:
    kind: str  # "atom", "qstr", "dlit", "comment", or the special character itself
    text: str
    space_before: bool


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(text)
    space = False
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            space = True
            i += 1
            continue
        if c == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                ch = text[j]
                if ch == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                    continue
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if not depth:
                        break
                buf.append(ch)
                j += 1
            out.append(_Tok("comment", " ".join("".join(buf).split()), space))
            i = j + 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                if text[j] not in "\r\n":
                    buf.append(text[j])
                j += 1
            out.append(_Tok("qstr", "".join(buf), space))
            i = j + 1
        elif c == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(_Tok("dlit", text[i:j + 1], space))
            i = j + 1
        elif c in _SPECIALS:
            out.append(_Tok(c, c, space))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIALS and text[j] not in " \t\r\n":
                j += 1
            out.append(_Tok("atom", text[i:j], space))
            i = j
        space = False
    return out


class _Parser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.pos = 0
        self.comments: list[str] = []  # comments met since the current address began

    def peek(self) -> _Tok | None:
        while self.pos < len(self.toks) and self.toks[self.pos].kind == "comment":
            self.comments.append(self.toks[self.pos].text)
            self.pos += 1
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def next(self) -> _Tok | None:
        t = self.peek()
        if t is not None:
            self.pos += 1
        return t

    def phrase(self) -> list[_Tok]:
        words = []
        while (t := self.peek()) is not None and t.kind in ("atom", "qstr", "."):
            words.append(t)
            self.pos += 1
        return words

    def domain(self, stop: str) -> str:
        parts = []
        while (t := self.peek()) is not None and t.kind not in stop:
            parts.append(t.text)
            self.pos += 1
        return "".join(parts)

    def skip_to(self, stop: str) -> None:
        while (t := self.peek()) is not None and t.kind not in stop:
            self.pos += 1


def _phrase_text(words: list[_Tok]) -> str:
    # Words keep the spacing they had (obs-phrase "Joe Q. Public" stays as it is).
    return "".join((" " if i and w.space_before else "") + w.text for i, w in enumerate(words))


def _local_text(words: list[_Tok]) -> str:
    return "".join(w.text for w in words)


def _mailbox(p: _Parser, stop: str) -> Address | None:
    """One mailbox (name-addr or addr-spec), or None for junk up to ``stop``."""
    p.comments = []
    words = p.phrase()
    t = p.peek()
    if t is not None and t.kind == "<":
        p.pos += 1
        adl = None
        if (r := p.peek()) is not None and r.kind == "@":
            # obs-route: "@a,@b:" before the addr-spec.
            route = []
            while (r := p.peek()) is not None and r.kind in ("@", ","):
                p.pos += 1
                if r.kind == "@":
                    route.append("@" + p.domain(",:>"))
            if (r := p.peek()) is not None and r.kind == ":":
                p.pos += 1
            adl = ",".join(route) or None
        local = _local_text(p.phrase())
        host = None
        if (r := p.peek()) is not None and r.kind == "@":
            p.pos += 1
            host = p.domain(">" + stop)
        p.skip_to(">" + stop)
        if (r := p.peek()) is not None and r.kind == ">":
            p.pos += 1
        p.comments = []  # comments inside <...> are not names; one after it may be
        name = _phrase_text(words) or None
        p.skip_to(stop)
        if name is None and p.comments:
            name = p.comments[-1] or None
        if not local and not host:
            return None
        return Address(name, adl, local or None, host or None)
    if not words:
        p.skip_to(stop)
        return None
    local = _local_text(words)
    host = None
    if t is not None and t.kind == "@":
        p.pos += 1
        host = p.domain(stop)
    p.skip_to(stop)
    name = next((c for c in p.comments if c), None)
    return Address(name, None, local or None, host or None)


def parse_address_list(text: str) -> list[Entry]:
    """The entries of an address list (``To``, ``From``, ...), groups marked."""
    p = _Parser(_tokens(text))
    out: list[Entry] = []
    while p.peek() is not None:
        start = p.pos
        words = p.phrase()
        t = p.peek()
        if t is not None and t.kind == ":" and words:
            # group: display-name ":" [group-list] ";"
            p.pos += 1
            out.append(GroupStart(_phrase_text(words)))
            while (t := p.peek()) is not None and t.kind != ";":
                if t.kind == ",":
                    p.pos += 1
                    continue
                before = p.pos
                a = _mailbox(p, ",;")
                if a is not None and (a.mailbox or a.host):
                    out.append(a)
                if p.pos == before:
                    p.pos += 1
            if p.peek() is not None:
                p.pos += 1  # ";"
            out.append(GroupEnd())
            continue
        p.pos = start
        if t is not None and t.kind == ",":
            if not words:
                p.pos += 1
                continue
        a = _mailbox(p, ",")
        if a is not None and (a.mailbox or a.host):
            out.append(a)
        if p.pos == start:
            p.pos += 1  # a stray special: skip it
        elif (t := p.peek()) is not None and t.kind == ",":
            p.pos += 1
    return out
