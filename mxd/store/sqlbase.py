"""What the store's SQL (mxd.store.queries, mxd.store.queuedb) needs from a database
connection, whichever engine is behind it.

The operations of the mail store and the queue are written once, in the SQL that both
SQLite (3.35 or newer) and PostgreSQL run: ``?`` placeholders, ``INSERT ... ON CONFLICT``
instead of ``INSERT OR ...``, ``RETURNING id`` instead of ``lastrowid``, integers for
booleans, and ``CAST(... AS BIGINT)`` around sums.  A ``sqlite3.Connection`` is a ``Conn``
as it is; ``mxd.store.pgconn.PGConn`` adapts a psycopg connection (placeholders, errors).

Nothing outside the store backends sees a ``Conn``: the queue reaches its rows through
``IQueueStore`` (mxd.queue.storage), the servers through ``IMailStore``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from mxd.store.interfaces import StoreError


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    @property
    def rowcount(self) -> int: ...


class Conn(Protocol):
    """The part of a DB-API connection the store's SQL uses (``sqlite3.Connection``)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


class IntegrityError(StoreError):
    """A constraint was violated (raised by the PostgreSQL adapter for psycopg's
    IntegrityError, so that the shared SQL can catch one class per engine)."""


# What the shared SQL catches for a duplicate name, address, queue id, ...
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, IntegrityError)


def dialect(conn: Conn) -> str:
    """``"postgresql"`` or ``"sqlite"``: for the few statements that differ (row locks)."""
    return str(getattr(conn, "dialect", "sqlite"))
