"""LocalDirectory: accounts with derived secrets, recipients, catch-all, sender checks."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet import task

from mxd.directory.addresses import InvalidAddress
from mxd.directory.local import DirectoryError, DirectorySettings, LocalDirectory, NotLocalDomain
from mxd.sasl.api import ConnectionInfo, Continue, Success
from mxd.sasl.credentials import ScramSecret
from mxd.store.interfaces import AccountExists, NoSuchAccount
from tests.store.helpers import StoreHarness, open_store

PASSWORD = "correct horse \u00e9t\u00e9 battery"  # non-ASCII: SASLprep matters
SETTINGS = DirectorySettings(
    domains=("example.test", "B\u00fccher.example"),
    catchall={"b\u00fccher.example": "books"},
    scrypt_n=2**10,
)


@pytest.fixture
def h(data_dir: Path) -> Iterator[StoreHarness]:
    """An inline store (every Deferred fires at once)."""
    harness = open_store(data_dir, inline=True)
    yield harness
    harness.close()


def _populate(h: StoreHarness) -> LocalDirectory:
    d = LocalDirectory(h.store, SETTINGS)
    h.run(d.add_account("alice", PASSWORD, ["Alice@Example.test", "info@xn--bcher-kva.example"]))
    h.run(d.add_account("books", "pw-books"))
    return d


@pytest.fixture
def directory(h: StoreHarness) -> LocalDirectory:
    """A directory with alice (two addresses) and the books catch-all account."""
    return _populate(h)


@pytest.fixture(scope="module")
def ro(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StoreHarness, LocalDirectory]]:
    """The same directory, shared by the read-only table tests of this module."""
    harness = open_store(tmp_path_factory.mktemp("ro"), inline=True)
    yield harness, _populate(harness)
    harness.close()


def test_settings_normalise_domains() -> None:
    """Configured domains and catch-all keys are IDNA-normalised."""
    assert SETTINGS.domains == ("example.test", "xn--bcher-kva.example")
    assert SETTINGS.catchall == {"xn--bcher-kva.example": "books"}
    with pytest.raises(DirectoryError, match="catch-all"):
        LocalDirectory(None, DirectorySettings(domains=("a.test",), catchall={"b.test": "x"}))  # type: ignore[arg-type]


def _all_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())


def test_no_plaintext_password_in_database(data_dir: Path) -> None:
    """Neither the passwords nor their UTF-8/UTF-16/Latin-1 forms appear in any file of
    the data directory (database, WAL), before or after closing, after set_password."""
    h = open_store(data_dir, inline=True)
    d = LocalDirectory(h.store, SETTINGS)
    h.run(d.add_account("alice", PASSWORD, ["alice@example.test"]))
    h.run(d.add_account("books", "pw-books"))
    h.run(d.set_password("alice", "second-S3cret-\u00e9"))
    snapshots = [_all_bytes(data_dir)]
    h.close()
    snapshots.append(_all_bytes(data_dir))
    for blob in snapshots:
        assert b"books" in blob  # the account name is there: we are reading the right files
        for pw in (PASSWORD, "second-S3cret-\u00e9", "pw-books"):
            for enc in ("utf-8", "utf-16-le", "latin-1"):
                try:
                    needle = pw.encode(enc)
                except UnicodeEncodeError:
                    continue
                assert needle not in blob, (pw, enc)


def test_scram_secrets_round_trip(h: StoreHarness, directory: LocalDirectory) -> None:
    """The stored SCRAM, scrypt and CRAM-MD5 secrets match the password and nothing else."""
    secrets = h.run(directory.lookup_secrets("alice"))
    assert secrets is not None
    for name, sec in secrets.scram.items():
        assert sec.iterations == SETTINGS.scram_iterations
        again = ScramSecret.derive(name, PASSWORD, sec.iterations, salt=sec.salt)
        assert (again.stored_key, again.server_key) == (sec.stored_key, sec.server_key)
    assert secrets.password.verify(PASSWORD)
    assert not secrets.password.verify(PASSWORD + "x")
    assert secrets.cram_md5 is not None
    challenge = b"<1896.697170952@postoffice.example.net>"
    assert secrets.cram_md5.hmac_hex(challenge) == hmac.new(
        PASSWORD.encode(), challenge, hashlib.md5).hexdigest()
    assert h.run(directory.lookup_secrets("nobody")) is None


def test_scram_login_through_sasl_server(h: StoreHarness, directory: LocalDirectory) -> None:
    """A real SCRAM-SHA-256 client (scramp) authenticates against the directory's
    secrets through mxd's SASL server."""
    from tests.integration.tools import require_module

    scramp = require_module("scramp")
    from mxd.sasl.ratelimit import AuthLimiter
    from mxd.sasl.server import SASLServer, SASLSettings

    clock = task.Clock()
    server = SASLServer(directory.lookup_secrets, SASLSettings(fake_scrypt_n=2**10),
                        AuthLimiter(clock), clock, "mx.example.test")
    conn = ConnectionInfo(remote_ip="127.0.0.1", tls=True)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    ex = server.start("SCRAM-SHA-256", conn)
    first = h.run(ex.step(client.get_client_first().encode()))
    assert isinstance(first, Continue)
    client.set_server_first(first.challenge.decode())
    final = h.run(ex.step(client.get_client_final().encode()))
    if isinstance(final, Continue):
        client.set_server_final(final.challenge.decode())
        final = h.run(ex.step(b""))
    else:
        client.set_server_final(final.additional.decode())
    assert isinstance(final, Success) and final.authcid == "alice"


