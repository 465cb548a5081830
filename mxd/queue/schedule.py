"""Retry schedule of the outbound queue: exponential backoff with jitter (RFC 5321 §4.5.4.1).

RFC 5321 §4.5.4.1 asks for a retry interval of at least 30 minutes and a give-up time of
at least 4-5 days; it also allows a shorter first retry for the common short outage.  mxd's
default: the first retry after 7.5 minutes, each following interval doubled up to a cap of
4 hours, until 5 days after the message was queued (about 35 attempts), or until
``max_attempts`` when that is set.  Each interval is spread by +/- ``jitter`` (a fraction)
so that a burst of deferred messages does not retry in one lump.

A delayed-delivery DSN (RFC 3464 action "delayed") is sent once, after
``delay_dsn_after_attempts`` failed attempts (default 4: about 1h50 after queueing).

Pure functions over numbers (POSIX seconds); the random source is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from mxd.errors import MxdError


class ScheduleError(MxdError):
    """Invalid retry schedule settings."""


def _positive(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ScheduleError(f"retry schedule: {attr.name} must be a positive number, not {value!r}")


@attrs.frozen
class RetrySettings:
    """How often and how long a temporarily failing recipient is retried."""

    first_delay: float = attrs.field(default=450.0, validator=_positive)  # 7.5 minutes
    factor: float = attrs.field(default=2.0, validator=_positive)
    max_delay: float = attrs.field(default=4 * 3600.0, validator=_positive)
    jitter: float = 0.1  # each interval is multiplied by a factor in [1-jitter, 1+jitter]
    give_up_after: float = attrs.field(default=5 * 86400.0, validator=_positive)
    max_attempts: int = 0  # 0: no limit other than give_up_after
    delay_dsn_after_attempts: int = 4  # 0: never send a delayed DSN

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.jitter < 1:
            raise ScheduleError(f"retry schedule: jitter must be in [0, 1), not {self.jitter!r}")
        if self.factor < 1:
            raise ScheduleError("retry schedule: factor must be at least 1")
        if self.max_attempts < 0 or self.delay_dsn_after_attempts < 0:
            raise ScheduleError("retry schedule: attempt counts must not be negative")


def base_delay(attempts: int, settings: RetrySettings) -> float:
    """The interval (before jitter) after ``attempts`` failed attempts (attempts >= 1)."""
    if attempts < 1:
        return 0.0
    exponent = min(attempts - 1, 64)
    return min(settings.first_delay * settings.factor**exponent, settings.max_delay)


def retry_delay(attempts: int, settings: RetrySettings, random: Callable[[], float]) -> float:
    """The jittered interval after ``attempts`` failed attempts; ``random()`` is in [0, 1)."""
    spread = (2 * random() - 1) * settings.jitter
    return base_delay(attempts, settings) * (1 + spread)


def next_attempt(
    queued_at: float, now: float, attempts: int, settings: RetrySettings,
    random: Callable[[], float],
) -> float | None:
    """When to try again after the ``attempts``-th failed attempt at ``now``.

    None means give up: the attempt limit is reached, or the next try would fall after
    ``queued_at + give_up_after``.  The last attempt is placed exactly at the deadline when
    the regular interval would overshoot it, so a message is tried close to the end too.
    """
    if settings.max_attempts and attempts >= settings.max_attempts:
        return None
    deadline = queued_at + settings.give_up_after
    if now >= deadline:
        return None
    return min(now + retry_delay(attempts, settings, random), deadline)


def delay_dsn_due(attempts: int, settings: RetrySettings, already_sent: bool) -> bool:
    """Whether a "delayed" DSN is due after ``attempts`` failed attempts."""
    return (
        not already_sent
        and settings.delay_dsn_after_attempts > 0
        and attempts >= settings.delay_dsn_after_attempts
    )


def give_up_time(queued_at: float, settings: RetrySettings) -> float:
    """The latest time a message queued at ``queued_at`` is tried."""
    return queued_at + settings.give_up_after


def planned_attempts(settings: RetrySettings) -> list[float]:
    """Offsets (seconds after queueing) of every attempt without jitter: for docs and DSN text."""
    times = [0.0]
    t = 0.0
    n = 0
    while True:
        n += 1
        if settings.max_attempts and n >= settings.max_attempts:
            break
        t += base_delay(n, settings)
        if t >= settings.give_up_after:
            times.append(settings.give_up_after)
            break
        times.append(t)
    return times
