"""Incoming TLS reports at a running `twistd mxd`: a report mailed over SMTP (smtplib) to
[tlsrpt] report_addresses is delivered, stored, listed by `mxd tlsrpt list` and served by
GET /api/tlsrpt/reports."""

from __future__ import annotations

import json
import smtplib
import time
import urllib.request
from pathlib import Path

from tests.integration.mxdserver import MxdServer, make_server
from tests.tlsrpt.test_incoming import _ours


def test_incoming_tls_report_listed_by_cli_and_admin_api(tmp_path: Path,
                                                         tls_files: dict[str, Path]) -> None:
    (tmp_path / "m").mkdir()
    server = make_server(tmp_path / "m", tls_files, extra_config=(
        f'[tlsrpt]\nreport_addresses = ["{MxdServer.user}"]\n'))
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.sendmail("postmaster@a.example", [MxdServer.user], _ours())
        deadline = time.monotonic() + 10
        while True:
            out = server.mxd("tlsrpt", "list")
            if out.returncode == 0 and "mx2.b.example" in out.stdout:
                break
            assert time.monotonic() < deadline, (out.stdout, out.stderr)
            time.sleep(0.1)
        assert "mx2.b.example (tlsa): 0 successful, 2 failed [validation-failure 2]" in out.stdout
        url = f"http://127.0.0.1:{server.ports['admin']}/api/tlsrpt/reports"
        req = urllib.request.Request(url, headers=server.admin_headers())
        with urllib.request.urlopen(req, timeout=10) as r:
            [listed] = json.loads(r.read())
        assert listed["organization"] == "Example A"
        req = urllib.request.Request(f"{url}/{listed['id']}", headers=server.admin_headers())
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["policies"][0]["failed"] == 2
    finally:
        server.stop()