def test_cram_md5_off_stores_no_cram_secret(h: StoreHarness) -> None:
    """With cram_md5=False no CRAM-MD5 state is stored."""
    d = LocalDirectory(h.store, DirectorySettings(domains=("example.test",), cram_md5=False,
                                                  scrypt_n=2**10))
    h.run(d.add_account("carol", "pw"))
    secrets = h.run(d.lookup_secrets("carol"))
    assert secrets is not None and secrets.cram_md5 is None


def test_account_management(h: StoreHarness, directory: LocalDirectory) -> None:
    """Accounts list with normalised addresses; errors are clean."""
    accounts = {a.name: a for a in h.run(directory.list_accounts())}
    assert accounts["alice"].addresses == ("alice@example.test", "info@xn--bcher-kva.example")
    assert isinstance(h.fail(directory.add_account("alice", "x")), AccountExists)
    assert isinstance(h.fail(directory.add_account("eve", "x", ["eve@elsewhere.test"])),
                      NotLocalDomain)
    assert isinstance(h.fail(directory.add_account("eve", "x", ["not-an-address"])),
                      InvalidAddress)
    assert isinstance(h.fail(directory.add_account("eve", "")), DirectoryError)
    assert h.run(directory.get_account("eve")) is None
    assert isinstance(h.fail(directory.set_password("nobody", "x")), NoSuchAccount)
    h.run(directory.add_address("alice", "ALICE.Smith@example.test"))
    assert "alice.smith@example.test" in h.run(directory.get_account("alice")).addresses
    h.run(directory.remove_address("Alice.Smith@EXAMPLE.test"))
    assert "alice.smith@example.test" not in h.run(directory.get_account("alice")).addresses
    h.run(directory.delete_account("books"))
    assert [a.name for a in h.run(directory.list_accounts())] == ["alice"]


def test_lookup_secrets_of_unusable_record(h: StoreHarness, directory: LocalDirectory) -> None:
    """An account whose stored secrets cannot be parsed authenticates nobody."""
    h.run(h.store.add_account("legacy", "not json"))
    assert h.run(directory.lookup_secrets("legacy")) is None


