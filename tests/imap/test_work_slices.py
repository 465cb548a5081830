"""Long FETCH and SEARCH commands give the reactor back between work slices, so one
client's big request does not stall other sessions (DESIGN.md contracts)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.internet.task import Clock

from mxd.imap.server import IMAPFactory, IMAPServerSettings
from tests.imap.fakes import FakeSASL
from tests.imap.helpers import MSG1, MSG2, Conn, make_store

N = 200


class TickingClock(Clock):
    """Every reading of the time is 1 ms later than the one before; counts the calls
    scheduled with no delay (a command giving the reactor back)."""

    yields = 0

    def seconds(self) -> float:
        self.rightNow += 0.001
        return self.rightNow

    def callLater(self, delay: float, *a: Any, **kw: Any) -> Any:
        if delay == 0:
            self.yields += 1
        return super().callLater(delay, *a, **kw)


def _setup(clock: Clock) -> tuple[Conn, Conn]:
    store, acc = make_store()
    for i in range(N):
        store.put(acc, "INBOX", MSG1 if i % 2 else MSG2)
    factory = IMAPFactory(implicit_tls=True, settings=IMAPServerSettings(work_slice=0.004),
                          store=store, accounts=store, sasl=FakeSASL({"alice": "s3cret"}),
                          tls=None, clock=clock, hostname="mx.example.test")
    a = Conn(store, factory=factory, clock=clock)
    b = Conn(store, factory=factory, clock=clock)
    for c in (a, b):
        c.login()
        c.select()
    return a, b


@pytest.mark.parametrize("command", ["FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[HEADER])",
                                     "SEARCH TEXT bob", "UID SEARCH SUBJECT hello",
                                     "SORT (SUBJECT REVERSE ARRIVAL) UTF-8 ALL",
                                     "UID SORT (DISPLAYFROM) UTF-8 ALL",
                                     "THREAD REFERENCES UTF-8 ALL",
                                     "UID THREAD ORDEREDSUBJECT UTF-8 ALL",
                                     # RFC 9394 PARTIAL, RFC 8514, RFC 5032, RFC 7377:
                                     "UID SEARCH RETURN (PARTIAL -1:-10) SAVEDSINCE 1-Jan-2020",
                                     "SORT RETURN (PARTIAL 1:5 COUNT) (SUBJECT) UTF-8 "
                                     "SAVEDBEFORE 1-Jan-2100",
                                     "SEARCH YOUNGER 100000000",
                                     "ESEARCH IN (personal) RETURN (COUNT) SUBJECT hello"])
def test_long_command_yields_and_others_are_served(command: str) -> None:
    """The command is not finished in one go; while it waits, another session's command
    is answered; resumed, it completes with exactly the unsliced output."""
    unsliced, _ = _setup(Clock())
    expected = unsliced.cmd("F " + command)
    assert b"F OK" in expected

    clock = TickingClock()
    a, b = _setup(clock)
    out = a.cmd("F " + command)
    assert b"F OK" not in out
    assert b"N OK" in b.cmd("N NOOP")  # served while F is paused
    for _ in range(N):
        clock.advance(0)
        out += a.out()
    assert b"F OK" in out
    assert clock.yields >= 2  # the clock ticks 1 ms per reading; slices are 4 ms
    assert out == expected
    if command.startswith("FETCH"):
        assert len(re.findall(rb"^\* \d+ FETCH", out, re.M)) == N
