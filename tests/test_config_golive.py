"""Config errors of the host key, ACME and MTA-STS keys name the key and the fix."""

from __future__ import annotations

import pytest

from mxd.config import ConfigError, parse_config
from tests.golive_helpers import host_keys

BASE = '''hostname = "mx.example.test"
data_dir = "data"
[domains]
names = ["example.test"]
[[listeners]]
protocol = "smtp"
port = 0
'''


@pytest.mark.parametrize("extra,key,problem", [
    ('[tls]\nhost_keys = ["missing.pem"]\n', "tls.host_keys[0]", "mxd quickstart"),
    ('[mta_sts]\nmode = "strict"\n', "mta_sts.mode", "enforce, testing, none"),
    ("[mta_sts]\nmax_age = 0\n", "mta_sts.max_age", "from 1 to 31557600"),
    ('[dns]\npublic_ips = ["mx.example.test"]\n', "dns.public_ips", "IP address"),
    ("[acme]\nrenew_fraction = 1.5\n", "acme.renew_fraction", "between 0 and 1"),
])
def test_errors_name_key_and_fix(tmp_path, extra, key, problem):
    keys = host_keys(tmp_path)
    text = BASE.replace("[domains]", "[tls]\nhost_keys = [" + ", ".join(
        f'"{k.path}"' for k in keys) + "]\n[domains]") if "host_keys" not in extra else BASE
    with pytest.raises(ConfigError) as e:
        parse_config(text + extra, "t.toml", tmp_path)
    assert e.value.key == key and problem in str(e.value)


def test_acme_needs_host_keys(tmp_path):
    """Certificates are only ever requested for the pre-generated keys."""
    text = BASE.replace('protocol = "smtp"', 'protocol = "http"') + "[acme]\nenabled = true\n"
    with pytest.raises(ConfigError, match="ACME needs .tls..host_keys"):
        parse_config(text, "t.toml", tmp_path)


def test_acme_needs_an_http_or_https_listener(tmp_path):
    keys = host_keys(tmp_path)
    text = BASE + "[tls]\nhost_keys = [" + ", ".join(f'"{k.path}"' for k in keys) + \
        "]\n[acme]\nenabled = true\n"
    with pytest.raises(ConfigError, match="https .TLS-ALPN-01. or http"):
        parse_config(text, "t.toml", tmp_path)
    ok = text + '[[listeners]]\nprotocol = "https"\nport = 0\n'
    assert parse_config(ok, "t.toml", tmp_path).acme.enabled


def test_host_keys_replace_cert_and_key(tmp_path):
    """With host keys, TLS listeners need no [tls].cert/key."""
    keys = host_keys(tmp_path)
    text = BASE + "[tls]\nhost_keys = [" + ", ".join(f'"{k.path}"' for k in keys) + "]\n"
    cfg = parse_config(text, "t.toml", tmp_path)
    assert cfg.tls.host_keys == [k.path for k in keys]
    with pytest.raises(ConfigError, match="needs a certificate"):
        parse_config(BASE, "t.toml", tmp_path)


def test_spf_record_and_check_allow_socks5_transport_addresses(tmp_path):
    """Mail sent through a SOCKS5 transport leaves from the proxy's public address: the
    suggested SPF record includes it, and the check expects it."""
    from mxd.dnsrecords import records
    from mxd.recordsconfig import record_inputs

    keys = host_keys(tmp_path)
    text = BASE + "[tls]\nhost_keys = [" + ", ".join(f'"{k.path}"' for k in keys) + "]\n" + \
        '[dns]\npublic_ips = ["192.0.2.10"]\n' \
        '[transports.proxy]\nkind = "socks5"\nhost = "127.0.0.1"\nport = 1080\n' \
        'remote_ips = ["198.51.100.7"]\n'
    cfg = parse_config(text, "t.toml", tmp_path)
    inputs = record_inputs(cfg, "example.test")
    assert inputs.extra_spf_ips == ("198.51.100.7",)
    (spf,) = [r for r in records(inputs) if r.purpose == "spf"]
    assert spf.value == '"v=spf1 ip4:192.0.2.10 ip4:198.51.100.7 -all"'
