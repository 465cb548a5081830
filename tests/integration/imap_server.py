"""Fixture: an IMAP server process (tests/integration/_imap_harness.py) on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tools import free_port

ROOT = Path(__file__).resolve().parents[2]


class IMAPServer:
    user = "alice@example.test"
    password = "s3cret-pass"
    user2 = "bob@example.test"
    password2 = "b0b-password"

    def __init__(self, base: Path, tls_files: dict[str, Path]) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ca_file = tls_files["ca"]
        self.tls_files = tls_files
        self.ports = {"imap": free_port(), "imaps": free_port(), "imap_tls12": free_port(),
                      "smtp": free_port()}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ready = self.data_dir / "ready"
        if ready.exists():
            ready.unlink()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration._imap_harness", str(self.data_dir),
             str(self.tls_files["cert"]), str(self.tls_files["key"]), str(self.ports["imap"]),
             str(self.ports["imaps"]), str(self.ports["imap_tls12"]), self.user, self.password,
             self.user2, self.password2],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.base / "stderr.log", "ab"),
            env={**os.environ, "PYTHONPATH": str(ROOT),
                 "IMAP_HARNESS_SMTP_PORT": str(self.ports["smtp"])})
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("IMAP harness did not start: "
                                   + (self.base / "stderr.log").read_text()[-2000:])
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory: pytest.TempPathFactory,
                tls_files: dict[str, Path]) -> Iterator[IMAPServer]:
    srv = IMAPServer(tmp_path_factory.mktemp("imap"), tls_files)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
