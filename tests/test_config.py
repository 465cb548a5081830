"""The TOML config: typed parsing, precise errors, and the example file kept in sync."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from mxd.config import Config, ConfigError, parse_config, reference_markdown, schema_keys

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "mxd.toml.example"


def _minimal(tls_files: dict[str, Path], extra: str = "", listeners: str = "") -> str:
    return f'''
hostname = "mail.example.test"
data_dir = "/tmp/mxd-test-data"
[tls]
cert = "{tls_files["cert"]}"
key = "{tls_files["key"]}"
[domains]
names = ["example.test"]
{extra}
{listeners}
'''


def test_minimal_config_parses_with_defaults(tls_files):
    """A config with only the required keys gets the documented defaults."""
    cfg = parse_config(_minimal(tls_files), "t.toml")
    assert isinstance(cfg, Config)
    assert cfg.hostname == "mail.example.test"
    assert cfg.smtp.max_recipients == 100
    assert cfg.auth.allow_plaintext_on_loopback is False
    assert cfg.resolver.nameservers == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("[smtp]\nmax_recipents = 5", "smtp.max_recipents", "unknown key"),
        ("[smtp]\nmax_recipients = \"5\"", "smtp.max_recipients", "expected an integer"),
        ("[smtp]\nmax_recipients = true", "smtp.max_recipients", "expected an integer"),
        ("[smtp]\nmax_recipients = 0", "smtp.max_recipients", "must be positive"),
        ("[auth]\nallow_plaintext_on_loopback = \"yes\"", "auth.allow_plaintext_on_loopback",
         "expected true or false"),
        ("[log]\nlevel = \"loud\"", "log.level", "is not one of"),
        ("[log]\nlevels = { \"mxd.smtp\" = \"loud\" }", "log.levels.mxd.smtp", "is not one of"),
        ("[resolver]\nnameservers = [\"dns.example\"]", "resolver.nameservers[0]",
         "expected an IP address"),
        ("[resolver]\ntrusted = [\"192.0.2.1\"]", "resolver.trusted[0]", "not in"),
        ("bogus = 1", "domains.bogus", "unknown key"),
        ("[imap]\nmetadata_max_value = 70000", "imap.metadata_max_value",
         "must be from 1 to 65536"),
        ("[[accounts]]\nname = \"a\"\naddresses = [\"a@other.test\"]", "accounts[0].addresses[0]",
         "not listed in domains.names"),
        ("[[accounts]]\naddresses = [\"a@example.test\"]", "accounts[0].name",
         "required key is missing"),
    ],
)
def test_errors_name_key_path_and_problem(tls_files, extra, key, problem):
    """Each invalid value is reported with the file, the exact key path and the problem."""
    with pytest.raises(ConfigError) as ei:
        parse_config(_minimal(tls_files, extra), "t.toml")
    assert ei.value.path == "t.toml"
    assert ei.value.key == key
    assert problem in ei.value.problem
    assert str(ei.value).startswith(f"t.toml: {key}: ")


def test_listener_errors(tls_files, tmp_path):
    """Listener problems name the listener index: bad port, duplicate, missing cert file."""
    bad_port = '[[listeners]]\nprotocol = "smtp"\nport = 70000\n'
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.port: expected a port"):
        parse_config(_minimal(tls_files, listeners=bad_port), "t.toml")
    dup = '[[listeners]]\nprotocol = "smtp"\nport = 2525\n[[listeners]]\nprotocol = "imap"\nport = 2525\n'
    with pytest.raises(ConfigError, match=r"listeners\[1\]\.port: 127.0.0.1:2525 is already used"):
        parse_config(_minimal(tls_files, listeners=dup), "t.toml")
    missing = f'[[listeners]]\nprotocol = "imaps"\nport = 9993\ncert = "{tmp_path}/nope.pem"\n'
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.cert: file not found"):
        parse_config(_minimal(tls_files, listeners=missing), "t.toml")
    admin = ('[[listeners]]\nprotocol = "admin"\naddress = "0.0.0.0"\nport = 8080\n'
             f'cert = "{tmp_path}/nope.pem"\n')
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.cert: file not found"):
        parse_config(_minimal(tls_files, listeners=admin), "t.toml")


def test_invalid_toml_is_reported_with_file():
    """A TOML syntax error names the file."""
    with pytest.raises(ConfigError, match=r"^x.toml: not valid TOML"):
        parse_config("hostname = ", "x.toml")


def test_relative_paths_resolve_against_config_dir(tls_files, tmp_path):
    """Relative paths in the file are relative to the file's directory."""
    (tmp_path / "c.pem").write_bytes(tls_files["cert"].read_bytes())
    (tmp_path / "k.pem").write_bytes(tls_files["key"].read_bytes())
    text = 'hostname = "h"\ndata_dir = "data"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n'
    cfg = parse_config(text, "t.toml", tmp_path)
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.tls.cert == tmp_path / "c.pem"