@pytest.mark.parametrize(
    ("address", "account"),
    [
        ("alice@example.test", "alice"),
        ("ALICE@EXAMPLE.TEST", "alice"),
        ("alice+lists@example.test", "alice"),
        ("Alice+Lists+x@Example.Test.", "alice"),
        ("info@b\u00fccher.example", "alice"),
        ("info+x@xn--bcher-kva.example", "alice"),
        ("anyone@b\u00fccher.example", "books"),  # catch-all
        ("bob@example.test", None),  # no catch-all for example.test
        ("alice@elsewhere.test", None),  # not a local domain
        ("alice@[127.0.0.1]", None),
        ("garbage", None),
        ("alice-x@example.test", None),  # only "+" separates
    ],
)
def test_resolve_recipient(ro: tuple[StoreHarness, LocalDirectory], address: str,
                           account: str | None) -> None:
    """Exact address, then without the tag, then the catch-all; only local domains."""
    h, directory = ro
    got = h.run(directory.resolve_recipient(address))
    assert (got.name if got else None) == account


def test_resolve_without_separator(h: StoreHarness) -> None:
    """With no separator configured, alice+x is a different, unknown address."""
    d = LocalDirectory(h.store, DirectorySettings(domains=("example.test",),
                                                  localpart_separator=None, scrypt_n=2**10))
    h.run(d.add_account("alice", "pw", ["alice@example.test"]))
    assert h.run(d.resolve_recipient("alice+x@example.test")) is None
    assert h.run(d.resolve_recipient("alice@example.test")).name == "alice"


def test_exact_tagged_address_wins(h: StoreHarness, directory: LocalDirectory) -> None:
    """An address registered with a tag goes to its own account, not the base's."""
    h.run(directory.add_account("alerts", "pw", ["alice+alerts@example.test"]))
    assert h.run(directory.resolve_recipient("alice+alerts@example.test")).name == "alerts"
    assert h.run(directory.resolve_recipient("alice+other@example.test")).name == "alice"


@pytest.mark.parametrize(
    ("domain", "local"),
    [("example.test", True), ("EXAMPLE.TEST.", True), ("b\u00fccher.example", True),
     ("xn--bcher-kva.example", True), ("elsewhere.test", False), ("[127.0.0.1]", False),
     ("", False)],
)
def test_is_local_domain(ro: tuple[StoreHarness, LocalDirectory], domain: str,
                         local: bool) -> None:
    """Configured domains in any case or form are local; others are not."""
    assert ro[1].is_local_domain(domain) is local


@pytest.mark.parametrize(
    ("account", "address", "ok"),
    [
        ("alice", "alice@example.test", True),
        ("alice", "Alice+news@Example.Test", True),
        ("alice", "info@b\u00fccher.example", True),
        ("alice", "bob@example.test", False),
        ("books", "anyone@b\u00fccher.example", False),  # catch-all is not ownership
        ("nobody", "alice@example.test", False),
        ("alice", "not an address", False),
    ],
)
def test_may_send_as(ro: tuple[StoreHarness, LocalDirectory], account: str, address: str,
                     ok: bool) -> None:
    """Submission may use an owned address, with or without a tag, and nothing else."""
    h, directory = ro
    assert h.run(directory.may_send_as(account, address)) is ok


def test_config_style_address_matches_case_insensitively(h: StoreHarness,
                                                         directory: LocalDirectory) -> None:
    """An address stored with upper-case ASCII (e.g. by config sync) still resolves."""
    h.run(h.store.add_address("books", "Sales@example.test"))
    assert h.run(directory.resolve_recipient("sales@example.test")).name == "books"
    assert h.run(directory.may_send_as("books", "SALES@example.test")) is True


def test_derivation_off_thread(h: StoreHarness) -> None:
    """Given a reactor with a thread pool, password derivation runs there."""
    calls: list[str] = []

    class Pool:
        def callInThreadWithCallback(self, on_result, f, *a, **kw):  # type: ignore[no-untyped-def]
            calls.append("pool")
            on_result(True, f(*a, **kw))

    class Reactor:
        def getThreadPool(self) -> Pool:
            return Pool()

        def callFromThread(self, f, *a, **kw):  # type: ignore[no-untyped-def]
            f(*a, **kw)

    d = LocalDirectory(h.store, SETTINGS, reactor=Reactor())
    acct = h.run(d.add_account("dave", "pw"))
    assert acct.name == "dave" and calls == ["pool"]


