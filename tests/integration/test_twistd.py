"""`twistd mxd` and `mxd localserve` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.mxdserver import admin_headers
from tests.integration.tools import STARTUP_TIMEOUT, free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _config(tmp_path: Path, tls_files: dict[str, Path], body: str) -> Path:
    p = tmp_path / "mxd.toml"
    p.write_text(f'''hostname = "mx.example.test"
data_dir = "{tmp_path / "data"}"
[tls]
cert = "{tls_files["cert"]}"
key = "{tls_files["key"]}"
[domains]
names = ["example.test"]
{body}''')
    return p


def _twistd(config: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "mxd",
                             "--config", str(config)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_port(port: int, proc: subprocess.Popen[str], timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"port {port} never opened")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[smtp]\nmax_recipents = 3\n", "smtp.max_recipents: unknown key"),
        ("[smtp]\nmax_recipients = \"three\"\n", "smtp.max_recipients: expected an integer"),
        ('[[listeners]]\nprotocol = "imaps"\nport = 9\ncert = "/nonexistent/cert.pem"\n',
         "listeners[0].cert: file not found: /nonexistent/cert.pem"),
    ],
)
def test_twistd_refuses_invalid_config(tmp_path, tls_files, body, expected):
    """twistd exits non-zero before binding anything, naming the file and key path."""
    cfg = _config(tmp_path, tls_files, body)
    r = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "mxd", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode != 0
    assert f"{cfg}: {expected}" in r.stdout + r.stderr
    assert not (tmp_path / "data").exists(), "nothing may be created for an invalid config"


def test_twistd_refuses_port_in_use(tmp_path, tls_files):
    """A port already in use is reported with the listener and port, exit non-zero."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = _config(tmp_path, tls_files, f'[[listeners]]\nprotocol = "admin"\nport = {port}\n')
        r = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "mxd", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode != 0
    assert f"listeners[0]: cannot listen for admin on 127.0.0.1 port {port}" in r.stdout + r.stderr


def test_twistd_starts_serves_and_stops_cleanly(tmp_path, tls_files):
    """With a valid config the admin page answers, and SIGTERM shuts the server down."""
    port = free_port()
    cfg = _config(tmp_path, tls_files, f'[[listeners]]\nprotocol = "admin"\nport = {port}\n')
    proc = _twistd(cfg, tmp_path)
    try:
        _wait_port(port, proc)
        login = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "admin password" in login and "mx.example.test" not in login
        req = urllib.request.Request(f"http://127.0.0.1:{port}/",
                                     headers=admin_headers(tmp_path / "data"))
        page = urllib.request.urlopen(req, timeout=5).read().decode()
        assert "mx.example.test" in page and f"admin:{port}" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # twistd re-raises the terminating signal after a clean shutdown (POSIX convention).
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "stopping" in out and "Server Shut Down." in out
    assert "Traceback" not in out
    assert (tmp_path / "data" / "mxd.sqlite3").exists() or any((tmp_path / "data").iterdir())


