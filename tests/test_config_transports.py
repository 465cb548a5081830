"""[transports.NAME] and routes in the config: precise errors, and the values built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mxd.config import ConfigError, parse_config
from mxd.config_transports import build_routes, read_secret
from mxd.queue.routes import SmarthostTLS, TransportKind, choose
from tests.test_config import _minimal


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "relay.password"
    p.write_text("s3cret pass\n")
    os.chmod(p, 0o600)
    return p


GOOD = '''
[[domains.routes."example.test"]]
to_domains = ["gmail.test"]
transport = "provider"

[[accounts]]
name = "alice"
addresses = ["alice@example.test"]
[[accounts.routes]]
to_domains = ["*"]
transport = "relay"

[transports.relay]
kind = "smtp"
host = "relay.example.net"
tls = "required"

[transports.provider]
kind = "submissions"
host = "smtp.provider.test"
username = "mailer@example.test"
password_file = "{secret}"
mechanisms = ["scram-sha-256-plus"]

[transports.proxy]
kind = "socks5"
host = "127.0.0.1"
port = 1080
remote_ips = ["198.51.100.7"]
ehlo_hostname = "out.example.test"

[transports.stop]
kind = "fail"
code = 550
enhanced = "5.7.1"
text = "we do not send there"

[[routes]]
to_domains = ["blocked.test", ".blocked.test"]
transport = "stop"

[[routes]]
min_attempt = 4
transport = "proxy"
'''


def test_full_example_builds_route_table(tls_files: dict[str, Path], secret: Path) -> None:
    """Every kind and the three route tables parse into mxd.queue.routes values, with the
    password read from its file and the default ports filled in."""
    cfg = parse_config(_minimal(tls_files, GOOD.format(secret=secret)), "t.toml")
    table, transports = build_routes(cfg)
    by = {t.name: t for t in transports}
    assert by["provider"].kind is TransportKind.SUBMISSIONS
    assert by["provider"].password == "s3cret pass"
    assert by["provider"].address == ("smtp.provider.test", 465)
    assert by["provider"].mechanisms == ("SCRAM-SHA-256-PLUS",)
    assert by["relay"].tls is SmarthostTLS.REQUIRED and not by["relay"].verified_tls
    assert by["proxy"].remote_ips == ("198.51.100.7",)
    assert by["stop"].fail_code == 550
    pick = lambda s, rc, a=None, n=1: choose(table, by, s, rc, account=a, attempt=n)  # noqa: E731
    assert pick("alice@example.test", "x@gmail.test", "alice").reason == "account alice route 1"
    assert pick("bob@example.test", "x@gmail.test").transport.name == "provider"
    assert pick("bob@example.test", "x@a.blocked.test").transport.name == "stop"
    assert pick("bob@example.test", "x@far.test", n=4).transport.name == "proxy"
    assert pick("bob@example.test", "x@far.test", n=3).reason == "default"


BASE = '[transports.relay]\nkind = "smtp"\nhost = "relay.test"\n'


@pytest.mark.parametrize(("extra", "key", "problem"), [
    (BASE + '[[routes]]\nto_domains = ["*"]\ntransport = "relya"\n', "routes[0].transport",
     "unknown transport 'relya' (transports: relay)"),
    (BASE + '[[routes]]\ntransport = "relay"\n', "routes[0]",
     "a route needs at least one of to_domains, from_domains or min_attempt"),
    (BASE + '[[routes]]\nmin_attempt = 1\ntransport = "relay"\n', "routes[0]",
     "a route needs at least one"),
    (BASE + '[[routes]]\nto_domains = ["a..b"]\ntransport = "relay"\n',
     "routes[0].to_domains[0]", "invalid domain name"),
    ('[transports.relay]\nkind = "smtp"\nhost = "relay.test"\nport = 70000\n',
     "transports.relay.port", "expected a port from 1 to 65535, got 70000"),
    ('[transports.relay]\nkind = "smtp"\n', "transports.relay.host", "required for kind smtp"),
    ('[transports.relay]\nkind = "smarthost"\n', "transports.relay.kind", "is not one of"),
    ('[transports.relay]\nkind = "smtp"\nhost = "r.test"\nusername = "u"\n',
     "transports.relay.username", "does not apply to kind smtp"),
    ('[transports.relay]\nkind = "smtp"\nhost = "r.test"\ntls = "maybe"\n',
     "transports.relay.tls", "is not one of"),
    ('[transports.s]\nkind = "submission"\nhost = "r.test"\npassword_file = "/nonexistent"\n',
     "transports.s.username", "required for kind submission"),
    ('[transports.s]\nkind = "submission"\nhost = "r.test"\nusername = "u"\n',
     "transports.s.password_file", "required for kind submission"),
    ('[transports.s]\nkind = "submission"\nhost = "r.test"\nusername = "u"\n'
     'password_file = "/nonexistent/pw"\n', "transports.s.password_file",
     "file not found: /nonexistent/pw"),
    ('[transports.s]\nkind = "submissions"\nhost = "r.test"\nusername = "u"\n'
     'password_file = "{secret}"\nmechanisms = ["DIGEST-MD5"]\n', "transports.s.mechanisms[0]",
     "unknown SASL mechanism 'DIGEST-MD5'"),
    ('[transports.s]\nkind = "submission"\nhost = "r.test"\nusername = "u"\ntls = "none"\n'
     'password_file = "{secret}"\nmechanisms = ["PLAIN"]\n', "transports.s.mechanisms",
     "never sent without TLS"),
    ('[transports.p]\nkind = "socks5"\nhost = "proxy.test"\n', "transports.p.host",
     "by IP address"),
    ('[transports.p]\nkind = "socks5"\nhost = "127.0.0.1"\nproxy_username = "u"\n',
     "transports.p.proxy_password_file", "go together"),
    ('[transports.p]\nkind = "socks5"\nhost = "127.0.0.1"\nremote_ips = ["x"]\n',
     "transports.p.remote_ips", "expected an IP address"),
    ('[transports.f]\nkind = "fail"\ncode = 250\n', "transports.f.code", "expected 400-599"),
    ('[transports.f]\nkind = "fail"\ncode = 451\n', "transports.f.enhanced", "does not match"),
    ('[[domains.routes."other.test"]]\nto_domains = ["*"]\ntransport = ""\n',
     'domains.routes."other.test"', "not listed in domains.names"),
])
def test_errors_name_the_key(tls_files: dict[str, Path], secret: Path, extra: str, key: str,
                             problem: str) -> None:
    """Each mistake is refused at config check, naming the file, key path and problem."""
    with pytest.raises(ConfigError) as ei:
        parse_config(_minimal(tls_files, extra.replace("{secret}", str(secret))), "t.toml")
    assert ei.value.key == key, str(ei.value)
    assert problem in ei.value.problem
    assert str(ei.value).startswith(f"t.toml: {key}: ")


def test_password_file_unreadable_or_world_readable(tls_files: dict[str, Path],
                                                    secret: Path) -> None:
    """A world-readable password file is refused (with the chmod to fix it); so is an
    empty one."""
    extra = ('[transports.s]\nkind = "submission"\nhost = "r.test"\nusername = "u"\n'
             f'password_file = "{secret}"\n')
    parse_config(_minimal(tls_files, extra), "t.toml")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\); chmod 600"):
        parse_config(_minimal(tls_files, extra), "t.toml")
    os.chmod(secret, 0o600)
    secret.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        parse_config(_minimal(tls_files, extra), "t.toml")
    with pytest.raises(ValueError, match="not a regular file"):
        read_secret(secret.parent)


def test_socks5_public_ips_go_into_spf(tls_files: dict[str, Path], secret: Path) -> None:
    """The DNS records/check allow the proxies' public addresses in SPF (mail through a
    socks5 transport comes from them)."""
    from mxd.dnsrecords import records
    from mxd.recordsconfig import record_inputs

    cfg = parse_config(_minimal(tls_files, GOOD.format(secret=secret)), "t.toml")
    inputs = record_inputs(cfg, "example.test")
    assert inputs.extra_spf_ips == ("198.51.100.7",)
    [spf] = [r for r in records(inputs) if r.purpose == "spf"]
    assert "ip4:198.51.100.7" in spf.value