def test_postmaster_fallback(h: StoreHarness) -> None:
    """postmaster@ any local domain (any case) reaches the postmaster account unless an
    account owns that address itself; the catch-all comes after it (RFC 5321 §4.5.1)."""
    settings = DirectorySettings(domains=("example.test", "other.test"),
                                 catchall={"other.test": "catch"}, postmaster="admin",
                                 scrypt_n=2**10)
    d = LocalDirectory(h.store, settings)
    h.run(d.add_account("admin", "pw"))
    h.run(d.add_account("catch", "pw"))
    h.run(d.add_account("pm2", "pw", ["postmaster@other.test"]))
    assert h.run(d.resolve_recipient("PostMaster@example.test")).name == "admin"
    assert h.run(d.resolve_recipient("postmaster@other.test")).name == "pm2"
    assert h.run(d.resolve_recipient("someone@other.test")).name == "catch"
    assert h.run(d.resolve_recipient("postmaster@elsewhere.test")) is None


def test_postmaster_without_a_configured_account(h: StoreHarness) -> None:
    """With no postmaster account configured, postmaster@ each local domain still
    reaches an account (the first by name): RFC 5321 §4.5.1 says it MUST be accepted."""
    settings = DirectorySettings(domains=("example.test", "other.test"), scrypt_n=2**10)
    d = LocalDirectory(h.store, settings)
    assert h.run(d.resolve_recipient("postmaster@example.test")) is None  # no account yet
    h.run(d.add_account("zed", "pw"))
    h.run(d.add_account("bea", "pw"))
    assert h.run(d.resolve_recipient("postmaster@example.test")).name == "bea"
    assert h.run(d.resolve_recipient("POSTMASTER@other.test")).name == "bea"
    assert h.run(d.resolve_recipient("nobody@other.test")) is None


def test_login_key_every_spelling_one_key() -> None:
    """login_key: NFC, ASCII case, IDNA domains: every spelling of a name gives one key."""
    from mxd.directory.addresses import login_key

    assert len({login_key(n) for n in ["nobody@localhost", "NOBODY@localhost",
                                        "Nobody@LocalHost"]}) == 1
    assert login_key("Alice") == login_key("ALICE") == "alice"
    assert login_key("x@B\u00fccher.example") == "x@xn--bcher-kva.example"
    assert login_key("\u00c4rger") != login_key("\u00e4rger")  # no non-ASCII folding, like the store
@pytest.mark.parametrize("login", ["alice", "alice@example.test", "ALICE@EXAMPLE.TEST",
                                   "info@b\u00fccher.example"])
def test_login_by_name_or_any_address(h: StoreHarness, directory: LocalDirectory,
                                      login: str) -> None:
    """Mail clients log in with the email address: the name and each of the account's
    addresses find its secrets, and the success names the account itself."""
    from mxd.sasl.ratelimit import AuthLimiter
    from mxd.sasl.server import SASLServer, SASLSettings

    clock = task.Clock()
    server = SASLServer(directory.lookup_secrets, SASLSettings(fake_scrypt_n=2**10),
                        AuthLimiter(clock), clock, "mx.example.test")
    conn = ConnectionInfo(remote_ip="127.0.0.1", tls=True)
    out = h.run(server.start("PLAIN", conn).step(f"\0{login}\0{PASSWORD}".encode()))
    assert isinstance(out, Success) and out.authcid == "alice"
    secrets = h.run(directory.lookup_secrets(login))
    assert secrets is not None and secrets.account == "alice"


def test_unknown_address_login_finds_nothing(directory: LocalDirectory,
                                             h: StoreHarness) -> None:
    """An address nobody owns, or a malformed one, is no account."""
    assert h.run(directory.lookup_secrets("nobody@example.test")) is None
    assert h.run(directory.lookup_secrets("@@")) is None
