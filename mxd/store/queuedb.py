"""The outbound queue's tables in the mail store's SQLite database, and the SQL over them.

Three tables (component "queue", registered with ``SQLiteStore.register_schema``):

* ``queue_messages``: one row per queued message: envelope, DSN parameters (RFC 3461),
  REQUIRETLS and ``TLS-Required: No`` (RFC 8689), SMTPUTF8, body type, and the body's blob
  id.  The body file is the store's (shared with local delivery, referenced once through
  ``ref_blob``), never copied per recipient.
* ``queue_recipients``: one row per recipient still to do: state (``queued`` or
  ``inflight``), attempts, next attempt time, lease, last result, hold flag, transport
  override, whether the delayed DSN went out.  Delivered and failed recipients are deleted;
  the message row and the blob reference go with the last recipient.
* ``queue_attempts``: a log of every delivery attempt (time, host, IP, result, TLS
  details), kept for TLS reporting (RFC 8460) and the admin interface.  Each row carries the
  RFC 8460 §4.4 fields of its session (policy type, domain, strings, MX patterns, result
  type, sending and receiving IP); ``tls_session`` is 0 for a message sent on a reused
  connection, so a session is counted once (``tls_attempts_between``).  A host refused
  before connecting (DANE/MTA-STS/REQUIRETLS) is a row with result ``refused``.
* ``queue_recipients.lease_owner``: the runner holding an in-flight lease (with workers,
  one per worker process), so the main process gives a dead worker's leases back.
* ``queue_tls_domains``: per recipient domain, the last connection's STARTTLS/REQUIRETLS
  support and whether TLS was verified (DANE or MTA-STS), for admin and submission.

Crash safety: before a delivery starts its recipients are marked ``inflight`` with a lease
in a committed transaction; the result is written in another.  At start every ``inflight``
row (a crashed attempt) goes back to ``queued``, due now, so an attempt cut short by a crash
is retried once: the only possible duplicate is that one in-flight attempt.  An expired
lease is claimable too, so several nodes could share the tables later.

Every function here takes a ``Conn`` (mxd.store.sqlbase) inside the store's ``transact``:
the same SQL runs on SQLite and PostgreSQL.  Several nodes on one PostgreSQL database
claim work with row locks (``FOR UPDATE SKIP LOCKED``) and leases: a node that dies
holding a lease leaves its recipients to whichever node claims them after it expires.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.sqlbase import Conn, dialect
from mxd.tlsrpt.results import FailureDetail, PolicyInfo, PolicyType, ResultType, TLSAttempt

QUEUE_MIGRATIONS: list[str] = [
    """
    CREATE TABLE queue_messages (
        id INTEGER PRIMARY KEY,
        queue_id TEXT NOT NULL UNIQUE,
        mail_from TEXT NOT NULL,
        blob_id TEXT NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        body TEXT NOT NULL DEFAULT '7BIT',
        smtputf8 INTEGER NOT NULL DEFAULT 0,
        requiretls INTEGER NOT NULL DEFAULT 0,
        tls_required_no INTEGER NOT NULL DEFAULT 0,
        ret TEXT,
        envid TEXT,
        sender_account TEXT,
        is_dsn INTEGER NOT NULL DEFAULT 0,
        queued_at REAL NOT NULL
    );
    CREATE TABLE queue_recipients (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        notify TEXT,
        orcpt TEXT,
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        lease_until REAL,
        last_attempt REAL,
        last_code INTEGER,
        last_enhanced TEXT,
        last_text TEXT,
        last_host TEXT,
        hold INTEGER NOT NULL DEFAULT 0,
        transport TEXT,
        delay_dsn_sent INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX queue_recipients_due ON queue_recipients (state, hold, next_attempt);
    CREATE INDEX queue_recipients_message ON queue_recipients (message_id);
    CREATE TABLE queue_attempts (
        id INTEGER PRIMARY KEY,
        queue_id TEXT NOT NULL,
        domain TEXT NOT NULL,
        recipients TEXT NOT NULL,
        at REAL NOT NULL,
        host TEXT,
        ip TEXT,
        result TEXT NOT NULL,
        code INTEGER,
        enhanced TEXT,
        text TEXT,
        tls_used INTEGER NOT NULL DEFAULT 0,
        tls_verified INTEGER NOT NULL DEFAULT 0,
        tls_version TEXT,
        tls_cipher TEXT,
        tls_policy_type TEXT,
        tls_policy_domain TEXT,
        tls_failure TEXT
    );
    CREATE INDEX queue_attempts_at ON queue_attempts (at);
    """,
    # Step 2: admin REQUIRETLS override, per-session TLS report fields, per-domain support.
    """
    ALTER TABLE queue_messages ADD COLUMN tls_override TEXT;
    ALTER TABLE queue_attempts ADD COLUMN tls_session INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE queue_attempts ADD COLUMN tls_success INTEGER;
    ALTER TABLE queue_attempts ADD COLUMN tls_policy_strings TEXT;
    ALTER TABLE queue_attempts ADD COLUMN tls_policy_mx TEXT;
    ALTER TABLE queue_attempts ADD COLUMN tls_result_type TEXT;
    ALTER TABLE queue_attempts ADD COLUMN tls_detail TEXT;
    ALTER TABLE queue_attempts ADD COLUMN sending_ip TEXT;
    ALTER TABLE queue_attempts ADD COLUMN receiving_helo TEXT;
    ALTER TABLE queue_attempts ADD COLUMN tls_overridden INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE queue_tls_domains (
        domain TEXT PRIMARY KEY,
        at REAL NOT NULL,
        mx_host TEXT,
        ip TEXT,
        starttls INTEGER NOT NULL DEFAULT 0,
        requiretls INTEGER NOT NULL DEFAULT 0,
        tls_used INTEGER NOT NULL DEFAULT 0,
        verified INTEGER NOT NULL DEFAULT 0,
        policy_type TEXT,
        result_type TEXT,
        tls_version TEXT
    );
    """,
    # Transports: which transport each attempt used (and why: override or which route).
    """
    ALTER TABLE queue_attempts ADD COLUMN transport TEXT;
    ALTER TABLE queue_attempts ADD COLUMN route TEXT;
    """,
    # TLS reports we send: their deliveries record no TLS results (RFC 8460 §3).
    """
    ALTER TABLE queue_messages ADD COLUMN tls_report INTEGER NOT NULL DEFAULT 0;
    """,
    # Per sending account: what each recipient domain's last connection supported.
    """
    CREATE TABLE queue_tls_accounts (
        account TEXT NOT NULL,
        domain TEXT NOT NULL,
        at REAL NOT NULL,
        mx_host TEXT,
        ip TEXT,
        starttls INTEGER NOT NULL DEFAULT 0,
        requiretls INTEGER NOT NULL DEFAULT 0,
        tls_used INTEGER NOT NULL DEFAULT 0,
        verified INTEGER NOT NULL DEFAULT 0,
        policy_type TEXT,
        result_type TEXT,
        tls_version TEXT,
        PRIMARY KEY (account, domain)
    );
    """,
    # Several runners on one database (worker processes): who holds each lease, so the
    # leases of a runner known to be gone can be given back at once (``release_owner``).
    """
    ALTER TABLE queue_recipients ADD COLUMN lease_owner TEXT;
    """,
]

# RFC 8689 admin override of a queued message (``mxd queue requiretls ID yes|no|default``):
# "yes" requires REQUIRETLS, "no" behaves as ``TLS-Required: No``, None/"default" is as received.
TLS_OVERRIDES = ("yes", "no", "default")

QUEUED = "queued"
INFLIGHT = "inflight"


@attrs.frozen
class QueuedRecipient:
    id: int
    address: str
    domain: str
    notify: frozenset[str] | None
    orcpt: str | None
    state: str
    attempts: int
    next_attempt: float
    hold: bool
    transport: str | None
    last_attempt: float | None = None
    last_code: int | None = None
    last_enhanced: str | None = None
    last_text: str | None = None
    last_host: str | None = None
    delay_dsn_sent: bool = False


@attrs.frozen
class QueuedMessage:
    id: int
    queue_id: str
    mail_from: str
    blob_id: str
    size: int
    body: str
    smtputf8: bool
    requiretls: bool
    tls_required_no: bool
    ret: str | None
    envid: str | None
    sender_account: str | None
    is_dsn: bool
    queued_at: float
    recipients: tuple[QueuedRecipient, ...] = ()
    # ``requiretls``/``tls_required_no`` above are the effective flags (after the admin
    # override); these are the message's own and the override (None: as received).
    tls_override: str | None = None
    received_requiretls: bool = False
    received_tls_required_no: bool = False
    tls_report: bool = False  # an RFC 8460 report we send: its sessions are not reported


@attrs.frozen
class AttemptRecord:
    """One row of the attempts log."""

    queue_id: str
    domain: str
    recipients: tuple[str, ...]
    at: float
    result: str  # "delivered" | "deferred" | "failed" | "partial"
    host: str | None = None
    ip: str | None = None
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    tls_used: bool = False
    tls_verified: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_policy_type: str | None = None
    tls_policy_domain: str | None = None
    tls_failure: str | None = None
    # RFC 8460 §4.4 session fields (see ``tls_attempt``); tls_success None: nothing to report
    tls_session: bool = True  # False: a message on a reused connection (session counted once)
    tls_success: bool | None = None
    tls_policy_strings: tuple[str, ...] = ()
    tls_policy_mx: tuple[str, ...] = ()
    tls_result_type: str | None = None
    tls_detail: str | None = None
    sending_ip: str | None = None
    receiving_helo: str | None = None
    tls_overridden: bool = False  # delivered despite a failed verification (TLS-Required: No)
    transport: str | None = None  # the transport of this attempt (None: direct, before routes)
    route: str | None = None  # why: "override", "global route 2", "default", ...

    def tls_attempt(self) -> TLSAttempt | None:
        """This row as the RFC 8460 ``TLSAttempt`` of its session (None: not a session to
        report: a reused connection, or no TLS policy was evaluated)."""
        if not self.tls_session or self.tls_success is None:
            return None
        try:
            ptype = PolicyType(self.tls_policy_type or "no-policy-found")
        except ValueError:
            ptype = PolicyType.NO_POLICY_FOUND
        policy = PolicyInfo(ptype, self.tls_policy_domain or self.domain,
                            self.tls_policy_strings, self.tls_policy_mx)
        if self.tls_success:
            return TLSAttempt(policy, True, self.at)
        try:
            rtype = ResultType(self.tls_result_type or "validation-failure")
        except ValueError:
            rtype = ResultType.VALIDATION_FAILURE
        return TLSAttempt(policy, False, self.at, FailureDetail(
            rtype, self.sending_ip, self.host, self.receiving_helo, self.ip, None,
            self.tls_detail or None))


@attrs.frozen
class DomainTLS:
    """What the last connection for a recipient domain showed (the support records).

    ``verified``: TLS authenticated by DANE or an enforced MTA-STS policy.
    """

    domain: str
    at: float
    mx_host: str | None
    ip: str | None
    starttls: bool
    requiretls: bool
    tls_used: bool
    verified: bool
    policy_type: str | None = None
    result_type: str | None = None
    tls_version: str | None = None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def _notify_text(notify: frozenset[str] | None) -> str | None:
    return None if notify is None else ",".join(sorted(n.upper() for n in notify))


def _notify_value(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(t for t in text.split(",") if t)


def insert_message(
    conn: Conn, queue_id: str, blob_id: str, m: OutboundMessage, now: float,
    is_dsn: bool = False,
) -> int:
    values: tuple[Any, ...] = (
        queue_id, m.mail_from, blob_id, m.size, m.body.upper(), int(m.smtputf8),
        int(m.requiretls), int(m.tls_required_no), m.ret, m.envid, m.sender_account,
        int(is_dsn or m.is_dsn), now)
    extra = ""
    if m.tls_report:  # a later column: only named when set (the default is 0)
        values, extra = values + (1,), ", tls_report"
    mid = int(conn.execute(
        "INSERT INTO queue_messages (queue_id, mail_from, blob_id, size, body, smtputf8,"
        f" requiretls, tls_required_no, ret, envid, sender_account, is_dsn, queued_at{extra})"
        f" VALUES ({','.join('?' * len(values))}) RETURNING id", values).fetchone()[0])
    conn.executemany(
        "INSERT INTO queue_recipients (message_id, address, domain, notify, orcpt,"
        " next_attempt) VALUES (?,?,?,?,?,?)",
        [(mid, r.address, domain_of(r.address), _notify_text(r.notify), r.orcpt, now)
         for r in m.recipients],
    )
    return mid


_MSG_COLS = ("id, queue_id, mail_from, blob_id, size, body, smtputf8, requiretls,"
             " tls_required_no, ret, envid, sender_account, is_dsn, queued_at, tls_override,"
             " tls_report")
_RCPT_COLS = ("id, address, domain, notify, orcpt, state, attempts, next_attempt, hold,"
              " transport, last_attempt, last_code, last_enhanced, last_text, last_host,"
              " delay_dsn_sent")


def effective_tls_flags(requiretls: bool, tls_required_no: bool,
                        override: str | None) -> tuple[bool, bool]:
    """(requiretls, tls_required_no) after an admin override (RFC 8689; see TLS_OVERRIDES)."""
    if override == "yes":
        return True, False
    if override == "no":
        return False, True
    return requiretls, tls_required_no and not requiretls  # RFC 8689 §5: REQUIRETLS wins


def _message(row: Sequence[Any], rcpts: tuple[QueuedRecipient, ...] = ()) -> QueuedMessage:
    req, trn = bool(row[7]), bool(row[8])
    override = row[14] if row[14] in ("yes", "no") else None
    eff_req, eff_trn = effective_tls_flags(req, trn, override)
    return QueuedMessage(int(row[0]), row[1], row[2], row[3], int(row[4]), row[5], bool(row[6]),
                         eff_req, eff_trn, row[9], row[10], row[11], bool(row[12]),
                         float(row[13]), rcpts, override, req, trn, bool(row[15]))


def _recipient(row: Sequence[Any]) -> QueuedRecipient:
    return QueuedRecipient(int(row[0]), row[1], row[2], _notify_value(row[3]), row[4], row[5],
                           int(row[6]), float(row[7]), bool(row[8]), row[9], row[10], row[11],
                           row[12], row[13], row[14], bool(row[15]))


def get_message(conn: Conn, queue_id: str) -> QueuedMessage | None:
    row = conn.execute(f"SELECT {_MSG_COLS} FROM queue_messages WHERE queue_id = ?",
                       (queue_id,)).fetchone()
    if row is None:
        return None
    rcpts = tuple(_recipient(r) for r in conn.execute(
        f"SELECT {_RCPT_COLS} FROM queue_recipients WHERE message_id = ? ORDER BY id", (row[0],)))
    return _message(row, rcpts)


def list_messages(
    conn: Conn, *, domain: str | None = None, sender: str | None = None,
    held: bool | None = None, limit: int = 1000,
) -> list[QueuedMessage]:
    """Messages with their remaining recipients, oldest first, with optional filters."""
    where = ["1=1"]
    args: list[Any] = []
    if sender is not None:
        where.append("m.mail_from = ?")
        args.append(sender)
    if domain is not None:
        where.append("EXISTS (SELECT 1 FROM queue_recipients r WHERE r.message_id = m.id"
                     " AND r.domain = ?)")
        args.append(domain.lower())
    if held is not None:
        where.append("EXISTS (SELECT 1 FROM queue_recipients r WHERE r.message_id = m.id"
                     " AND r.hold = ?)")
        args.append(int(held))
    rows = conn.execute(
        f"SELECT {_MSG_COLS} FROM queue_messages m WHERE {' AND '.join(where)}"
        " ORDER BY queued_at, id LIMIT ?", (*args, limit)).fetchall()
    out = []
    for row in rows:
        rcpts = tuple(_recipient(r) for r in conn.execute(
            f"SELECT {_RCPT_COLS} FROM queue_recipients WHERE message_id = ? ORDER BY id",
            (row[0],)))
        out.append(_message(row, rcpts))
    return out


def recover_inflight(conn: Conn, now: float) -> int:
    """At start: attempts cut short by a crash become due now; returns how many."""
    if dialect(conn) == "postgresql":
        # Other nodes share the rows: only leases that ran out are ours to take back (the
        # node that held them died); live ones belong to a node still delivering.
        return conn.execute(
            "UPDATE queue_recipients SET state = ?, lease_until = NULL, next_attempt = ?"
            " WHERE state = ? AND lease_until < ?", (QUEUED, now, INFLIGHT, now)).rowcount
    cur = conn.execute(
        "UPDATE queue_recipients SET state = ?, lease_until = NULL, next_attempt = ?"
        " WHERE state = ?", (QUEUED, now, INFLIGHT))
    return cur.rowcount


def release_owner(conn: Conn, owner: str, now: float) -> int:
    """The runner ``owner`` is gone (its worker process died): its in-flight recipients
    are due again now instead of when their leases expire; returns how many.  Only
    attempts cut short can be repeated, as after a crash (module doc)."""
    cur = conn.execute(
        "UPDATE queue_recipients SET state = ?, lease_until = NULL, lease_owner = NULL,"
        " next_attempt = ? WHERE state = ? AND lease_owner = ?", (QUEUED, now, INFLIGHT, owner))
    return cur.rowcount


def due_recipients(conn: Conn, now: float, limit: int) -> list[tuple[str, int, str, str | None]]:
    """(queue_id, recipient id, domain, transport) of due recipients, most overdue first.

    On PostgreSQL the rows are locked until the claim commits, and rows another node is
    claiming right now are skipped rather than waited for (``FOR UPDATE SKIP LOCKED``)."""
    lock = " FOR UPDATE OF r SKIP LOCKED" if dialect(conn) == "postgresql" else ""
    return [(r[0], int(r[1]), r[2], r[3]) for r in conn.execute(
        "SELECT m.queue_id, r.id, r.domain, r.transport FROM queue_recipients r"
        " JOIN queue_messages m ON m.id = r.message_id"
        " WHERE r.hold = 0 AND r.next_attempt <= ?"
        " AND (r.state = ? OR (r.state = ? AND r.lease_until < ?))"
        " ORDER BY r.next_attempt, r.id LIMIT ?" + lock,
        (now, QUEUED, INFLIGHT, now, limit))]


def next_due_time(conn: Conn) -> float | None:
    """When the next recipient is due: a queued one's next attempt, or an in-flight one's
    lease end (a node that died holding it: another node takes it then)."""
    row = conn.execute(
        "SELECT MIN(CASE WHEN state = ? THEN next_attempt ELSE lease_until END)"
        " FROM queue_recipients WHERE hold = 0 AND (state = ? OR lease_until IS NOT NULL)",
        (QUEUED, QUEUED)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def claim(conn: Conn, recipient_ids: Sequence[int], now: float,
          lease: float, owner: str | None = None) -> QueuedMessage | None:
    """Mark recipients in flight, leased to ``owner`` (a runner's name, or None);
    returns their message with just those recipients.

    Recipients that were meanwhile held, dropped or claimed are left out; None when none
    is left.  The check and the update are one statement inside the caller's write
    transaction, so of several runners (processes, nodes) claiming at once exactly one
    gets each recipient.
    """
    claimed: list[int] = []
    for rid in recipient_ids:
        cur = conn.execute(
            "UPDATE queue_recipients SET state = ?, lease_until = ?, lease_owner = ?"
            " WHERE id = ? AND hold = 0 AND (state = ? OR (state = ? AND lease_until < ?))",
            (INFLIGHT, now + lease, owner, rid, QUEUED, INFLIGHT, now))
        if cur.rowcount:
            claimed.append(rid)
    if not claimed:
        return None
    marks = ",".join("?" * len(claimed))
    rcpts = tuple(_recipient(r) for r in conn.execute(
        f"SELECT {_RCPT_COLS} FROM queue_recipients WHERE id IN ({marks}) ORDER BY id", claimed))
    row = conn.execute(
        f"SELECT {_MSG_COLS} FROM queue_messages WHERE id ="
        " (SELECT message_id FROM queue_recipients WHERE id = ?)", (claimed[0],)).fetchone()
    return _message(row, rcpts)


def renew_leases(conn: Conn, recipient_ids: Sequence[int], now: float, lease: float,
                 owner: str | None = None) -> int:
    """A delivery still under way: its recipients' leases run ``lease`` seconds from
    ``now`` again, so no other runner (node) takes them as abandoned.  Only leases still
    held are renewed: in flight, ``owner``'s, not yet run out (one that ran out may be
    another runner's by now).  Returns how many were renewed."""
    if not recipient_ids:
        return 0
    marks = ",".join("?" * len(recipient_ids))
    who = "lease_owner IS NULL" if owner is None else "lease_owner = ?"
    args: list[Any] = [now + lease, INFLIGHT, now]
    if owner is not None:
        args.append(owner)
    return conn.execute(
        f"UPDATE queue_recipients SET lease_until = ? WHERE state = ? AND lease_until >= ?"
        f" AND {who} AND id IN ({marks})", (*args, *recipient_ids)).rowcount


def finish_recipient(conn: Conn, recipient_id: int) -> None:
    """Delivered or failed for good: the row goes."""
    conn.execute("DELETE FROM queue_recipients WHERE id = ?", (recipient_id,))


def defer_recipient(
    conn: Conn, recipient_id: int, *, next_attempt: float, now: float,
    code: int | None, enhanced: str | None, text: str | None, host: str | None,
    delay_dsn_sent: bool,
) -> None:
    conn.execute(
        "UPDATE queue_recipients SET state = ?, lease_until = NULL, attempts = attempts + 1,"
        " next_attempt = ?, last_attempt = ?, last_code = ?, last_enhanced = ?, last_text = ?,"
        " last_host = ?, delay_dsn_sent = ? WHERE id = ?",
        (QUEUED, next_attempt, now, code, enhanced, text, host, int(delay_dsn_sent),
         recipient_id))


def release_unfinished(conn: Conn, recipient_ids: Sequence[int]) -> None:
    """Put claimed recipients back without counting an attempt (e.g. at shutdown)."""
    conn.executemany("UPDATE queue_recipients SET state = ?, lease_until = NULL"
                     " WHERE id = ? AND state = ?", [(QUEUED, i, INFLIGHT) for i in recipient_ids])


def remove_message_if_done(conn: Conn, message_id: int) -> str | None:
    """Delete a message with no recipients left; returns its blob id (to unref) or None."""
    left = conn.execute("SELECT COUNT(*) FROM queue_recipients WHERE message_id = ?",
                        (message_id,)).fetchone()[0]
    if left:
        return None
    row = conn.execute("SELECT blob_id FROM queue_messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM queue_messages WHERE id = ?", (message_id,))
    return str(row[0])


_ATTEMPT_COLS = ("queue_id, domain, recipients, at, host, ip, result, code, enhanced, text,"
                 " tls_used, tls_verified, tls_version, tls_cipher, tls_policy_type,"
                 " tls_policy_domain, tls_failure, tls_session, tls_success,"
                 " tls_policy_strings, tls_policy_mx, tls_result_type, tls_detail, sending_ip,"
                 " receiving_helo, tls_overridden, transport, route")


def _json_list(values: Sequence[str]) -> str | None:
    return json.dumps(list(values)) if values else None


def _list_json(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def log_attempt(conn: Conn, a: AttemptRecord) -> None:
    conn.execute(
        f"INSERT INTO queue_attempts ({_ATTEMPT_COLS}) VALUES ({','.join('?' * 28)})",
        (a.queue_id, a.domain, ",".join(a.recipients), a.at, a.host, a.ip, a.result, a.code,
         a.enhanced, a.text, int(a.tls_used), int(a.tls_verified), a.tls_version, a.tls_cipher,
         a.tls_policy_type, a.tls_policy_domain, a.tls_failure, int(a.tls_session),
         None if a.tls_success is None else int(a.tls_success),
         _json_list(a.tls_policy_strings), _json_list(a.tls_policy_mx), a.tls_result_type,
         a.tls_detail, a.sending_ip, a.receiving_helo, int(a.tls_overridden), a.transport,
         a.route))


def _attempt(r: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(
        r[0], r[1], tuple(x for x in r[2].split(",") if x), r[3], r[6], r[4], r[5], r[7], r[8],
        r[9], bool(r[10]), bool(r[11]), r[12], r[13], r[14], r[15], r[16], bool(r[17]),
        None if r[18] is None else bool(r[18]), _list_json(r[19]), _list_json(r[20]), r[21],
        r[22], r[23], r[24], bool(r[25]), r[26], r[27])


def attempts_for(conn: Conn, queue_id: str) -> list[AttemptRecord]:
    return [_attempt(r) for r in conn.execute(
        f"SELECT {_ATTEMPT_COLS} FROM queue_attempts WHERE queue_id = ? ORDER BY id",
        (queue_id,))]


def attempts_between(conn: Conn, start: float, end: float) -> list[AttemptRecord]:
    """Attempts made in [start, end) (POSIX seconds), oldest first."""
    return [_attempt(r) for r in conn.execute(
        f"SELECT {_ATTEMPT_COLS} FROM queue_attempts WHERE at >= ? AND at < ? ORDER BY at, id",
        (start, end))]


def tls_attempts_between(conn: Conn, start: float,
                         end: float) -> list[TLSAttempt]:
    """The TLS sessions of [start, end) as ``mxd.tlsrpt.results.TLSAttempt`` values, one per
    session (messages on a reused connection are left out), ready for
    ``mxd.tlsrpt.report.aggregate`` (RFC 8460 §4.4)."""
    out = []
    for a in attempts_between(conn, start, end):
        t = a.tls_attempt()
        if t is not None:
            out.append(t)
    return out


def tls_attempts_for_day(conn: Conn, day: datetime.date) -> list[TLSAttempt]:
    """The TLS sessions of one UTC day (RFC 8460 §4.1: reports cover 24-hour UTC days)."""
    start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
    end = start + datetime.timedelta(days=1)
    return tls_attempts_between(conn, start.timestamp(), end.timestamp())


def record_domain_tls(conn: Conn, d: DomainTLS,
                      account: str | None = None) -> None:
    """Remember the last connection's TLS facts for a recipient domain (newest wins), also
    in the sending account's own records when the message came from an account."""
    if account:
        conn.execute(
            "INSERT INTO queue_tls_accounts (account, domain, at, mx_host, ip, starttls,"
            " requiretls, tls_used, verified, policy_type, result_type, tls_version)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(account, domain) DO UPDATE SET"
            " at = excluded.at, mx_host = excluded.mx_host, ip = excluded.ip,"
            " starttls = excluded.starttls, requiretls = excluded.requiretls,"
            " tls_used = excluded.tls_used, verified = excluded.verified,"
            " policy_type = excluded.policy_type, result_type = excluded.result_type,"
            " tls_version = excluded.tls_version WHERE excluded.at >= queue_tls_accounts.at",
            (account, d.domain.lower(), d.at, d.mx_host, d.ip, int(d.starttls),
             int(d.requiretls), int(d.tls_used), int(d.verified), d.policy_type,
             d.result_type, d.tls_version))
    conn.execute(
        "INSERT INTO queue_tls_domains (domain, at, mx_host, ip, starttls, requiretls, tls_used,"
        " verified, policy_type, result_type, tls_version) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(domain) DO UPDATE SET at = excluded.at, mx_host = excluded.mx_host,"
        " ip = excluded.ip, starttls = excluded.starttls, requiretls = excluded.requiretls,"
        " tls_used = excluded.tls_used, verified = excluded.verified,"
        " policy_type = excluded.policy_type, result_type = excluded.result_type,"
        " tls_version = excluded.tls_version WHERE excluded.at >= queue_tls_domains.at",
        (d.domain.lower(), d.at, d.mx_host, d.ip, int(d.starttls), int(d.requiretls),
         int(d.tls_used), int(d.verified), d.policy_type, d.result_type, d.tls_version))


def domain_tls(conn: Conn, domain: str | None = None,
               account: str | None = None) -> list[DomainTLS]:
    """The last TLS result per recipient domain (all domains, or one), by domain name;
    with ``account``, as seen by that sending account's own messages."""
    conds, args = [], []
    if domain:
        conds.append("domain = ?")
        args.append(domain.rstrip(".").lower())
    table = "queue_tls_domains"
    if account is not None:
        table = "queue_tls_accounts"
        conds.append("account = ?")
        args.append(account)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    return [DomainTLS(r[0], float(r[1]), r[2], r[3], bool(r[4]), bool(r[5]), bool(r[6]),
                      bool(r[7]), r[8], r[9], r[10])
            for r in conn.execute(
                "SELECT domain, at, mx_host, ip, starttls, requiretls, tls_used, verified,"
                f" policy_type, result_type, tls_version FROM {table} {where}"
                " ORDER BY domain", args)]


def requiretls_ready(conn: Conn, domains: Sequence[str]) -> dict[str, bool]:
    """Per domain: whether its last connection offered REQUIRETLS over TLS verified by DANE
    or MTA-STS (RFC 8689 §4.1), so a submission client can choose REQUIRETLS when every
    recipient domain is ready.  Domains never connected to are False."""
    out = {}
    for domain in domains:
        key = domain.rstrip(".").lower()
        row = conn.execute("SELECT requiretls, verified FROM queue_tls_domains WHERE domain = ?",
                           (key,)).fetchone()
        out[domain] = bool(row is not None and row[0] and row[1])
    return out


def set_tls_override(conn: Conn, queue_id: str, override: str) -> bool:
    """Set a queued message's REQUIRETLS override (``TLS_OVERRIDES``); False: no such id."""
    if override not in TLS_OVERRIDES:
        raise ValueError(f"override must be one of {', '.join(TLS_OVERRIDES)}")
    cur = conn.execute("UPDATE queue_messages SET tls_override = ? WHERE queue_id = ?",
                       (None if override == "default" else override, queue_id))
    return cur.rowcount > 0


def set_transport(conn: Conn, queue_id: str, transport: str | None) -> int:
    """Set (None: clear) the transport override of a queued message's recipients; it
    wins over every route at their next attempt.  Returns the number of recipients."""
    cur = conn.execute(
        "UPDATE queue_recipients SET transport = ? WHERE message_id ="
        " (SELECT id FROM queue_messages WHERE queue_id = ?)", (transport, queue_id))
    return cur.rowcount


def count_recipients(conn: Conn) -> dict[str, int]:
    """Recipients by state, plus "held", for the queue-size gauge and admin."""
    out = {QUEUED: 0, INFLIGHT: 0, "held": 0}
    for state, hold, n in conn.execute(
            "SELECT state, hold, COUNT(*) FROM queue_recipients GROUP BY state, hold"):
        out["held" if hold else state] = out.get("held" if hold else state, 0) + int(n)
    return out


def select_recipients(conn: Conn, queue_id: str | None, domain: str | None,
                      recipient: str | None) -> list[int]:
    """Recipient ids matching admin selectors (all given selectors must match)."""
    where = ["1=1"]
    args: list[Any] = []
    if queue_id is not None:
        where.append("m.queue_id = ?")
        args.append(queue_id)
    if domain is not None:
        where.append("r.domain = ?")
        args.append(domain.lower())
    if recipient is not None:
        where.append("r.address = ?")
        args.append(recipient)
    return [int(r[0]) for r in conn.execute(
        "SELECT r.id FROM queue_recipients r JOIN queue_messages m ON m.id = r.message_id"
        f" WHERE {' AND '.join(where)}", args)]


def to_outbound(m: QueuedMessage) -> OutboundMessage:
    """The envelope of a queued message (for re-queueing and the client)."""
    return OutboundMessage(
        mail_from=m.mail_from,
        recipients=tuple(OutboundRecipient(r.address, r.notify, r.orcpt) for r in m.recipients),
        ret=m.ret, envid=m.envid, requiretls=m.requiretls, tls_required_no=m.tls_required_no,
        smtputf8=m.smtputf8, body=m.body, sender_account=m.sender_account, size=m.size,
    )


# -- admin operations (the server through SQLiteQueueStore, and `mxd queue` on the file) --


def op_hold(conn: Conn, queue_id: str | None = None, domain: str | None = None,
            recipient: str | None = None, hold: bool = True) -> int:
    ids = select_recipients(conn, queue_id, domain, recipient)
    conn.executemany("UPDATE queue_recipients SET hold = ? WHERE id = ?",
                     [(int(hold), i) for i in ids])
    return len(ids)


def op_kick(conn: Conn, now: float, queue_id: str | None = None,
            domain: str | None = None, recipient: str | None = None) -> int:
    """Make matching recipients due now (held ones stay held)."""
    ids = select_recipients(conn, queue_id, domain, recipient)
    conn.executemany("UPDATE queue_recipients SET next_attempt = ? WHERE id = ? AND state = ?",
                     [(now, i, QUEUED) for i in ids])
    return len(ids)


def op_drop(conn: Conn, unref: Callable[[Conn, str], None],
            queue_id: str | None = None, domain: str | None = None,
            recipient: str | None = None) -> int:
    """Remove matching recipients without a DSN; messages left empty go with their blob ref."""
    ids = select_recipients(conn, queue_id, domain, recipient)
    message_ids = set()
    for rid in ids:
        row = conn.execute("SELECT message_id FROM queue_recipients WHERE id = ?", (rid,)).fetchone()
        if row is not None:
            message_ids.add(int(row[0]))
        finish_recipient(conn, rid)
    for mid in message_ids:
        blob_id = remove_message_if_done(conn, mid)
        if blob_id is not None:
            unref(conn, blob_id)
    return len(ids)


def op_requiretls(conn: Conn, queue_id: str, setting: str) -> bool:
    """RFC 8689 admin override of one queued message: ``yes`` requires REQUIRETLS, ``no``
    delivers as with ``TLS-Required: No``, ``default`` restores what the message came with.
    Returns False when there is no such message (the caller checked ``setting`` against
    ``TLS_OVERRIDES``)."""
    return set_tls_override(conn, queue_id, setting)


def op_transport(conn: Conn, queue_id: str, name: str) -> int:
    """Per-message transport override (``mxd queue transport ID NAME``, admin API): NAME
    wins over routes at the next attempt; "default" clears it.  Returns the number of
    recipients changed (0: no such message; the caller checked the name)."""
    return set_transport(conn, queue_id, None if name == "default" else name)


def unref_blob_sql(conn: Conn, blob_id: str) -> None:
    """Drop a blob reference without the store object (the CLI): the store removes bodies
    left at refcount 0 at its next start."""
    conn.execute("UPDATE blobs SET refcount = refcount - 1 WHERE id = ? AND refcount > 0",
                 (blob_id,))


@attrs.frozen
class Claimed:
    """What ``claim_due`` took: messages (one per message and domain) and what is left."""

    messages: list[QueuedMessage]
    more: bool  # more due work may be waiting (the batch was full)
    next_due: float | None
    counts: dict[str, int]  # recipients per state, for metrics


def claim_due(conn: Conn, now: float, *, free: int, running: dict[str, int],
              per_domain: int, batch: int, max_rcpts: int, lease: float,
              owner: str | None = None) -> Claimed:
    """Claim due recipients in one transaction, grouped per message and destination domain
    (and transport), within ``free`` jobs and ``per_domain`` jobs per domain (``running``:
    the jobs running now per domain)."""
    counts = count_recipients(conn)
    if free <= 0:
        return Claimed([], False, next_due_time(conn), counts)
    due = due_recipients(conn, now, batch)
    groups: dict[tuple[str, str, str | None], list[int]] = {}
    for queue_id, rid, domain, transport in due:
        if running.get(domain, 0) >= per_domain:
            continue
        ids = groups.setdefault((queue_id, domain, transport), [])
        if len(ids) < max_rcpts:
            ids.append(rid)
    claimed: list[QueuedMessage] = []
    planned: dict[str, int] = {}
    for (_qid, domain, _t), ids in groups.items():
        if len(claimed) >= free:
            break
        if running.get(domain, 0) + planned.get(domain, 0) >= per_domain:
            continue
        m = claim(conn, ids, now, lease, owner)
        if m is not None:
            planned[domain] = planned.get(domain, 0) + 1
            claimed.append(m)
    more = bool(claimed) and len(due) >= batch and len(claimed) < free
    return Claimed(claimed, more, next_due_time(conn), counts)


@attrs.frozen
class Deferral:
    """A recipient that stays queued after an attempt, and its last result."""

    recipient_id: int
    next_attempt: float
    code: int | None
    enhanced: str | None
    text: str | None
    host: str | None
    delay_dsn_sent: bool


@attrs.frozen
class AttemptResult:
    """Everything one delivery job writes, in one transaction (``record_result``)."""

    attempts: tuple[AttemptRecord, ...] = ()
    domains: tuple[DomainTLS, ...] = ()
    finished: tuple[int, ...] = ()
    deferred: tuple[Deferral, ...] = ()
