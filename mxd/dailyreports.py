"""What the daily report senders share (DMARC aggregate reports, RFC 7489 §7.2; SMTP TLS
reports, RFC 8460 §4.1): the run after 00:00 UTC with a random delay, and queueing one
report mail.

Both kinds of report cover a whole UTC day and are sent soon after it ends; the random delay
spreads the load that every sender's midnight puts on the receivers (RFC 8460 §4.1 asks for
it: "should ... add a random delay").
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

_log = Logger()


def next_daily_run(now: float, random: Callable[[], float], max_jitter: float) -> float:
    """The next 00:00 UTC after ``now`` plus ``random() * max_jitter`` seconds."""
    midnight = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0,
                                                       microsecond=0) + timedelta(days=1)
    return midnight.timestamp() + random() * max_jitter


def utc_day_start(now: float) -> float:
    """00:00 UTC of the day ``now`` is in."""
    return datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0,
                                                    microsecond=0).timestamp()


class DailyTimer:
    """Calls ``job()`` every day after 00:00 UTC plus jitter, on ``clock``, until stopped."""

    def __init__(self, clock: Any, job: Callable[[], Coroutine[Any, Any, Any]], name: str, *,
                 random: Callable[[], float], max_jitter: float) -> None:
        self.clock = clock
        self.job = job
        self.name = name
        self.random = random
        self.max_jitter = max_jitter
        self._call: Any = None

    def start(self) -> None:
        now = self.clock.seconds()
        delay = max(0.0, next_daily_run(now, self.random, self.max_jitter) - now)
        self._call = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        d = Deferred.fromCoroutine(self.job())
        d.addErrback(lambda f: _log.failure("{name} failed", f, name=self.name))
        self.start()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


async def queue_report_mail(queue: Any, data: bytes, *, from_addr: str, to_addr: str,
                            now: float, sign: Callable[[bytes, float], bytes] | None,
                            tls_required_no: bool = False, tls_report: bool = False) -> str:
    """Queue a generated report mail to one address: CRLF line ends, DKIM-signed when
    ``sign`` is given, no DSN ever asked for (NOTIFY=NEVER: a report about a report helps
    nobody).  ``tls_required_no``: the mail carries ``TLS-Required: No`` (RFC 8689 §5);
    ``tls_report``: the deliveries record no TLS results of their own (RFC 8460 §3)."""
    from mxd.store.interfaces import OutboundMessage, OutboundRecipient

    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if sign is not None:
        data = sign(data, now)
    return str(await queue.enqueue_bytes(data, OutboundMessage(
        mail_from=from_addr, recipients=(OutboundRecipient(to_addr, frozenset({"NEVER"})),),
        size=len(data), tls_required_no=tls_required_no, tls_report=tls_report)))
