"""The `mxd` admin command, run as a user runs it (a subprocess per command)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mxd.sasl.credentials import ScramSecret, StoredSecrets

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"


@pytest.fixture
def config(tmp_path: Path, tls_files: dict[str, Path]) -> Path:
    p = tmp_path / "mxd.toml"
    p.write_text(f'''hostname = "mx.example.test"
data_dir = "data"
[tls]
cert = "{tls_files["cert"]}"
key = "{tls_files["key"]}"
[domains]
names = ["example.test"]
[auth]
scram_iterations = 4096
''')
    return p


def mxd(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mxd"), *args, "--config", str(config)], input=stdin,
                          capture_output=True, text=True, timeout=60)


def _secrets(config: Path, name: str) -> StoredSecrets:
    db = sqlite3.connect(config.parent / "data" / "mxd.sqlite3")
    try:
        (text,) = db.execute("SELECT secrets FROM accounts WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    return StoredSecrets.from_text(text)


def _scram_ok(secret: ScramSecret, password: str) -> bool:
    return ScramSecret.derive(secret.hash_name, password, secret.iterations, secret.salt) == secret


def test_account_lifecycle_and_no_plaintext(config):
    """add, list, passwd, del: the SCRAM keys verify the password, the old one stops working
    after passwd, and no file in the data directory contains the password."""
    r = mxd(config, "account", "add", "alice", "--address", "alice@example.test",
            "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert "added account alice" in r.stdout
    r = mxd(config, "account", "list")
    assert r.stdout.split() == ["alice", "alice@example.test"]

    s = _secrets(config, "alice")
    assert set(s.scram) == {"SHA-1", "SHA-256"}
    assert all(_scram_ok(sec, PASSWORD) for sec in s.scram.values())
    assert not _scram_ok(s.scram["SHA-256"], PASSWORD + "x")
    assert s.password.verify(PASSWORD) and not s.password.verify("wrong")
    for f in (config.parent / "data").rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f

    new = "another long password"
    r = mxd(config, "account", "passwd", "alice", "--password-stdin", stdin=new + "\n")
    assert r.returncode == 0, r.stderr
    s = _secrets(config, "alice")
    assert _scram_ok(s.scram["SHA-1"], new) and not _scram_ok(s.scram["SHA-1"], PASSWORD)

    r = mxd(config, "account", "del", "alice")
    assert r.returncode == 0, r.stderr
    assert mxd(config, "account", "list").stdout == ""


def test_account_errors_are_clear(config):
    """Duplicate accounts, short passwords and unknown accounts give one-line errors."""
    assert mxd(config, "account", "add", "bob", stdin=PASSWORD + "\n").returncode == 0
    r = mxd(config, "account", "add", "bob", stdin=PASSWORD + "\n")
    assert r.returncode == 1 and r.stderr.startswith("mxd: ") and "Traceback" not in r.stderr
    r = mxd(config, "account", "add", "carol", stdin="short\n")
    assert r.returncode == 1 and "too short" in r.stderr
    r = mxd(config, "account", "passwd", "nobody", stdin=PASSWORD + "\n")
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_password_is_never_taken_from_argv(config):
    """There is no option that puts a password on the command line."""
    r = mxd(config, "account", "add", "dave", "--password", PASSWORD)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_config_check_reports_ok_and_errors(config, tmp_path):
    """`mxd config check` prints OK for a valid file and the key path for an invalid one."""
    r = mxd(config, "config", "check")
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace("[auth]", "[auth]\nbogus = 1"))
    r = mxd(bad, "config", "check")
    assert r.returncode == 1 and f"{bad}: auth.bogus: unknown key" in r.stderr


def test_version():
    """`mxd version` prints the package version."""
    import mxd as pkg

    r = subprocess.run([str(BIN / "mxd"), "version"], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == f"mxd {pkg.__version__}"


@pytest.mark.integration
def test_dns_lookup_uses_config_resolver(config, dns_lab):
    """`mxd dns lookup --config` asks the config's [resolver] nameservers, trusting their AD
    bit as the server would (loopback), and reports a signed name as authentic."""
    host, port = dns_lab.resolver_address
    text = config.read_text() + f'[resolver]\nnameservers = ["{host}:{port}"]\n'
    config.write_text(text)
    r = subprocess.run([str(BIN / "mxd"), "dns", "lookup", "A", "mx.example.test", "--config",
                        str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "127.0.0.1" in r.stdout and "authentic: yes" in r.stdout


def test_dmarc_reports_command(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`mxd dmarc reports` lists the stored reports (text and --json)."""
    import gzip
    import json

    from mxd.cli import main
    from mxd.msgauth.reportstore import ReportStore
    from tests.msgauth.test_dmarcreport import _mail, _xml

    cfg = tmp_path / "mxd.toml"
    cfg.write_text(f'hostname = "mx.example.org"\ndata_dir = "{tmp_path / "data"}"\n')
    assert main(["dmarc", "reports", "--config", str(cfg)]) == 0
    assert "no DMARC aggregate reports" in capsys.readouterr().out
    ReportStore(tmp_path / "data" / "dmarc" / "incoming").ingest(
        _mail(gzip.compress(_xml("cli-1"))), 1.0, "192.0.2.1")
    assert main(["dmarc", "reports", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "example.com  from mx.example.org" in out and "4 messages, 3 passed DMARC" in out
    assert main(["dmarc", "reports", "--json", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["report_id"] == "cli-1"
