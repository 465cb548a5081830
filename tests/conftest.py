"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tls_ca():  # type: ignore[no-untyped-def]
    """A throwaway CA (trustme) for the whole run."""
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(tls_ca, tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """PEM files for a server certificate valid for localhost, 127.0.0.1 and ::1.

    Keys: ``ca`` (CA certificate), ``cert`` (leaf + chain), ``key``.
    """
    d = tmp_path_factory.mktemp("tls")
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", "::1", "mx.example.test")
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    tls_ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["cert"], "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return paths


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty data directory for a store."""
    d = tmp_path / "data"
    d.mkdir()
    old = os.umask(0o077)
    try:
        yield d
    finally:
        os.umask(old)


# The DNS lab fixtures, for tests outside tests/integration that need a real resolver.
from tests.integration.dnslab import dns_lab, dns_lab_factory  # noqa: E402, F401

# The private PostgreSQL cluster (session) and a fresh database per test.
from tests.integration.pglab import pg_cluster, pg_dsn  # noqa: E402, F401
