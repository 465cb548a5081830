"""LIST/LSUB mailbox patterns (RFC 3501 §6.3.8, RFC 9051 §6.3.9) matched in linear time.

``*`` matches zero or more characters, ``%`` zero or more characters other than the
hierarchy separator.  A backtracking matcher (a regex of ``.*`` pieces) takes time
exponential in the number of wildcards on a name that almost matches; here the
pattern is a small NFA whose set of live positions is one integer bitmask, advanced
once per character of the name: O(len(name)) big-integer steps, whatever the pattern.
"""

from __future__ import annotations

import attrs

SEPARATOR = "/"


@attrs.frozen
class Pattern:
    """A compiled pattern: bit ``i`` stands for "the first ``i`` pattern items are
    matched"; bit ``len(items)`` is acceptance."""

    literal: dict[str, int]  # character → bits of the positions that expect it
    star: int  # positions holding ``*`` (self-loop on any character)
    percent: int  # positions holding ``%`` (self-loop on anything but the separator)
    accept: int
    case_fold_inbox: bool  # the pattern begins with INBOX (case-insensitive, RFC 3501 §5.1)

    def matches(self, name: str) -> bool:
        if self.case_fold_inbox and name[:5].upper() == "INBOX":
            name = "INBOX" + name[5:]
        wild = self.star | self.percent
        state = _close(1, wild)
        lit = self.literal
        for ch in name:
            step = ((state & lit.get(ch, 0)) << 1) | (state & self.star)
            if ch != SEPARATOR:
                step |= state & self.percent
            if not step:
                return False
            state = _close(step, wild)
        return bool(state & self.accept)


def _close(state: int, wild: int) -> int:
    # A wildcard may match nothing: from position i (a wildcard) position i+1 is live
    # too.  Consecutive wildcards were merged by ``compile_pattern``, so one step does.
    return state | ((state & wild) << 1)


def compile_pattern(pattern: str) -> Pattern:
    items: list[str] = []
    for ch in pattern:
        if ch in "*%" and items and items[-1] in "*%":
            # "**", "*%", "%*" are "*"; "%%" is "%".
            items[-1] = "%" if items[-1] == ch == "%" else "*"
            continue
        items.append(ch)
    literal: dict[str, int] = {}
    star = percent = 0
    for i, ch in enumerate(items):
        if ch == "*":
            star |= 1 << i
        elif ch == "%":
            percent |= 1 << i
        else:
            literal[ch] = literal.get(ch, 0) | (1 << i)
    head = pattern[:5]
    fold = head.upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in "/*%")
    if fold and head != "INBOX":
        return compile_pattern("INBOX" + pattern[5:])
    return Pattern(literal, star, percent, 1 << len(items), fold)


def join_reference(reference: str, pattern: str) -> str:
    """RFC 3501 §6.3.8: the reference and the pattern make the full pattern."""
    if pattern.startswith(SEPARATOR) and reference:
        return reference.rstrip(SEPARATOR) + pattern
    return reference + pattern
