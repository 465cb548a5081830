"""Real SOCKS5 proxies on loopback for the integration tests: microsocks and dante (danted).

Each binds a free port on 127.0.0.1, logs to a file in a temp dir (so a test can show that
the connection went through the proxy) and is stopped by its own pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.tools import STARTUP_TIMEOUT, free_port, require_tool


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"{what} did not start: {text[-500:]}") from None
            time.sleep(0.05)


class _Proxy:
    name = "proxy"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"mxd-{self.name}-"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.log_path = self.dir / "log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> _Proxy:
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        _wait_port(self.port, self.proc, self.name, self.log_path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # danted forks worker processes into its own session: signal the group we made
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Microsocks(_Proxy):
    """microsocks, optionally with RFC 1929 username/password (-u/-P)."""

    name = "microsocks"

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.exe = require_tool("microsocks")
        super().__init__()
        self.username = username
        self.password = password

    def argv(self) -> list[str]:
        argv = [self.exe, "-i", "127.0.0.1", "-p", str(self.port)]
        if self.username:
            argv += ["-u", self.username, "-P", self.password or ""]
        return argv

    def connected_to(self, port: int) -> bool:
        """microsocks logs ``client[N] IP: connected to IP:PORT`` per tunnel."""
        return f"connected to 127.0.0.1:{port}" in self.log()


class Dante(_Proxy):
    """danted with no authentication, accepting only loopback clients and destinations."""

    name = "danted"

    def __init__(self) -> None:
        self.exe = require_tool("danted")
        super().__init__()

    def argv(self) -> list[str]:
        conf = self.dir / "danted.conf"
        conf.write_text(f"""\
logoutput: {self.log_path}
internal: 127.0.0.1 port = {self.port}
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
  from: 127.0.0.0/8 to: 0.0.0.0/0
  log: connect disconnect error
}}
socks pass {{
  from: 127.0.0.0/8 to: 127.0.0.0/8
  command: connect
  log: connect disconnect error
}}
socks block {{
  from: 0.0.0.0/0 to: 0.0.0.0/0
  log: connect error
}}
""")
        return [self.exe, "-f", str(conf), "-p", str(self.dir / "danted.pid"), "-N", "1"]

    def connected_to(self, port: int) -> bool:
        """dante logs ``pass(1): tcp/connect ... -> 127.0.0.1.PORT`` per tunnel."""
        return any("pass(" in line and "tcp/connect" in line and f"127.0.0.1.{port}" in line
                   for line in self.log().splitlines())
