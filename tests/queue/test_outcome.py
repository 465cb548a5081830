"""The pure decision after an attempt: finish, bounce or defer, and which DSN (table tests)."""

from __future__ import annotations

import pytest

from mxd.queue.outcome import Decision, RcptKind, RcptOutcome, Verdict, decide, temporary
from mxd.queue.schedule import RetrySettings
from mxd.smtp.dsn import Action
from mxd.store.queuedb import QueuedMessage, QueuedRecipient

RETRY = RetrySettings(first_delay=100.0, factor=2.0, max_delay=1000.0, jitter=0.0,
                      give_up_after=10_000.0, delay_dsn_after_attempts=3)
ALL = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _rcpt(attempts: int = 0, notify: frozenset[str] | None = None,
          delay_sent: bool = False) -> QueuedRecipient:
    return QueuedRecipient(7, "r@remote.test", "remote.test", notify, None, "inflight",
                           attempts, 0.0, False, None, delay_dsn_sent=delay_sent)


def _message(mail_from: str = "s@example.test", is_dsn: bool = False) -> QueuedMessage:
    return QueuedMessage(1, "q1", mail_from, "b", 10, "7BIT", False, False, False, None, None,
                         None, is_dsn, 0.0, (_rcpt(),))


def _decide(kind: RcptKind, *, attempts: int = 0, notify: frozenset[str] | None = None,
            now: float = 50.0, mail_from: str = "s@example.test", is_dsn: bool = False,
            final: bool = False, peer_dsn: bool = False, delay_sent: bool = False) -> Decision:
    o = RcptOutcome(_rcpt(attempts, notify, delay_sent), kind, 250 if kind == "delivered" else 451,
                    None, "reply", "mx.remote.test", peer_dsn, final)
    return decide(_message(mail_from, is_dsn), [o], now, RETRY, lambda: 0.5)


# (case, outcome kind, keyword arguments, verdict, next attempt, DSN actions)
CASES = [
    ("delivered, no NOTIFY", RcptKind.DELIVERED, {}, Verdict.DELIVERED, None, []),
    ("relayed to a peer without DSN", RcptKind.DELIVERED, {"notify": ALL},
     Verdict.DELIVERED, None, [Action.RELAYED]),
    ("relayed to a peer with DSN: it reports", RcptKind.DELIVERED,
     {"notify": ALL, "peer_dsn": True}, Verdict.DELIVERED, None, []),
    ("delivered locally", RcptKind.DELIVERED, {"notify": ALL, "final": True},
     Verdict.DELIVERED, None, [Action.DELIVERED]),
    ("permanent: failure DSN by default", RcptKind.PERMANENT, {}, Verdict.BOUNCED, None,
     [Action.FAILED]),
    ("permanent, NOTIFY=NEVER", RcptKind.PERMANENT, {"notify": frozenset({"NEVER"})},
     Verdict.BOUNCED, None, []),
    ("permanent, null sender", RcptKind.PERMANENT, {"mail_from": ""}, Verdict.BOUNCED, None, []),
    ("permanent, about a DSN", RcptKind.PERMANENT, {"is_dsn": True}, Verdict.BOUNCED, None, []),
    ("temporary, first attempt", RcptKind.TEMPORARY, {}, Verdict.DEFERRED, 150.0, []),
    ("temporary, third attempt: delayed DSN", RcptKind.TEMPORARY, {"attempts": 2},
     Verdict.DEFERRED, 450.0, [Action.DELAYED]),
    ("temporary, delayed DSN already sent", RcptKind.TEMPORARY,
     {"attempts": 2, "delay_sent": True}, Verdict.DEFERRED, 450.0, []),
    ("temporary past the deadline: gave up", RcptKind.TEMPORARY, {"now": 10_000.0},
     Verdict.BOUNCED, None, [Action.FAILED]),
]


@pytest.mark.parametrize(("case", "kind", "kw", "verdict", "nxt", "actions"), CASES,
                         ids=[c[0] for c in CASES])
def test_decide(case: str, kind: RcptKind, kw: dict[str, object], verdict: Verdict,
                nxt: float | None, actions: list[Action]) -> None:
    """Each row: an outcome in a situation -> verdict, next attempt and DSN actions."""
    d = _decide(kind, **kw)  # type: ignore[arg-type]
    (r,) = d.recipients
    assert r.verdict is verdict
    assert r.next_attempt == nxt and d.next_attempt == nxt
    assert [rep.action for rep in d.reports] == actions
    assert d.finished == ([] if verdict is Verdict.DEFERRED else [7])


def test_gave_up_says_so_and_is_4_4_7() -> None:
    """A temporary failure past the deadline bounces with "gave up after N attempts" and
    4.4.7 when the reply had no enhanced code (RFC 3463 §3.5)."""
    d = _decide(RcptKind.TEMPORARY, now=10_000.0, attempts=4)
    (r,) = d.recipients
    assert r.diagnostic is not None and r.diagnostic.endswith("(gave up after 5 attempts)")
    (rep,) = d.reports
    assert rep.status == "4.4.7" and d.attempts == 5


@pytest.mark.parametrize(("given", "want"), [(None, "4.4.1"), ("5.1.1", "4.1.1"),
                                             ("4.7.5", "4.7.5"), ("", "4.4.1")])
def test_temporary_class(given: str | None, want: str) -> None:
    """RFC 3463 §3.1: a deferral carries a 4.x.y code."""
    assert temporary(given) == want
