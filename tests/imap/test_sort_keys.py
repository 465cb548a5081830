"""SORT orders by the stored keys' octets (mxd.imap.sortcmd): the same order as the
SortData comparison of RFC 5256 §3 / RFC 5957 §3 keys (i;unicode-casemap strings)."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from mxd.imap import summary
from tests.imap.helpers import Conn, make_store

SUBJECTS = ["ab", "abc", "", "Ab", "abd", "Éa", "ea", "zz", "Ωmega", "\u00ff", "a\u0301b", "aß"]
NAMES = ["Zoë <z@x.test>", "ab <ab@x.test>", "abc <abc@x.test>", "<a@x.test>", "",
         "=?utf-8?q?=C3=89mile?= <e@x.test>", "Ab <AB@x.test>"]


def _conn() -> Conn:
    store, acc = make_store()
    summary.register(store)
    rnd = random.Random(5)
    for i in range(60):
        hdr = f"Subject: {rnd.choice(SUBJECTS)}\r\n"
        frm = rnd.choice(NAMES)
        if frm:
            hdr += f"From: {frm}\r\nTo: {rnd.choice(NAMES) or 'x@y.test'}\r\n"
        if rnd.random() < 0.8:
            hdr += f"Date: {1 + i % 3:d} Feb 2024 10:00:00 +0000\r\n"
        store.put(acc, "INBOX", (hdr + "\r\n" + "x" * rnd.randint(1, 9) + "\r\n").encode())
    c = Conn(store)
    c.login()
    c.select()
    return c


CRITERIA = [" ".join(p) for n in (1, 2) for p in itertools.permutations(
    ["SUBJECT", "REVERSE SUBJECT", "FROM", "REVERSE FROM", "DISPLAYFROM", "REVERSE DISPLAYTO",
     "DATE", "REVERSE SIZE", "ARRIVAL", "CC"], n)]


@pytest.mark.parametrize("criteria", CRITERIA)
def test_octet_keys_sort_as_sortdata(criteria: str) -> None:
    c = _conn()
    fast = c.cmd(f"s SORT RETURN (ALL) ({criteria}) UTF-8 ALL")
    # RETURN (UPDATE) keeps SortData per message (RFC 5267 §4): the reference order.
    slow = c.cmd(f"u SORT RETURN (ALL UPDATE) ({criteria}) UTF-8 ALL")
    order = re.search(rb"ALL ([\d,:]+)", fast)
    ref = re.search(rb"ALL ([\d,:]+)", slow)
    assert order is not None and ref is not None, (fast, slow)
    assert order.group(1) == ref.group(1)
