"""LDAPClient against a real slapd: StartTLS and ldaps with certificate checks, failover,
password binds, the empty-password rule and several entries for one filter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mxd.directory.ldapclient import (
    AmbiguousEntry,
    ClientSettings,
    LDAPClient,
    LDAPDirectoryError,
    LDAPUnavailable,
)
from tests.integration.ldaplab import BASE, PASSWORDS, SERVICE_DN, SERVICE_PASSWORD, SlapdLab
from tests.integration.tools import free_port

pytestmark = pytest.mark.integration
PEOPLE = f"ou=people,{BASE}"
CAROL = f"uid=carol,{PEOPLE}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory,
        tls_files: dict[str, Path]) -> Iterator[SlapdLab]:
    lab = SlapdLab(tmp_path_factory.mktemp("slapd-client"), tls_files, [])
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def client(lab: SlapdLab, uris: list[str], **kw: object) -> LDAPClient:
    settings = dict(uris=tuple(uris), ca_file=lab.tls_files["ca"], bind_dn=SERVICE_DN,
                    bind_password=SERVICE_PASSWORD, timeout=3.0)
    settings.update(kw)
    return LDAPClient(ClientSettings(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_search_and_bind_over_tls(lab: SlapdLab, mode: str) -> None:
    """Over ldaps:// and over StartTLS: the service search finds carol; her password binds,
    a wrong one and an empty one do not."""
    uri = (f"ldaps://127.0.0.1:{lab.ldaps_port}" if mode == "ldaps"
           else f"ldap://127.0.0.1:{lab.ldap_port}")
    c = client(lab, [uri], starttls=mode == "starttls")
    try:
        e = c.search_one(PEOPLE, "(uid=carol)", ["uid", "mail"])
        assert e is not None and e.dn == CAROL and e.attributes["mail"] == ["carol@example.test"]
        assert c.check_password(CAROL, PASSWORDS["carol"])
        assert not c.check_password(CAROL, "wrong")
        assert not c.check_password(CAROL, "")  # never an unauthenticated bind
        assert c.check_password(CAROL, PASSWORDS["carol"])  # the pooled connection again
    finally:
        c.close()
    assert "ssf=256" in lab.log_text() or "tls_ssf=" in lab.log_text()


def test_untrusted_certificate_is_refused(lab: SlapdLab, tmp_path: Path) -> None:
    """A CA that did not issue slapd's certificate: LDAPUnavailable naming the failure."""
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    c = client(lab, [f"ldaps://127.0.0.1:{lab.ldaps_port}"], ca_file=other)
    with pytest.raises(LDAPUnavailable, match="ldaps://127.0.0.1"):
        c.search_one(PEOPLE, "(uid=carol)", ["uid"])


def test_plaintext_needs_the_explicit_setting(lab: SlapdLab) -> None:
    """ldap:// without StartTLS is refused unless allowed (the config allows it only for
    loopback); when allowed, it works."""
    uri = f"ldap://127.0.0.1:{lab.ldap_port}"
    with pytest.raises(LDAPDirectoryError, match="plaintext"):
        client(lab, [uri])
    c = client(lab, [uri], allow_plaintext=True)
    assert c.search_one(PEOPLE, "(uid=carol)", ["uid"]) is not None


def test_failover_and_service_bind_refusal(lab: SlapdLab) -> None:
    """A dead first server is skipped; a wrong service password is LDAPUnavailable."""
    dead = f"ldaps://127.0.0.1:{free_port()}"
    c = client(lab, [dead, f"ldaps://127.0.0.1:{lab.ldaps_port}"])
    assert c.search_one(PEOPLE, "(uid=carol)", ["uid"]) is not None
    bad = client(lab, [f"ldaps://127.0.0.1:{lab.ldaps_port}"], bind_password="wrong")
    with pytest.raises(LDAPUnavailable, match="service bind"):
        bad.search_one(PEOPLE, "(uid=carol)", ["uid"])


def test_several_entries_are_ambiguous(lab: SlapdLab) -> None:
    """A filter matching several entries raises AmbiguousEntry (size limit 2)."""
    c = client(lab, [f"ldaps://127.0.0.1:{lab.ldaps_port}"])
    with pytest.raises(AmbiguousEntry):
        c.search_one(PEOPLE, "(objectClass=inetOrgPerson)", ["uid"])


@pytest.mark.parametrize("sizelimit, complete", [
    ("size.soft=2 size.hard=2 size.prtotal=unlimited", True),  # paging allowed past it
    ("2", False),  # a hard limit for paged searches too
])
def test_listing_pages_past_size_limit_or_says_it_was_cut(
        tmp_path: Path, tls_files: dict[str, Path], sizelimit: str, complete: bool) -> None:
    """A listing asks for pages (RFC 2696): where slapd allows paging beyond its size
    limit every entry comes back; where it does not, the answer says it was cut short."""
    lab = SlapdLab(tmp_path / "slapd", tls_files, [], sizelimit=sizelimit)
    lab.start()
    try:
        c = client(lab, [f"ldaps://127.0.0.1:{lab.ldaps_port}"])
        entries, truncated = c.search(BASE, "(objectClass=*)", ["1.1"])
    finally:
        lab.stop()
    assert truncated is not complete
    assert len(entries) == (8 if complete else 2)


def test_restart_with_several_pooled_connections_recovers_at_once(
        tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """After slapd restarts, every pooled connection is dead: the first search and the
    first bind afterwards still succeed (the pool is dropped, one retry on a new one)."""
    lab = SlapdLab(tmp_path / "slapd", tls_files, [])
    lab.start()
    try:
        c = client(lab, [f"ldaps://127.0.0.1:{lab.ldaps_port}"])
        for _ in range(3):  # fill the pools beyond one connection each
            c._search_pool.put(c._service())
        assert c.check_password(CAROL, PASSWORDS["carol"])
        c._bind_pool.put(c._open(None, None))
        lab.stop()
        lab.start()
        assert c.search_one(PEOPLE, "(uid=carol)", ["uid"]) is not None
        assert c.check_password(CAROL, PASSWORDS["carol"])
    finally:
        lab.stop()
