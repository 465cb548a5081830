"""SMTP through the real composition: ``twistd -n mxd`` (tests/integration/mxdserver.py).

Skipped until the SMTP listeners are wired into ``mxd.components.listener_factory``;
the same behaviours run against tests/integration/_smtp_harness.py meanwhile."""

from __future__ import annotations

import inspect
import subprocess

import pytest

from tests.integration._smtp_harness import read_mailbox
from tests.integration.mxdserver import MxdServer, mxd_server  # noqa: F401 - fixture
from tests.integration.tools import require_tool

pytestmark = pytest.mark.integration


def _wired() -> bool:
    from mxd import components

    return "smtp_factory" in inspect.getsource(components)


@pytest.fixture(autouse=True)
def _needs_wiring() -> None:
    if not _wired():
        pytest.skip("SMTP listeners are not wired into mxd.components yet")


def test_swaks_submission_lands_in_inbox(mxd_server: MxdServer) -> None:  # noqa: F811
    """swaks over STARTTLS + AUTH PLAIN to twistd mxd: the message is in bob's INBOX with
    a Received field naming ESMTPSA and the TLS version."""
    exe = require_tool("swaks")
    s = mxd_server
    r = subprocess.run(
        [exe, "--server", "127.0.0.1", "--port", str(s.ports["submission"]), "--tls",
         "--tls-verify", "--tls-ca-path", str(s.ca_file), "--tls-sni", "localhost",
         "--auth", "PLAIN", "--auth-user", s.user, "--auth-password", s.password,
         "--from", s.user, "--to", s.user2, "--pipeline", "--header", "Subject: via twistd"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    (msg,) = read_mailbox(s.data_dir, s.user2)
    assert msg["body"].startswith(b"Received: from ")
    assert b"with ESMTPSA (version=TLSv1." in msg["body"]


def test_inbound_open_relay_refused(mxd_server: MxdServer) -> None:  # noqa: F811
    """twistd mxd on port 25 refuses a foreign recipient with 554 5.7.1."""
    exe = require_tool("swaks")
    r = subprocess.run(
        [exe, "--server", "127.0.0.1", "--port", str(mxd_server.ports["smtp"]),
         "--from", "x@remote.example", "--to", "victim@elsewhere.example"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "554 5.7.1" in r.stdout
