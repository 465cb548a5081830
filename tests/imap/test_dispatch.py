"""The IMAP command table and the store-error answers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from mxd.imap.server import store_error_reply
from mxd.store.interfaces import (
    CannotDeleteInbox,
    InvalidFlag,
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    NoSuchMailbox,
    QuotaExceeded,
    StoreError,
    StoreUnavailable,
)


def test_table_is_complete_without_importing_the_handlers_first() -> None:
    """The table is a literal of mxd.imap.commands, not filled by an import side effect."""
    code = ("import mxd.imap.server as s, mxd.imap.commands as c; "
            "assert s.COMMANDS is c.COMMANDS; print(len(s.COMMANDS))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 39


@pytest.mark.parametrize(("error", "status", "code"), [
    (NoSuchMailbox("x"), "NO", "NONEXISTENT"),
    (MailboxExists("x"), "NO", "ALREADYEXISTS"),
    (QuotaExceeded("x"), "NO", "OVERQUOTA"),
    (MailboxHasChildren("x"), "NO", "HASCHILDREN"),
    (CannotDeleteInbox("x"), "NO", "CANNOT"),
    (InvalidMailboxName("empty hierarchy level in 'a//b'"), "NO", "CANNOT"),
    (InvalidFlag("bad flag"), "NO", "CANNOT"),
    (StoreUnavailable("database unavailable"), "NO", "UNAVAILABLE"),  # RFC 5530 §3
])
def test_store_errors_by_type_and_no_error_log(error: StoreError, status: str, code: str) -> None:
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reply = store_error_reply(error)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (reply.status, reply.code) == (status, code)
    assert not [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]


def test_unexpected_store_error_is_a_server_fault() -> None:
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reply = store_error_reply(StoreError("disk on fire"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (reply.status, reply.code) == ("NO", "SERVERBUG")
    assert [e for e in events if e.get("log_level") == LogLevel.error]
