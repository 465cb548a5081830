"""Inbound SMTP ingest: mxd vs aiosmtpd (Maildir + fsync) vs Postfix, same load, same run.

    .venv/bin/python bench/smtp_ingest.py [--sessions 10] [--messages 2000] [--size 10240]
                                          [--no-postfix] [--workers 1 2]

Each server gets ``smtp-source -s SESSIONS -m MESSAGES -l SIZE`` on loopback, every message
to one local mailbox, and must have made each message durable before its 250:

* mxd: ``twistd -n mxd`` with a generated config (tests/integration/mxdserver.py), its
  inbound listener and the SQLite store (fsync of body file, directory and WAL before
  250); ``--target harness`` runs only the SMTP factory + store (_smtp_harness.py).
* aiosmtpd: a handler that writes each message into a Maildir (tmp/, fsync, rename to new/,
  fsync of the directory) on a thread pool, then answers 250.
* Postfix (if installed): a private instance in a temp dir (queue file fsynced before 250 by
  cleanup; virtual(8) delivery into a Maildir afterwards).  Its ingest time is to the last
  250; the time until the last message is in the Maildir is printed too.

``--store postgresql`` (or ``both``) runs twistd mxd with ``[store] backend = "postgresql"``
too: metadata in a private PostgreSQL cluster made for the run (initdb, fsync and
synchronous_commit on), bodies as files in a blob_dir; its ratios against the SQLite store
and the peers of the same rounds are printed.

``--workers N [N ...]`` runs ``twistd mxd`` once per value of ``[server] workers`` in each
round (default: 1 and 2), timing from when every worker serves.  Postfix is reported twice:
to its last 250 and to its last delivery into the Maildir ("delivered"), which is when mxd's
250 already stands (mxd stores into the mailbox before answering).

``--sharded`` adds two ``twistd mxd`` with ``workers = 1`` on separate stores, the load
split between them: what two processes give when they share no store, against which the
cost of ``workers = 2`` sharing one SQLite store can be read.

Prints messages/s for each and the ratios mxd/peer, and each server's CPU ms per message:
user + system time of all its processes from just before the load until it has gone
quiet after it, so that work done after the last reply counts (mxd computes IMAP's
stored values of delivered mail once its store is quiet, mxd.store.derived.Later; the
run checks that every message has them before the CPU is read).

``--checks`` measures instead what message authentication costs: ``twistd mxd`` with
``[msgauth] inbound_checks`` off and on (SPF, DKIM, DMARC, iprev against the DNSSEC lab of
tests/integration/dnslab.py, a signed zone; mxd's DNS cache warm after the first message),
and aiosmtpd as the peer, all fed the same DKIM-signed (Ed25519) message by a Python client
of SESSIONS threads.  It prints msg/s and each server's CPU ms per message (user + system
time of the server process from /proc), and the extra CPU ms/msg of the checks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Keep bench/ off sys.path: a script named like a stdlib module would shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from tests.integration._smtp_harness import Harness  # noqa: E402
from tests.integration.tools import free_port  # noqa: E402

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
RCPT = "alice@example.test"


# CPU ms per message of each server in each round (user + system time of all its
# processes, from /proc): unlike msg/s, barely changed by other load on the machine.
CPU_MS: dict[str, list[float]] = {}


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, of its children it has reaped, and of its live
    descendants (the workers of twistd mxd, Postfix's master and its daemons)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for child in _children(pid):
        total += tree_cpu(child)
    return total


def settled_cpu(pid: int, timeout: float = 30.0) -> float:
    """tree_cpu once the server has gone quiet (less than 2 % of a core for 0.3 s):
    what it does after the last reply counts too (mxd derives IMAP's stored values of
    delivered mail once its store is quiet, mxd.store.derived.Later; Postfix's queue
    manager cleans up)."""
    last = tree_cpu(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = tree_cpu(pid)
        if now - last < 0.006:
            return now
        last = now
    return last


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out.extend(int(x) for x in task.read_text().split())
        except OSError:
            pass
    return out


def record_cpu(name: str, seconds: float, messages: int) -> None:
    CPU_MS.setdefault(name, []).append(1000 * seconds / messages)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def smtp_source(port: int, args: argparse.Namespace) -> float:
    start = time.perf_counter()
    r = subprocess.run(
        [SMTP_SOURCE, "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size),
         "-f", "load@remote.example", "-t", RCPT, "-M", "client.test", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({r.returncode}): {r.stdout} {r.stderr}")
    return elapsed


def make_certs(d: Path) -> dict[str, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "mx.example.test")
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["cert"], "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return paths


def wait_workers(log: Path, n: int, timeout: float = 60.0) -> None:
    """Until ``n`` worker processes say they serve (their lines in the server's log)."""
    import re

    deadline = time.monotonic() + timeout
    while len(set(re.findall(r'msg="worker (\d+) serving', log.read_text(errors="replace")))) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} workers did not start")
        time.sleep(0.05)


