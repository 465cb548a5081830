"""POST /api/tlsrpt/send?day=YYYY-MM-DD: the running server reports a chosen UTC day now
(what ``mxd tlsrpt send --day`` calls with the local token)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from twisted.internet.defer import succeed

from mxd.admin.web import admin_site
from mxd.tlsrpt.cli import _day
from tests.admin.test_auth import Admin


class _Reporter:
    def __init__(self) -> None:
        self.days: list[float] = []

    def report_day(self, day: float):  # type: ignore[no-untyped-def]
        self.days.append(day)
        return succeed((2, 3))


def _admin(tmp_path: Path, hashed: str, reporter: object) -> Admin:
    a = Admin(tmp_path, hashed)
    a.ctx.queue = object()  # the API tree exists only with a queue
    a.ctx.tls_reporter = reporter
    a.site = admin_site(a.ctx)
    return a


def test_send_reports_the_day_with_the_local_token(tmp_path, hashed):
    reporter = _Reporter()
    admin = _admin(tmp_path, hashed, reporter)
    path = "/api/tlsrpt/send?day=2026-12-04"
    assert admin.request("POST", path)[0] == 401  # no token, no session
    assert reporter.days == []
    auth = {"Authorization": f"Bearer {admin.token}"}
    code, _, body = admin.request("POST", path, headers=auth)
    assert code == 200
    assert json.loads(body) == {"day": "2026-12-04", "reports": 2, "deliveries": 3}
    assert reporter.days == [datetime(2026, 12, 4, tzinfo=UTC).timestamp()]
    for bad in ("2026-13-01", "yesterday", ""):
        assert admin.request("POST", f"/api/tlsrpt/send?day={bad}", headers=auth)[0] == 400
    assert len(reporter.days) == 1


def test_send_without_a_reporter_is_refused(tmp_path, hashed):
    admin = _admin(tmp_path, hashed, None)
    code, _, body = admin.request("POST", "/api/tlsrpt/send?day=2026-12-04",
                                  headers={"Authorization": f"Bearer {admin.token}"})
    assert code == 409 and b"[tlsrpt] send" in body


@pytest.mark.parametrize("text", ["2026-12-4", "2026/12/04", "2026-02-30", "x"])
def test_cli_day_argument_must_be_a_calendar_day(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        _day(text)
    assert _day("2026-12-04") == "2026-12-04"