def test_idna_domains_are_accepted_and_bad_ones_rejected(tls_files):
    """Unicode domains are valid names; malformed ones get a precise error."""
    text = _minimal(tls_files).replace('names = ["example.test"]', 'names = ["bücher.example"]')
    assert parse_config(text, "t.toml").domains.names == ["bücher.example"]
    bad = _minimal(tls_files).replace('names = ["example.test"]', 'names = ["a..b"]')
    with pytest.raises(ConfigError, match=r"domains.names\[0\]: invalid domain name"):
        parse_config(bad, "t.toml")


def test_example_file_documents_every_key():
    """etc/mxd.toml.example sets every key of the schema (kept in sync by this test)."""
    data = tomllib.loads(EXAMPLE.read_text())

    def present(node, parts):
        if not parts:
            return True
        head, rest = parts[0], parts[1:]
        if head.startswith("NAME"):  # any key of a table such as [transports.NAME]
            values = list(node.values()) if isinstance(node, dict) else []
            if head.endswith("[]"):
                values = [item for v in values for item in v]
            return any(present(v, rest) for v in values)
        if head.endswith("[]"):
            items = node.get(head[:-2], [])
            return any(present(item, rest) for item in items)
        return isinstance(node, dict) and head in node and present(node[head], rest)

    missing = [k for k, _ in schema_keys() if not present(data, k.split("."))]
    assert missing == []


def test_example_file_is_valid_apart_from_its_paths(tmp_path, tls_files):
    """The example parses once its certificate paths point at real files."""
    text = EXAMPLE.read_text().replace("/etc/mxd/tls/fullchain.pem", str(tls_files["cert"]))
    text = text.replace("/etc/mxd/tls/privkey.pem", str(tls_files["key"]))
    for name in ("provider.password", "proxy.password"):
        (tmp_path / name).write_text("secret\n")
        (tmp_path / name).chmod(0o600)
        text = text.replace(f"/etc/mxd/{name}", str(tmp_path / name))
    from tests.golive_helpers import host_keys

    for k in host_keys(tmp_path):
        text = text.replace(f"/etc/mxd/{k.path.name}", str(k.path))
    cfg = parse_config(text, "example.toml")
    assert [li.protocol for li in cfg.listeners] == [
        "smtp", "submission", "submissions", "imap", "imaps", "https", "http", "admin", "webmail"]


def test_reference_lists_every_key():
    """The generated reference documents every schema key, and doc/config.md is current."""
    ref = reference_markdown()
    for key, _ in schema_keys():
        assert f"`{key}`" in ref or f"[{key}]" in ref or f"[[{key}]]" in ref
    assert (ROOT / "doc" / "config.md").read_text() == ref, "run `make config-reference`"


def test_port_in_use_is_detected(tls_files):
    """check_ports_free names the listener whose port is taken."""
    from mxd.listeners import ListenError
    from mxd.tap import check_ports_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = parse_config(_minimal(tls_files, listeners=f'[[listeners]]\nprotocol = "smtp"\nport = {port}\n'), "t.toml")
        with pytest.raises(ListenError, match=rf"t.toml: listeners\[0\]: cannot listen for smtp on 127.0.0.1 port {port}"):
            check_ports_free(cfg)