def test_localserve_prints_ports_and_credentials_and_keeps_state(tmp_path):
    """`mxd localserve` starts with no set-up, prints ports and credentials (the admin web
    takes the same password), and restarts on the same state directory with the account
    still there."""
    offset = free_port() % 20000 + 20000 - 1025
    d = tmp_path / "ls"
    for _ in range(2):
        proc = subprocess.Popen([str(BIN / "mxd"), "localserve", "--dir", str(d),
                                 "--port-offset", str(offset)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        try:
            _wait_port(1080 + offset, proc)
            import http.client

            c = http.client.HTTPConnection("127.0.0.1", 1080 + offset, timeout=10)
            c.request("POST", "/login", body="password=mxdmxdmxd",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
            resp = c.getresponse()
            assert resp.status == 302 and "mxd_admin=" in (resp.getheader("set-cookie") or "")
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "mxd@localhost" in out and "mxdmxdmxd" in out
        assert f"127.0.0.1:{1025 + offset}" in out and f"127.0.0.1:{1993 + offset}" in out
        assert (d / "ca.pem").exists()
    r = subprocess.run([str(BIN / "mxd"), "account", "list", "--config", str(d / "mxd.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["mxd@localhost", "mxd@localhost"]


def test_metrics_endpoint_when_enabled(tmp_path, tls_files):
    """With [metrics] enabled, the admin listener serves Prometheus text at /metrics."""
    port = free_port()
    cfg = _config(tmp_path, tls_files, "[metrics]\nenabled = true\n"
                  f'[[listeners]]\nprotocol = "admin"\nport = {port}\n')
    proc = _twistd(cfg, tmp_path)
    try:
        _wait_port(port, proc)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers=admin_headers(tmp_path / "data"))
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.headers["content-type"].startswith("text/plain")
            body = resp.read().decode()
        assert f'mxd_build_info{{version="{__import__("mxd").__version__}"}} 1.0' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_store_that_cannot_open_stops_the_server_with_status_1(tmp_path, tls_files):
    """A database from a newer mxd (schema version beyond this code) makes twistd log the
    reason and exit 1 instead of running without a store."""
    import sqlite3

    port = free_port()
    cfg = _config(tmp_path, tls_files, f'[[listeners]]\nprotocol = "admin"\nport = {port}\n')
    proc = _twistd(cfg, tmp_path)
    tables: list[str] = []
    try:
        _wait_port(port, proc)
        # The listeners bind before the store has finished opening: wait (bounded) until
        # the schema is there, so the stop below does not race the first start.
        deadline = time.monotonic() + 30
        while not any("version" in t for t in tables) and time.monotonic() < deadline:
            time.sleep(0.05)
            if (tmp_path / "data" / "mxd.sqlite3").exists():
                with sqlite3.connect(tmp_path / "data" / "mxd.sqlite3", timeout=5) as db:
                    tables = [r[0] for r in
                              db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    db = sqlite3.connect(tmp_path / "data" / "mxd.sqlite3")
    version_table = next(t for t in tables if "version" in t)
    db.execute(f"UPDATE {version_table} SET version = version + 1000")
    db.commit()
    db.close()
    proc = _twistd(cfg, tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "cannot open the store" in out


def test_admin_off_loopback_speaks_https_only(tmp_path, tls_files, capsys):
    """An admin listener on all addresses serves HTTPS only: plain HTTP gets no answer,
    the session cookie is Secure, Host must be the configured name (127.0.0.1 is not
    enough off loopback), and the CLI's wake-up call reaches it with the local token."""
    import http.client
    import ssl

    from mxd.cli import _wake_server
    from mxd.config import load_config

    port = free_port()
    cfg = _config(tmp_path, tls_files, f'[[listeners]]\nprotocol = "admin"\naddress = "0.0.0.0"'
                  f"\nport = {port}\n")
    r = subprocess.run([str(BIN / "mxd"), "admin", "password", "--password-stdin", "--config",
                        str(cfg)], input="adm1n-pass\n", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    proc = _twistd(cfg, tmp_path)
    try:
        _wait_port(port, proc)
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/login")
            plain.getresponse().read()
        ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
        ctx.check_hostname = False

        def https(method: str, path: str, host: str, body: str | None = None,
                  headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
            c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
            c.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            return c.getresponse()

        assert https("GET", "/login", "127.0.0.1").status == 421
        assert https("GET", "/login", "mx.example.test").status == 200
        resp = https("POST", "/login", "mx.example.test", "password=adm1n-pass",
                     {"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status == 302
        cookie = resp.getheader("set-cookie") or ""
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        capsys.readouterr()
        _wake_server(load_config(cfg))
        assert "did not answer" not in capsys.readouterr().err  # a 401 would print it
        assert https("GET", "/api/queue", "mx.example.test").status == 401
        assert https("GET", "/api/queue", "mx.example.test",
                     headers=admin_headers(tmp_path / "data")).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
