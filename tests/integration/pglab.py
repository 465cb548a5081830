"""A private PostgreSQL cluster for the tests: ``initdb`` in a temporary directory,
``pg_ctl`` serving a unix socket in that directory and a free loopback port, fsync off
(the tests need no durability from it), stopped at the end of the session.

Usage (the fixtures are imported into tests/conftest.py)::

    def test_x(pg_dsn):            # a fresh, empty database of the session's cluster
        store = PostgresStore(pg_dsn, blob_dir, reactor)

    def test_y(pg_cluster):        # the cluster itself: .create_database(), .restart()

As root, PostgreSQL runs as ``nobody`` (it refuses to run as root) from a directory
outside pytest's private temp root.  A missing ``initdb``/``pg_ctl`` skips the tests that
need them, and fails them under ``CI=true`` (the Debian ``postgresql`` package, in the
Makefile's DEB_PACKAGES, provides them).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tools import free_port, in_ci

SUPERUSER = "mxd"


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return path
    return None


def require_postgres() -> tuple[str, str]:
    """(initdb, pg_ctl); fail (CI) or skip (elsewhere) when missing."""
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if initdb is None or pg_ctl is None:
        msg = "PostgreSQL (initdb, pg_ctl) is not installed (make test-deps installs postgresql)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return initdb, pg_ctl


class PGCluster:
    """One running cluster: ``dsn(db)``, ``create_database()``, ``stop``/``start``."""

    def __init__(self, initdb: str, pg_ctl: str, base: Path, *, durable: bool = False) -> None:
        self.pg_ctl = pg_ctl
        self.durable = durable  # fsync and synchronous_commit on (benchmarks)
        self.base = base
        self.datadir = base / "data"
        self.socket_dir = base
        self.host = "127.0.0.1"
        self.port = free_port()
        self._names = itertools.count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            os.chown(base, 65534, 65534)  # nobody
            self._as_user = ["runuser", "-u", "nobody", "--"]
        self._run([initdb, "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"])
        self.start()

    def _run(self, argv: list[str], timeout: float = 120) -> None:
        r = subprocess.run([*self._as_user, *argv], capture_output=True, text=True,
                           timeout=timeout, cwd=self.base)
        if r.returncode != 0:
            log = self.base / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr}{r.stdout}\n{tail}")

    def start(self) -> None:
        fast = ("" if self.durable else
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off ")
        opts = (f"-k {self.socket_dir} -h {self.host} -p {self.port} {fast}"
                "-c max_connections=300 -c shared_buffers=32MB")
        self._run([self.pg_ctl, "-D", str(self.datadir), "-o", opts, "-l",
                   str(self.base / "log"), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([self.pg_ctl, "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"])

    def restart(self) -> None:
        self.stop()
        self.start()

    def dsn(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        host = self.host if tcp else str(self.socket_dir)
        return f"host={host} port={self.port} user={SUPERUSER} dbname={dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its DSN (unix socket)."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PGCluster]:
    """The session's PostgreSQL cluster (created on first use)."""
    initdb, pg_ctl = require_postgres()
    base = Path(tempfile.mkdtemp(prefix="mxd-pg-"))
    try:
        cluster = PGCluster(initdb, pg_ctl, base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except RuntimeError:
            pass  # a test left it stopped
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_cluster: PGCluster) -> str:
    """A fresh, empty database in the session's cluster."""
    return pg_cluster.create_database()
