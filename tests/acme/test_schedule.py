"""Renewal time (2/3 of the lifetime) and the retry back-off."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.acme.schedule import backoff, renew_at, retry_delay

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_renew_at_two_thirds():
    assert renew_at(T0, T0 + datetime.timedelta(days=90), 2 / 3) == T0 + datetime.timedelta(days=60)


@pytest.mark.parametrize("failures,delay", [(1, 60), (2, 120), (3, 240), (10, 3600), (50, 3600)])
def test_backoff_doubles_up_to_the_cap(failures, delay):
    assert backoff(failures, 60, 3600) == delay


def test_retry_never_waits_past_half_the_remaining_lifetime():
    end = T0 + datetime.timedelta(hours=2)
    assert retry_delay(20, 60, 6 * 3600, T0, end) == 3600
    assert retry_delay(20, 60, 6 * 3600, T0, None) == 6 * 3600


@given(st.integers(1, 200), st.floats(1, 1000), st.floats(1000, 100000))
def test_backoff_is_bounded(failures, lo, hi):
    assert lo <= backoff(failures, lo, hi) <= hi
