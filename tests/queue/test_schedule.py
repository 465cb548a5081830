"""Retry schedule (mxd.queue.schedule)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.queue import schedule
from mxd.queue.schedule import RetrySettings, ScheduleError
from mxd.smtp import dsn


def test_default_intervals_double_from_7_5_minutes_up_to_the_cap() -> None:
    """Without jitter the intervals are 7.5, 15, 30, 60, 120, 240 minutes, then stay at 4h."""
    s = RetrySettings(jitter=0)
    minutes = [schedule.base_delay(n, s) / 60 for n in range(1, 9)]
    assert minutes == [7.5, 15, 30, 60, 120, 240, 240, 240]


def test_jitter_comes_from_the_injected_random_source() -> None:
    """random()=0 shortens by the jitter fraction, random()->1 lengthens by it."""
    s = RetrySettings(jitter=0.1)
    assert schedule.retry_delay(1, s, lambda: 0.0) == pytest.approx(450 * 0.9)
    assert schedule.retry_delay(1, s, lambda: 0.5) == pytest.approx(450)
    assert schedule.retry_delay(1, s, lambda: 0.999999) == pytest.approx(450 * 1.1, rel=1e-5)


def test_gives_up_after_the_deadline_and_clamps_the_last_attempt() -> None:
    """The last try is placed at the deadline; after it, next_attempt is None."""
    s = RetrySettings(jitter=0, give_up_after=1000)
    assert schedule.next_attempt(0, 900, 5, s, lambda: 0.5) == 1000
    assert schedule.next_attempt(0, 1000, 6, s, lambda: 0.5) is None


def test_max_attempts_limits_the_number_of_tries() -> None:
    """With max_attempts=3 the third failure gives up."""
    s = RetrySettings(max_attempts=3)
    assert schedule.next_attempt(0, 10, 2, s, lambda: 0.5) is not None
    assert schedule.next_attempt(0, 10, 3, s, lambda: 0.5) is None


def test_default_schedule_spans_five_days() -> None:
    """The planned default attempts end at 5 days and number about 35."""
    plan = schedule.planned_attempts(RetrySettings())
    assert plan[-1] == 5 * 86400
    assert 30 <= len(plan) <= 40


def test_delay_dsn_is_due_once_after_the_configured_attempts() -> None:
    """delay_dsn_due turns true at the threshold and never when already sent or disabled."""
    s = RetrySettings(delay_dsn_after_attempts=2)
    assert not schedule.delay_dsn_due(1, s, False)
    assert schedule.delay_dsn_due(2, s, False)
    assert not schedule.delay_dsn_due(3, s, True)
    assert not schedule.delay_dsn_due(9, RetrySettings(delay_dsn_after_attempts=0), False)


@pytest.mark.parametrize("kwargs", [
    {"first_delay": 0}, {"jitter": 1.5}, {"factor": 0.5}, {"max_attempts": -1},
    {"give_up_after": float("inf")},
])
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    """Nonsense settings raise ScheduleError naming the problem."""
    with pytest.raises(ScheduleError):
        RetrySettings(**kwargs)  # type: ignore[arg-type]


@given(st.integers(1, 200), st.floats(0, 0.999), st.floats(0, 0.9))
def test_delay_is_bounded_by_jittered_cap(attempts: int, r: float, jitter: float) -> None:
    """Every jittered delay lies within the jitter band around the base delay."""
    s = RetrySettings(jitter=jitter)
    d = schedule.retry_delay(attempts, s, lambda: r)
    base = schedule.base_delay(attempts, s)
    assert base * (1 - jitter) - 1e-6 <= d <= base * (1 + jitter) + 1e-6
    assert base <= s.max_delay


def test_format_duration_is_readable() -> None:
    """Durations are given in at most two units."""
    assert dsn.format_duration(7 * 60 + 30) == "7 minutes"
    assert dsn.format_duration(86400 + 3 * 3600 + 60) == "1 day 3 hours"
    assert dsn.format_duration(5) == "5 seconds"
