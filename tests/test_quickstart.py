"""`mxd quickstart`: complete config, keys and account; never overwrites; re-runs print the
records again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mxd.config import load_config

MXD = str(Path(sys.executable).parent / "mxd")


def _qs(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MXD, "quickstart", "you@Example.test", "--dir", str(tmp),
                           "--data-dir", str(tmp / "data"), "--ip", "192.0.2.10", *extra],
                          capture_output=True, text=True, timeout=120)


def test_quickstart_writes_everything_once_and_reprints_records(tmp_path):
    first = _qs(tmp_path, "--hostname", "mx.example.test")
    assert first.returncode == 0, first.stderr
    cfg = load_config(tmp_path / "mxd.toml")
    assert cfg.hostname == "mx.example.test" and cfg.domains.names == ["example.test"]
    assert cfg.acme.enabled and len(cfg.tls.host_keys) == 2
    assert {li.protocol for li in cfg.listeners} >= {"smtp", "submissions", "imaps", "https",
                                                     "http", "admin"}
    for p in [*cfg.tls.host_keys, tmp_path / "admin-password"]:
        assert os.stat(p).st_mode & 0o777 == 0o600, p
    assert len(cfg.dkim.selectors["example.test"]) == 2
    out = first.stdout
    password = next(ln.split()[1] for ln in out.splitlines() if ln.strip().startswith("password"))
    assert len(password) == 19
    for needle in ("IN MX 10 mx.example.test.", "_25._tcp.mx.example.test. 300 IN TLSA 3 1 1",
                   "_dmarc.example.test.", "_mta-sts.example.test.", "_smtp._tls.example.test.",
                   "_smtp._tls.mx.example.test.", "IN CAA 0 issue", "_submissions._tcp",
                   "autoconfig.example.test.", "_domainkey.example.test.", "k=ed25519",
                   "k=rsa", "publish the new key's TLSA record first"):
        assert needle in out, needle
    assert out.count("IN TLSA 3 1 1") == 2
    accounts = subprocess.run([MXD, "account", "list", "--config", str(tmp_path / "mxd.toml")],
                              capture_output=True, text=True, timeout=60)
    assert "you@example.test" in accounts.stdout

    before = {p: p.read_bytes() for p in tmp_path.glob("*") if p.is_file()}
    again = _qs(tmp_path, "--hostname", "other.example.test")
    assert again.returncode == 0, again.stderr
    assert "exists and was left as it is" in again.stdout
    assert password not in again.stdout
    assert {p: p.read_bytes() for p in before} == before
    recs = [ln for ln in out.splitlines() if " IN " in ln and not ln.startswith(";")]
    assert recs and all(r in again.stdout for r in recs)


def test_dns_records_command_prints_the_same_records(tmp_path):
    assert _qs(tmp_path, "--no-acme").returncode == 0
    r = subprocess.run([MXD, "dns", "records", "example.test", "--config",
                        str(tmp_path / "mxd.toml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "IN MX 10 mail.example.test." in r.stdout and "CAA" not in r.stdout
    bad = subprocess.run([MXD, "dns", "records", "other.test", "--config",
                          str(tmp_path / "mxd.toml")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not in [domains].names" in bad.stderr


def test_bad_address_is_refused_without_writing(tmp_path):
    r = subprocess.run([MXD, "quickstart", "no-at-sign", "--dir", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "expected an address" in r.stderr
    assert not (tmp_path / "x").exists()


def test_hostkeys_next_makes_rollover_keys_and_prints_their_tlsa(tmp_path):
    """`mxd hostkeys next` writes new keys (0600, never overwriting) beside the current
    ones and prints their TLSA records and the steps of the rollover."""
    from mxd.hostkeys import load

    assert _qs(tmp_path, "--no-acme").returncode == 0
    cfg_path = str(tmp_path / "mxd.toml")
    r = subprocess.run([MXD, "hostkeys", "next", "--stamp", "20270101", "--config", cfg_path],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    new = [tmp_path / "hostkey-rsa2048-20270101.pem", tmp_path / "hostkey-ecdsap256-20270101.pem"]
    for p in new:
        assert os.stat(p).st_mode & 0o777 == 0o600
        assert f"TLSA 3 1 1 {load(p).spki_sha256.hex()}" in r.stdout
    current = load_config(tmp_path / "mxd.toml").tls.host_keys
    for p in current:
        assert load(p).spki_sha256.hex() not in r.stdout
    assert "Publish their TLSA records now" in r.stdout and "twice the TLSA TTL" in r.stdout
    again = subprocess.run([MXD, "hostkeys", "next", "--stamp", "20270101", "--config",
                            cfg_path], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