def pg_store_config(dsn: str, blobs: Path) -> str:
    blobs.mkdir()
    return (f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\nblob_dir = "{blobs}"\n')


def postmaster_pid(cluster: object) -> int | None:
    try:
        text = (cluster.datadir / "postmaster.pid").read_text()  # type: ignore[attr-defined]
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pg_inbox_count(dsn: str, account: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM messages m JOIN mailboxes b ON m.mailbox_id = b.id "
            "JOIN accounts a ON b.account_id = a.id WHERE a.name = %s AND b.name = 'INBOX'",
            (account,)).fetchone()
    return int(row[0])


def start_twistd(d: Path, args: argparse.Namespace, workers: int, store: str = "") -> Any:
    """``twistd -n mxd`` in ``d``, started (tests/integration/mxdserver.py)."""
    from tests.integration.mxdserver import make_server

    level = "info" if args.logs else "warn"
    # Like the peers, no message authentication unless asked for (--inbound-checks): the
    # test config's resolver (127.0.0.1:1) answers nothing, so each check would cost the
    # failed lookups of SPF, DKIM, DMARC and iprev (--checks measures them against a
    # real DNSSEC resolver).
    s = make_server(d, make_certs(d), extra_config=(
        f'[log]\nlevel = "{level}"\nlevels = {{ "mxd.worker" = "info" }}\n'
        f"[server]\nworkers = {workers}\n"
        f"[msgauth]\ninbound_checks = {str(args.inbound_checks).lower()}\n" + store))
    # With mxd's observer, so that the [log] level applies (twistd's own file observer
    # writes every event, debug included: ~6 lines and ~0.4 CPU ms per message here).
    s.start(twistd_args=("--logger", "mxd.log.twistd_observer"))
    return s


def bench_twistd(base: Path, args: argparse.Namespace, workers: int = 1,
                 pg: object = None) -> float:
    """``twistd -n mxd`` as users run it (tests/integration/mxdserver.py), log level warn
    (the workers' start-up lines at info, to know when they serve); with ``pg`` (a
    PGCluster), on a new database of it."""
    from tests.integration._smtp_harness import read_mailbox

    d = base / f"twistd-w{workers}{'-pg' if pg is not None else ''}"
    d.mkdir()
    dsn = pg.create_database("ingest") if pg is not None else ""  # type: ignore[attr-defined]
    store = pg_store_config(dsn, d / "blobs") if pg is not None else ""
    s = start_twistd(d, args, workers, store)
    try:
        if workers > 1:
            wait_workers(s.log_path, workers)
        assert s.proc is not None
        cpu0 = tree_cpu(s.proc.pid)
        server = postmaster_pid(pg) if pg is not None else None
        pg0 = tree_cpu(server) if server is not None else 0.0
        elapsed = smtp_source(s.ports["smtp"], args)
        record_cpu(f"mxd w={workers}{' pg' if pg is not None else ''}",
                   settled_cpu(s.proc.pid) - cpu0, args.messages)
        if server is not None:  # the PostgreSQL server's share of the work, apart
            record_cpu(f"postgresql for mxd pg w={workers}", tree_cpu(server) - pg0,
                       args.messages)
        stored = (pg_inbox_count(dsn, RCPT) if pg is not None
                  else len(read_mailbox(s.data_dir, RCPT)))
        derived = args.messages if pg is not None else derived_count(s.data_dir)
    finally:
        s.stop()
    if stored != args.messages:
        raise RuntimeError(f"twistd mxd stored {stored} of {args.messages}")
    if derived != args.messages:  # the CPU above must include their derivation
        raise RuntimeError(f"twistd mxd derived the values of {derived} of {args.messages}")
    return elapsed


def derived_count(data_dir: Path) -> int:
    """Bodies of a SQLite store that have their derived values (mxd.store.derived)."""
    import sqlite3

    with sqlite3.connect(f"file:{data_dir / 'mxd.sqlite3'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(DISTINCT blob_id) FROM blob_data").fetchone()[0])


