"""A real mxd process for integration tests: ``twistd -n mxd --config <generated toml>``.

The fixture ``mxd_server`` writes a config with every listener on free loopback ports
(plus TLS 1.2-capped submission and IMAP listeners, for tls-unique), creates accounts with
the real ``mxd account add`` command, starts twistd, and waits until every port accepts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tools import STARTUP_TIMEOUT, free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
_WORKER_SERVING = re.compile(rb"worker (\d+) serving \d+ listener")

PROTOCOLS = {
    "smtp": ("smtp", None),
    "submission": ("submission", None),
    "submissions": ("submissions", None),
    "imap": ("imap", None),
    "imaps": ("imaps", None),
    "submission_tls12": ("submission", "TLSv1.2"),
    "imap_tls12": ("imap", "TLSv1.2"),
    "admin": ("admin", None),
    "webmail": ("webmail", None),
}


def admin_headers(data_dir: Path) -> dict[str, str]:
    """``Authorization: Bearer`` with the local admin token of the server on ``data_dir``."""
    return {"Authorization": "Bearer " + (data_dir / "admin.token").read_text().strip()}


class MxdServer:
    """One mxd instance in a temp directory."""

    user = "alice@example.test"
    password = "s3cret-pass"
    user2 = "bob@example.test"
    password2 = "b0b-password"

    def __init__(self, base: Path, tls_files: dict[str, Path], extra_config: str = "",
                 resolver: tuple[str, int] | None = None) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.config_path = base / "mxd.toml"
        self.log_path = base / "mxd.log"
        self.ca_file = tls_files["ca"]
        self.tls_files = tls_files
        self.ports = {name: free_port() for name in PROTOCOLS}
        self.extra_config = extra_config
        self.resolver = resolver
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config()

    def write_config(self) -> None:
        listeners = []
        for name, (proto, maxv) in PROTOCOLS.items():
            listeners.append(f'[[listeners]]\nprotocol = "{proto}"\naddress = "127.0.0.1"\n'
                             f"port = {self.ports[name]}\n"
                             + (f'max_tls_version = "{maxv}"\n' if maxv else ""))
        ns = f"{self.resolver[0]}:{self.resolver[1]}" if self.resolver else "127.0.0.1:1"
        self.config_path.write_text(f'''
hostname = "mx.example.test"
data_dir = "{self.data_dir}"
[tls]
cert = "{self.tls_files["cert"]}"
key = "{self.tls_files["key"]}"
[domains]
names = ["example.test"]
[resolver]
nameservers = ["{ns}"]
timeout = 1.0
{self.extra_config}
''' + "\n".join(listeners))

    def mxd(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``mxd`` CLI against this instance's config."""
        return subprocess.run(
            [str(VENV_BIN / "mxd"), *args, "--config", str(self.config_path)],
            input=stdin, capture_output=True, text=True, timeout=60, cwd=self.base)

    def admin_headers(self) -> dict[str, str]:
        """The CLI's credential for the admin API (the server writes it at start-up)."""
        return admin_headers(self.data_dir)

    def add_account(self, name: str, password: str, *addresses: str) -> None:
        args = ["account", "add", name, "--password-stdin"]
        for a in addresses:
            args += ["--address", a]
        r = self.mxd(*args, stdin=password + "\n")
        assert r.returncode == 0, r.stderr

    def start(self, timeout: float = STARTUP_TIMEOUT, env: dict[str, str] | None = None,
              twistd_args: tuple[str, ...] = ()) -> None:
        """Start twistd (``env``: more environment variables, ``twistd_args``: more
        options of twistd itself, e.g. ``--logger``) and wait for every port and, with
        ``[server] workers``, for every worker process to serve.

        The main process binds every port before it starts the workers, so an open port
        does not mean that anything answers yet: on a loaded machine a worker took 6 s
        to import and open the store, and a test's first connection waited (and its
        client's timeout ran) in the listen queue meanwhile.  ``timeout`` is a bound for
        a start that fails, generous because the machine may be shared.

        A port picked by ``free_port`` can be taken by some other socket (an outgoing
        connection's ephemeral port, another test run) before twistd binds it; then the
        start is retried on fresh ports, at most three times."""
        for attempt in range(3):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start(timeout, env, twistd_args)
                return
            except RuntimeError:
                with open(self.log_path, "rb") as f:
                    f.seek(offset)
                    lost_race = b"Address already in use" in f.read()
                if not lost_race or attempt == 2:
                    raise
                self.ports = {name: free_port() for name in PROTOCOLS}
                self.write_config()

    def _start(self, timeout: float, env: dict[str, str] | None,
               twistd_args: tuple[str, ...]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", *twistd_args, "mxd",
             "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.base, env=env)
        offset = self.log_path.stat().st_size
        deadline = time.monotonic() + timeout
        pending = set(self.ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mxd exited with {self.proc.returncode}:\n{self.log_tail()}")
            for name in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", self.ports[name]), timeout=0.5).close()
                    pending.discard(name)
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mxd did not listen on {sorted(pending)}:\n{self.log_tail()}")
            if pending:
                time.sleep(0.05)
        self._wait_for_workers(offset, deadline, env)

    def _wait_for_workers(self, offset: int, deadline: float, env: dict[str, str]) -> None:
        """Poll the log (from ``offset``) until each worker has said it serves (at info
        level, from mxd.worker: not when the test's [log] settings leave that out)."""
        from mxd.config import load_config

        cfg = load_config(self.config_path)
        expected = cfg.server.worker_count()
        level = env.get("MXD_LOG_LEVEL") or next(
            (cfg.log.levels[ns] for ns in ("mxd.worker", "mxd") if ns in cfg.log.levels),
            cfg.log.level)
        if expected <= 1 or level not in ("trace", "debug", "info"):
            return
        assert self.proc is not None
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                serving = set(_WORKER_SERVING.findall(f.read()))
            if len(serving) >= expected:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"mxd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{expected - len(serving)} of {expected} workers did not "
                                   f"start serving:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self.log.close()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self.log.close()
        self.proc = None


def make_server(base: Path, tls_files: dict[str, Path], **kw: object) -> MxdServer:
    server = MxdServer(base, tls_files, **kw)  # type: ignore[arg-type]
    server.add_account(MxdServer.user, MxdServer.password, MxdServer.user)
    server.add_account(MxdServer.user2, MxdServer.password2, MxdServer.user2)
    return server


@pytest.fixture
def mxd_server(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[MxdServer]:
    """A running mxd with accounts alice@example.test and bob@example.test."""
    server = make_server(tmp_path, tls_files)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mxd_server_factory(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[object]:
    """Call with ``extra_config=...``/``resolver=(host, port)`` to get a started server."""
    servers: list[MxdServer] = []

    def factory(**kw: object) -> MxdServer:
        base = tmp_path / f"mxd{len(servers)}"
        base.mkdir()
        s = make_server(base, tls_files, **kw)
        s.start()
        servers.append(s)
        return s

    try:
        yield factory
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def mxd_server_module(tmp_path_factory: pytest.TempPathFactory,
                      tls_files: dict[str, Path]) -> Iterator[MxdServer]:
    """One running mxd shared by the tests of a module (for tests that tolerate state)."""
    server = make_server(tmp_path_factory.mktemp("mxd"), tls_files)
    server.start()
    try:
        yield server
    finally:
        server.stop()