def test_smtp_library_defaults_agree_with_the_config() -> None:
    """SMTPServerSettings (used without a config, e.g. by tests and other programs) has
    the config's defaults for every key the two share (max_connections said 1000 vs 200)."""
    import attrs

    from mxd.config import SMTPConfig
    from mxd.smtp.session import SMTPServerSettings

    lib = {f.name: f.default for f in attrs.fields(SMTPServerSettings)}
    shared = [f for f in attrs.fields(SMTPConfig) if f.name in lib]
    assert len(shared) >= 5
    assert {f.name: f.default for f in shared} == {f.name: lib[f.name] for f in shared}


def test_rfc_status_table_lists_each_rfc_once() -> None:
    """doc/rfc.md has one row per RFC (7505 was listed twice with different status)."""
    from pathlib import Path

    rows = [line.split("|")[1].strip() for line in
            (Path(__file__).parents[1] / "doc" / "rfc.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip()[:1].isdigit()]
    assert len(rows) > 20 and len(rows) == len(set(rows)), sorted(
        r for r in rows if rows.count(r) > 1)


@pytest.mark.parametrize("protocol", ["admin", "webmail"])
def test_web_ui_off_loopback_needs_a_certificate(protocol):
    """An admin or webmail listener off loopback is served over HTTPS only, so it needs
    a certificate; on loopback plain HTTP is allowed."""
    base = 'hostname = "mail.example.test"\ndata_dir = "/tmp/mxd-test-data"\n'
    off = base + f'[[listeners]]\nprotocol = "{protocol}"\naddress = "0.0.0.0"\nport = 8080\n'
    with pytest.raises(ConfigError, match=rf"listeners\[0\]: an {protocol} listener off "
                       "loopback needs a certificate"):
        parse_config(off, "t.toml")
    on = base + f'[[listeners]]\nprotocol = "{protocol}"\naddress = "127.0.0.1"\nport = 8080\n'
    assert parse_config(on, "t.toml").listeners[0].protocol == protocol


PG_STORE = '[store]\nbackend = "postgresql"\ndsn = "host=/nonexistent"\nblob_dir = "{blobs}"\n'


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("orphan_sweep_interval = 0", "store.orphan_sweep_interval", "must be positive"),
        ("orphan_min_age = 1800", "store.orphan_min_age", "exceed the longest transfer"),
        ("orphan_min_age = 800\n[imap]\nidle_timeout = 900", "store.orphan_min_age",
         "exceed the longest transfer timeout (900 s"),
        ("orphan_hold_off = 60", "store.orphan_hold_off", "exceed expunged_body_grace (60 s)"),
        ("expunged_body_grace = 700", "store.orphan_hold_off", "exceed expunged_body_grace"),
    ],
)
def test_orphan_sweep_settings_that_could_take_a_body_in_use_are_refused(
        tls_files, tmp_path, extra, key, problem):
    """The PostgreSQL sweep's minimum age must exceed every transfer timeout (a body being
    written is younger) and its hold-off the expunged-body grace (a node keeps that body)."""
    text = _minimal(tls_files, PG_STORE.format(blobs=tmp_path) + extra)
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "t.toml")
    assert ei.value.key == key
    assert problem in ei.value.problem


def test_orphan_sweep_settings_reach_the_postgresql_store(tls_files, tmp_path):
    """[store] orphan_* become the sweep's settings; a SQLite installation ignores them."""
    from twisted.internet import reactor

    from mxd.components import make_store
    from mxd.store.orphans import SweepSettings

    extra = "orphan_sweep_interval = 120\norphan_min_age = 4000\norphan_hold_off = 90\n"
    text = _minimal(tls_files, PG_STORE.format(blobs=tmp_path) + extra).replace(
        "/tmp/mxd-test-data", str(tmp_path / "data"))
    store = make_store(parse_config(text, "t.toml"), reactor)
    assert store._sweeper.settings == SweepSettings(interval=120.0, min_age=4000.0,
                                                    hold_off=90.0)
    assert store.sweep_interval == 120.0
    sqlite = _minimal(tls_files, "[store]\norphan_min_age = 10\n")
    assert parse_config(sqlite, "t.toml").store.orphan_min_age == 10.0
