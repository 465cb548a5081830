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