def bench_sharded(base: Path, args: argparse.Namespace) -> float:
    """``--sharded``: two ``twistd mxd`` with ``workers = 1``, each on its own data
    directory, smtp-source's sessions and messages split between them and run at the
    same time: what two processes give without a shared store (the cost of sharing it
    is the gap to ``workers = 2``)."""
    from tests.integration._smtp_harness import read_mailbox

    servers = []
    try:
        for i in range(2):
            d = base / f"sharded-{i}"
            d.mkdir()
            servers.append(start_twistd(d, args, 1))
        cpu0 = [tree_cpu(s.proc.pid) for s in servers]
        half = argparse.Namespace(sessions=max(1, args.sessions // 2),
                                  messages=args.messages // 2, size=args.size)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: smtp_source(s.ports["smtp"], half), servers))
        elapsed = time.perf_counter() - start
        cpu = sum(settled_cpu(s.proc.pid) - c for s, c in zip(servers, cpu0, strict=True))
        record_cpu("mxd 2 x w=1", cpu, 2 * half.messages)
        stored = [len(read_mailbox(s.data_dir, RCPT)) for s in servers]
    finally:
        for s in servers:
            s.stop()
    if stored != [half.messages, half.messages]:
        raise RuntimeError(f"the two twistd mxd stored {stored} of {half.messages} each")
    return elapsed * args.messages / (2 * half.messages)


def bench_mxd(base: Path, args: argparse.Namespace, workers: int = 1,
              pg: object = None) -> float:
    if args.target == "twistd" or pg is not None:
        return bench_twistd(base, args, workers, pg)
    d = base / "mxd"
    d.mkdir()
    h = Harness(d, make_certs(d))
    h.start()
    try:
        elapsed = smtp_source(h.ports["smtp"], args)
        stored = len(h.inbox(RCPT))
    finally:
        h.stop()
    if stored != args.messages:
        raise RuntimeError(f"mxd stored {stored} of {args.messages}")
    return elapsed


AIOSMTPD_SERVER = textwrap.dedent('''
    import asyncio, os, sys, time, socket
    from aiosmtpd.controller import Controller

    maildir, port = sys.argv[1], int(sys.argv[2])
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    counter = [0]
    host = socket.gethostname()

    def store(data: bytes) -> None:
        counter[0] += 1
        name = f"{time.time():.6f}.{os.getpid()}_{counter[0]}.{host}"
        tmp = os.path.join(maildir, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(maildir, "new", name))
        dfd = os.open(os.path.join(maildir, "new"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            await asyncio.get_running_loop().run_in_executor(None, store, envelope.original_content)
            return "250 2.0.0 OK"

    c = Controller(Handler(), hostname="127.0.0.1", port=port, data_size_limit=0)
    c.start()
    print("READY", flush=True)
    try:
        sys.stdin.read()
    finally:
        c.stop()
''')


def bench_aiosmtpd(base: Path, args: argparse.Namespace) -> float:
    d = base / "aiosmtpd"
    d.mkdir()
    port = free_port()
    p = subprocess.Popen([sys.executable, "-c", AIOSMTPD_SERVER, str(d / "Maildir"), str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        wait_port(port)
        cpu0 = tree_cpu(p.pid)
        elapsed = smtp_source(port, args)
        record_cpu("aiosmtpd", settled_cpu(p.pid) - cpu0, args.messages)
        stored = len(os.listdir(d / "Maildir" / "new"))
    finally:
        p.terminate()
        p.wait(10)
    if stored != args.messages:
        raise RuntimeError(f"aiosmtpd stored {stored} of {args.messages}")
    return elapsed


def bench_postfix(base: Path, args: argparse.Namespace) -> tuple[float, float]:
    """A throwaway Postfix instance; returns (seconds to last 250, seconds to last delivery)."""
    if os.geteuid() != 0:
        raise RuntimeError("a private Postfix instance needs root")
    d = base / "postfix"
    conf, queue, data, vmail = d / "conf", d / "queue", d / "data", d / "vmail"
    for x in (conf, queue, data, vmail):
        x.mkdir(parents=True)
    for x in (d, *d.parents):
        if x == Path(tempfile.gettempdir()) or x == x.parent:
            break
        os.chmod(x, 0o755)  # the postfix user must reach its queue (mkdtemp makes 0700)
    port = free_port()
    import pwd

    pw = pwd.getpwnam("postfix")
    os.chown(vmail, pw.pw_uid, pw.pw_gid)
    os.chown(data, pw.pw_uid, pw.pw_gid)
    (conf / "main.cf").write_text(textwrap.dedent(f"""\
        compatibility_level = 3.6
        queue_directory = {queue}
        data_directory = {data}
        mail_owner = postfix
        setgid_group = postdrop
        inet_interfaces = 127.0.0.1
        inet_protocols = ipv4
        myhostname = mx.example.test
        mydomain = example.test
        myorigin = example.test
        mydestination =
        mynetworks = 127.0.0.0/8
        local_recipient_maps =
        alias_maps =
        alias_database =
        relay_domains =
        virtual_mailbox_domains = example.test
        virtual_mailbox_base = {vmail}
        virtual_mailbox_maps = inline:{{ {RCPT}=alice/ }}
        virtual_uid_maps = static:{pw.pw_uid}
        virtual_gid_maps = static:{pw.pw_gid}
        smtpd_recipient_restrictions = reject_unauth_destination
        smtputf8_enable = no
        maillog_file = /dev/stdout
        disable_dns_lookups = yes
        smtp_dns_support_level = disabled
        default_process_limit = 100
        """))
    master = Path("/etc/postfix/master.cf").read_text().splitlines()
    out = []
    for line in master:
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            elif fields[1] == "inet":
                continue  # only our listener
            fields[4] = "n"  # no chroot
            line = " ".join(fields)
        out.append(line)
    (conf / "master.cf").write_text("\n".join(out) + "\n")
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    subprocess.run(["postfix", "-c", str(conf), "check"], env=env, check=False,
                   capture_output=True, timeout=60)
    r = subprocess.run(["postfix", "-c", str(conf), "start"], env=env, capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"postfix start failed: {(r.stdout + r.stderr).strip()[-500:]}")
    try:
        wait_port(port)
        master = int((queue / "pid" / "master.pid").read_text().split()[0])
        cpu0 = tree_cpu(master)
        start = time.perf_counter()
        ingest = smtp_source(port, args)
        new = vmail / "alice" / "new"
        deadline = time.monotonic() + 600
        while True:
            n = len(os.listdir(new)) if new.is_dir() else 0
            if n >= args.messages:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix delivered {n} of {args.messages}")
            time.sleep(0.05)
        delivered = time.perf_counter() - start
        record_cpu("postfix delivered", settled_cpu(master) - cpu0, args.messages)
    finally:
        subprocess.run(["postfix", "-c", str(conf), "stop"], env=env, capture_output=True,
                       timeout=60)
        pid_file = queue / "pid" / "master.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass
    return ingest, delivered


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send_signed(port: int, message: bytes, args: argparse.Namespace) -> float:
    """SESSIONS threads with smtplib, MESSAGES in all; seconds to the last 250."""
    import smtplib
    import threading

    per = [args.messages // args.sessions + (1 if i < args.messages % args.sessions else 0)
           for i in range(args.sessions)]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            while n > 0:  # a new session every 90 messages (mxd allows 100 per session)
                with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
                    c.ehlo("client.signed.test")
                    for _ in range(min(n, 90)):
                        c.sendmail("load@signed.test", [RCPT], message)
                n -= 90
        except BaseException as e:  # reported after the run
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in per]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"client failed: {errors[0]!r}")
    return time.perf_counter() - start


def checks_world(base: Path) -> tuple[object, bytes]:
    """The DNSSEC lab with signed.test (SPF, DKIM key, DMARC) and a message signed for it."""
    from mxd.msgauth.dkimkeys import generate_key
    from mxd.msgauth.dkimsign import sign_message
    from tests.integration.dnslab import DNSLab, ZoneSpec

    key = generate_key(base / "keys", "signed.test", "s1", "ed25519")
    owner, rdata = key.zone_line().split(". IN ", 1)
    lab = DNSLab(base / "lab").start({"signed.test": ZoneSpec(records=[
        '@ TXT "v=spf1 ip4:127.0.0.1 -all"', '_dmarc TXT "v=DMARC1; p=reject"',
        owner.removesuffix(".signed.test") + " IN " + rdata])})
    body = b"".join(b"line %d of a signed test message body\r\n" % i
                    for i in range(max(1, args_size_lines(base))))
    message = (b"From: Load <load@signed.test>\r\nTo: <" + RCPT.encode() + b">\r\n"
               b"Subject: ingest with checks\r\nDate: Sat, 05 Dec 2026 07:00:00 +0000\r\n"
               b"Message-ID: <bench@signed.test>\r\n\r\n" + body)
    return lab, sign_message([key], message, int(time.time()))


def args_size_lines(base: Path) -> int:
    return int(os.environ.get("BENCH_SIZE", "10240")) // 40


def bench_twistd_checks(base: Path, args: argparse.Namespace, lab: object, message: bytes,
                        checks: bool) -> tuple[float, float]:
    """(msg/s, CPU ms/msg) of twistd mxd with inbound checks on or off."""
    from tests.integration._smtp_harness import read_mailbox
    from tests.integration.mxdserver import make_server

    d = base / ("twistd-checks-on" if checks else "twistd-checks-off")
    d.mkdir()
    # One process (workers = 1): the CPU read from /proc is the server's whole CPU.
    extra = (f'[log]\nlevel = "warn"\n[server]\nworkers = 1\n'
             f'[msgauth]\ninbound_checks = {str(checks).lower()}\n')
    s = make_server(d, make_certs(d), extra_config=extra,
                    resolver=lab.resolver_address)  # type: ignore[attr-defined]
    # With mxd's observer, as README says to run it: the [log] level applies (twistd's own
    # file observer writes every event, debug included, and cost ~0.2 CPU ms/msg here).
    s.start(twistd_args=("--logger", "mxd.log.twistd_observer"))
    try:
        assert s.proc is not None
        # One message first: DNS answers cached, start-up work (Public Suffix List) done.
        send_signed(s.ports["smtp"], message, argparse.Namespace(messages=1, sessions=1))
        cpu0 = _cpu_seconds(s.proc.pid)
        elapsed = send_signed(s.ports["smtp"], message, args)
        cpu = _cpu_seconds(s.proc.pid) - cpu0
        inbox = read_mailbox(s.data_dir, RCPT)
    finally:
        s.stop()
    if len(inbox) != args.messages + 1:
        raise RuntimeError(f"mxd stored {len(inbox)} of {args.messages + 1}")
    if checks and b"dkim=pass" not in inbox[-1]["body"]:
        raise RuntimeError("checks on, but no dkim=pass in the stored message")
    return args.messages / elapsed, 1000 * cpu / args.messages


def bench_aiosmtpd_signed(base: Path, args: argparse.Namespace, message: bytes
                          ) -> tuple[float, float]:
    d = base / "aiosmtpd-signed"
    d.mkdir()
    port = free_port()
    p = subprocess.Popen([sys.executable, "-c", AIOSMTPD_SERVER, str(d / "Maildir"), str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        wait_port(port)
        cpu0 = _cpu_seconds(p.pid)
        elapsed = send_signed(port, message, args)
        cpu = _cpu_seconds(p.pid) - cpu0
        stored = len(os.listdir(d / "Maildir" / "new"))
    finally:
        p.terminate()
        p.wait(10)
    if stored != args.messages:
        raise RuntimeError(f"aiosmtpd stored {stored} of {args.messages}")
    return args.messages / elapsed, 1000 * cpu / args.messages


def main_checks(args: argparse.Namespace, base: Path) -> None:
    os.environ["BENCH_SIZE"] = str(args.size)
    lab, message = checks_world(base)
    print(f"checks on vs off: {args.messages} DKIM-signed messages of {len(message)} octets, "
          f"{args.sessions} smtplib sessions; {os.cpu_count()} CPUs shared with other work "
          f"(figures are noisy); {args.repeat} round(s), interleaved")
    runs: dict[str, list[tuple[float, float]]] = {"off": [], "on": [], "aiosmtpd": []}
    order = ["off", "on", "aiosmtpd"]
    try:
        for i in range(args.repeat):
            rnd = base / f"round{i}"
            rnd.mkdir(parents=True)
            for name in order[i % 3:] + order[: i % 3]:
                if name == "aiosmtpd":
                    runs[name].append(bench_aiosmtpd_signed(rnd, args, message))
                else:
                    runs[name].append(bench_twistd_checks(rnd, args, lab, message, name == "on"))
            print(f"  round {i}: " + ", ".join(
                f"{k} {v[-1][0]:.0f} msg/s {v[-1][1]:.2f} CPU ms/msg" for k, v in runs.items()))
    finally:
        lab.stop()  # type: ignore[attr-defined]
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for k, v in runs.items()}
    labels = {"off": "mxd, checks off", "on": "mxd, checks on", "aiosmtpd": "aiosmtpd (peer)"}
    for k, (rate, cpu) in med.items():
        print(f"{labels[k]:18s}: median {rate:7.1f} msg/s, {cpu:.3f} CPU ms/msg")
    extra = [on[1] - off[1] for on, off in zip(runs["on"], runs["off"], strict=True)]
    print(f"checks cost: {med['on'][1] - med['off'][1]:+.3f} CPU ms/msg (medians); per round "
          + ", ".join(f"{x:+.3f}" for x in extra))
    print(f"ratio mxd checks on / aiosmtpd: {med['on'][0] / med['aiosmtpd'][0]:.2f} (msg/s), "
          f"checks off / aiosmtpd: {med['off'][0] / med['aiosmtpd'][0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--repeat", type=int, default=5, help="rounds; the median is reported")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--logs", action="store_true",
                    help="keep mxd's info log on (off by default: the peers log nothing)")
    ap.add_argument("--target", choices=("twistd", "harness"), default="twistd",
                    help="mxd as `twistd -n mxd` (default) or the SMTP-only test harness")
    ap.add_argument("--checks", action="store_true",
                    help="measure message authentication: mxd checks off vs on vs aiosmtpd")
    ap.add_argument("--inbound-checks", action="store_true",
                    help="twistd mxd with [msgauth] inbound_checks on (default: off, as the "
                         "peers check nothing; the resolver answers nothing)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="[server] workers values to run twistd mxd with (default: 1 2)")
    ap.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="sqlite",
                    help="twistd mxd's store: SQLite (default), PostgreSQL (a private "
                         "cluster made for the run), or both in the same rounds")
    ap.add_argument("--sharded", action="store_true",
                    help="also two twistd mxd (workers = 1) on separate stores sharing the "
                         "load: the upper bound for workers = 2 without a shared store")
    ap.add_argument("--dir")
    args = ap.parse_args()
    if not args.logs:
        os.environ["HARNESS_QUIET"] = "1"
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mxd-smtp-bench-"))
    if args.checks:
        main_checks(args, base)
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
        return
    if args.target != "twistd":
        args.workers = [1]
    print(f"smtp-source -s {args.sessions} -m {args.messages} -l {args.size}; "
          f"{os.cpu_count()} CPUs; {args.repeat} round(s), servers interleaved; "
          f"mxd={args.target} workers={args.workers}, log {'info' if args.logs else 'off/warn'}, "
          f"inbound checks {'on' if args.inbound_checks else 'off'}; "
          f"dir {base}")
    mxds = [f"mxd w={n}" for n in args.workers] if args.store != "postgresql" else []
    pgs = [f"mxd pg w={n}" for n in args.workers] if args.store != "sqlite" else []
    cluster = None
    if pgs:
        from tests.integration.pglab import PGCluster, _find

        initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise SystemExit("initdb/pg_ctl not found (apt-get install postgresql)")
        cluster = PGCluster(initdb, pg_ctl, Path(tempfile.mkdtemp(prefix="mxd-bench-pg-")),
                            durable=True)
    try:
        run_rounds(args, base, mxds, pgs, cluster)
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.base, ignore_errors=True)
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


def run_rounds(args: argparse.Namespace, base: Path, mxds: list[str], pgs: list[str],
               cluster: object) -> None:
    runs: dict[str, list[float]] = {m: [] for m in [*mxds, *pgs]}
    sharded = ["mxd 2 x w=1"] if args.sharded else []
    runs.update({m: [] for m in sharded})
    runs.update({"aiosmtpd": [], "postfix": [], "postfix delivered": []})
    postfix_ok = not args.no_postfix
    order = [*mxds, *pgs, *sharded, "aiosmtpd", "postfix"]
    for i in range(args.repeat):
        rnd = base / f"round{i}"
        rnd.mkdir(parents=True)
        # Rotate who goes first, so no server always runs on a warm (or busy) machine.
        k = i % len(order)
        for name in order[k:] + order[:k]:
            if name in mxds:
                n = args.workers[mxds.index(name)]
                runs[name].append(args.messages / bench_mxd(rnd, args, n))
            elif name in pgs:
                n = args.workers[pgs.index(name)]
                runs[name].append(args.messages / bench_mxd(rnd, args, n, cluster))
            elif name in sharded:
                runs[name].append(args.messages / bench_sharded(rnd, args))
            elif name == "aiosmtpd":
                runs["aiosmtpd"].append(args.messages / bench_aiosmtpd(rnd, args))
            elif postfix_ok:
                try:
                    ingest, delivered = bench_postfix(rnd, args)
                    runs["postfix"].append(args.messages / ingest)
                    runs["postfix delivered"].append(args.messages / delivered)
                except Exception as e:
                    print(f"postfix: skipped ({e})")
                    postfix_ok = False
        print(f"  round {i}: " + ", ".join(
            f"{k} {v[-1]:.0f} msg/s" for k, v in runs.items() if len(v) > i)
            + "; CPU ms/msg " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in CPU_MS.items())
            + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    labels = {"aiosmtpd": "aiosmtpd (Maildir, fsync)",
              "postfix": "postfix (queue fsync, to 250)",
              "postfix delivered": "postfix (to Maildir delivery)"}
    for k, v in med.items():
        label = labels.get(k, f"{k} ({'PostgreSQL' if k in pgs else 'SQLite'} store, fsync)")
        print(f"{label:32s}: median {v:7.1f} msg/s  (runs: "
              + ", ".join(f"{x:.0f}" for x in runs[k]) + ")")
    for m in [*mxds, *pgs, *sharded]:
        for peer in ("aiosmtpd", "postfix", "postfix delivered"):
            if peer in med and m in med:
                per_round = [a / b for a, b in zip(runs[m], runs[peer], strict=False)]
                print(f"ratio {m}/{peer}: {med[m] / med[peer]:.2f} (medians); per round "
                      + ", ".join(f"{r:.2f}" for r in per_round)
                      + f"; median of per-round ratios {statistics.median(per_round):.2f}")
    for k, v in CPU_MS.items():
        print(f"CPU {k:28s}: median {statistics.median(v):.3f} ms/msg  (runs: "
              + ", ".join(f"{x:.3f}" for x in v) + ")")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"(other work on this {os.cpu_count()}-CPU machine)")
    if len(mxds) > 1:
        base_m = mxds[0]
        for m in mxds[1:] + sharded:
            print(f"ratio {m}/{base_m}: {med[m] / med[base_m]:.2f}")
    for m, p in zip(mxds, pgs, strict=False):
        if m in med and p in med:
            per_round = [a / b for a, b in zip(runs[p], runs[m], strict=False)]
            print(f"ratio {p}/{m} (PostgreSQL / SQLite store): {med[p] / med[m]:.2f} "
                  "(medians); per round " + ", ".join(f"{r:.2f}" for r in per_round))


if __name__ == "__main__":
    main()
