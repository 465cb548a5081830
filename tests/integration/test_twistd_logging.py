"""``[log]`` applies under ``twistd --logger mxd.log.twistd_observer mxd`` too (it used to
read only MXD_LOG_LEVEL/MXD_LOG_FORMAT, since twistd sets logging up before the config)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.mxdserver import make_server


def test_log_section_applies_under_twistd(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """level = "warn" with mxd.tap at info, as JSON: the start-up line of mxd.tap is
    written as a JSON object, the listeners' info lines are not."""
    server = make_server(tmp_path, tls_files, extra_config=(
        '[log]\nlevel = "warn"\nformat = "json"\nlevels = { "mxd.tap" = "info" }\n'))
    server.start(env={"MXD_LOG_LEVEL": "", "MXD_LOG_FORMAT": ""},
                 twistd_args=("--logger", "mxd.log.twistd_observer"))
    server.stop()
    lines = server.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    starting = [r for r in records if r["ns"] == "mxd.tap" and "starting" in r["msg"]]
    assert starting and starting[0]["level"] == "info", lines[:20]
    assert not any("listening for" in line for line in lines), lines[:20]


def _smtp_exchange(server: object) -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:  # type: ignore[attr-defined]
        s.ehlo("client.example")
        s.sendmail("someone@remote.example", ["alice@example.test"],
                   b"Subject: log levels\r\n\r\nhello\r\n")


def test_plain_twistd_writes_only_the_configured_levels(tmp_path: Path,
                                                         tls_files: dict[str, Path]) -> None:
    """``twistd -n mxd`` without ``--logger`` keeps twistd's line format but applies
    ``[log]``: at the default level (info) a delivery leaves info lines and no debug
    lines; with ``level = "debug"`` the same delivery leaves debug lines.  One process
    (``workers = 1``): worker processes write their own lines through mxd's observer."""
    for level, want_debug in (("info", False), ("debug", True)):
        base = tmp_path / level
        base.mkdir()
        server = make_server(base, tls_files, extra_config=(
            f'[server]\nworkers = 1\n[log]\nlevel = "{level}"\n'))
        server.start(env={"MXD_LOG_LEVEL": "", "MXD_LOG_FORMAT": ""})
        try:
            _smtp_exchange(server)
        finally:
            server.stop()
        text = server.log_path.read_text(errors="replace")
        assert "#info]" in text, text[-2000:]
        assert ("#debug]" in text) == want_debug, (level, text[-3000:])
