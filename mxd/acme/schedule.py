"""When to renew a certificate and how long to wait after a failure (pure)."""

from __future__ import annotations

import datetime


def renew_at(not_before: datetime.datetime, not_after: datetime.datetime,
             fraction: float) -> datetime.datetime:
    """The moment ``fraction`` (2/3 by default) of the certificate's lifetime has passed."""
    return not_before + (not_after - not_before) * fraction


def backoff(failures: int, minimum: float, maximum: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (>= 1): doubling from
    ``minimum``, capped at ``maximum`` (rate limits and CA outages pass with time)."""
    return float(min(maximum, minimum * 2 ** max(0, failures - 1)))


def retry_delay(failures: int, minimum: float, maximum: float,
                now: datetime.datetime, not_after: datetime.datetime | None) -> float:
    """The back-off, but never past the moment the current certificate expires: while a
    CA-issued certificate is running out, keep trying at least every ``minimum`` seconds
    before its end."""
    delay = backoff(failures, minimum, maximum)
    if not_after is not None:
        left = (not_after - now).total_seconds()
        if left > 0:
            delay = min(delay, max(minimum, left / 2))
    return delay
